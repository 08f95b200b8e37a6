"""Unwinding: libc unwind-table compile (cold) and load (warm), and unwind throughput on
captured snapshots of real processes (frames per second, unwind alone and with symbolization).

The snapshots are captured once with ptrace from `ls -lR` blocked in write() and `python3`
blocked in sleep, then unwound repeatedly, as the BPF path unwinds many hits of one program.

    .venv/bin/python bench/bench_unwind.py [--rounds 2000]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from common import LIBC, ROOT, print_table, timed

sys.path.insert(0, str(ROOT))

from symbolizer.elf import ElfImage  # noqa: E402
from ubt.pipeline import Pipeline  # noqa: E402
from ubt.ptrace import capture_process  # noqa: E402
from unwind.cfi import UnwindTableCache  # noqa: E402


def capture_targets() -> list:
    """Snapshots of two real programs blocked inside libc."""
    snaps = []
    ls = subprocess.Popen("exec ls -lR /usr/share > >(sleep 60)", shell=True,
                          executable="/bin/bash")
    py = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.7)
    try:
        for proc in (ls, py):
            snaps += capture_process(proc.pid)
    finally:
        ls.kill()
        py.kill()
    return snaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    build_id = ElfImage(LIBC).build_id
    cache = tempfile.mkdtemp(prefix="ubt-bench-")
    cold = timed(lambda: UnwindTableCache(cache).get(build_id, LIBC, None))
    warm = timed(lambda: UnwindTableCache(cache).get(build_id, LIBC, None), repeat=5)
    print_table("libc unwind table (.eh_frame)", ["stage", "ms"],
                [("compile (cold cache)", f"{cold * 1e3:.1f}"),
                 ("load (warm cache)", f"{warm * 1e3:.2f}")])
    print("goal: warm load <= 50 ms")

    snaps = capture_targets()
    pipeline = Pipeline(cache)
    for s in snaps:  # warm every table and index once
        pipeline.trace(s)
    frames = 0
    t = time.perf_counter()
    for _ in range(args.rounds):
        for s in snaps:
            frames += len(pipeline.unwind(s)[1])
    unwind_s = time.perf_counter() - t
    sym_frames = 0
    t = time.perf_counter()
    for _ in range(max(1, args.rounds // 10)):
        for s in snaps:
            sym_frames += len(pipeline.trace(s).frames)
    trace_s = time.perf_counter() - t
    print_table(f"Unwinding {len(snaps)} captured snapshots (ls, python3) repeatedly",
                ["stage", "frames", "seconds", "frames/s"],
                [("unwind only", frames, f"{unwind_s:.2f}", f"{frames / unwind_s:,.0f}"),
                 ("unwind + symbolize", sym_frames, f"{trace_s:.2f}",
                  f"{sym_frames / trace_s:,.0f}")])
    print("goal: >= 300k frames/s unwinding")


if __name__ == "__main__":
    main()
