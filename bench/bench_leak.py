"""`ubt leak` against `memleak-bpfcc` (Debian's bcc tools) and valgrind, on the same workload
in the same run: the cost per allocator call on the traced thread, and the total time.

The workload is fixtures/src/leaky.c's `bench N` mode (-O2 -fomit-frame-pointer): N malloc/free
pairs six frames below main, nothing leaked, and it prints its own thread CPU time over the
loop (where uprobe traps and BPF programs are charged). Per-call cost = (loop CPU traced -
loop CPU untraced) / 2N: a malloc and a free per iteration. Total = wall time from starting
the tool to the workload's end (memleak traces the workload with -p, see `memleak`; its clang
compile is part of its total, as it is of every memleak run).

memleak needs kernel headers: it runs unchanged, with bcc's include flags added the way ubt
adds them (`ubt.bcc_env.kernel_cflags`), since this kernel has no headers package of its own.

    sudo .venv/bin/python bench/bench_leak.py [--work 0:100000,2000:20000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time

from common import LIBC, ROOT, UBT, print_table

sys.path.insert(0, str(ROOT))
from bpf_progs.uprobe_link import symbol_address  # noqa: E402
from symbolizer.maps import ProcessMaps  # noqa: E402
from symbolizer.module import ModuleSet  # noqa: E402
from ubt.bcc_env import kernel_cflags  # noqa: E402

_MEMLEAK = "/usr/sbin/memleak-bpfcc"
#: Runs Debian's memleak with bcc's include flags added (the script itself unchanged).
_MEMLEAK_RUNNER = """
import runpy, sys, bcc
cflags = sys.argv[1].split()
init = bcc.BPF.__init__
def with_includes(self, *args, **kwargs):
    kwargs["cflags"] = list(kwargs.get("cflags") or []) + cflags
    init(self, *args, **kwargs)
bcc.BPF.__init__ = with_includes
sys.argv = ["memleak-bpfcc", *sys.argv[2:]]
runpy.run_path(%r, run_name="__main__")
""" % _MEMLEAK


def workload() -> str:
    sys.path.insert(0, str(ROOT / "fixtures"))
    import build  # fixtures/build.py

    build.build("O2-nofp")
    return str(build.program_path("leaky", "O2-nofp"))


def _loop_ns(text: str) -> int:
    found = re.search(r"loop_cpu_ns (\d+)", text)
    if not found:
        raise RuntimeError(f"no loop_cpu_ns line in:\n{text[-2000:]}")
    return int(found.group(1))


def plain(cmd: list[str]) -> tuple[int, float]:
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return _loop_ns(out), time.monotonic() - t0


def ubt_leak(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    t0 = time.monotonic()
    proc = subprocess.run([UBT, "leak", "-c", " ".join(cmd)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return _loop_ns(proc.stdout), time.monotonic() - t0


def memleak(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    """memleak -p on the workload held before its loop, released once malloc's first byte
    is a breakpoint (memleak -c starts its command before compiling, and so misses a short
    one); stopped with Ctrl-C after the workload's line (it keeps running otherwise)."""
    target = subprocess.Popen([*cmd, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert target.stdin is not None and target.stdout is not None
    assert target.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    tool = subprocess.Popen([sys.executable, "-c", _MEMLEAK_RUNNER, " ".join(kernel_cflags()),
                             "-p", str(target.pid)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        while not _armed(target.pid, "malloc"):
            if tool.poll() is not None:
                raise RuntimeError("memleak ended before attaching")
            time.sleep(0.02)
        target.stdin.write(b"x")
        target.stdin.close()
        loop = _loop_ns(target.stdout.read().decode())
        return loop, time.monotonic() - t0
    finally:
        target.kill()
        target.wait()
        tool.send_signal(signal.SIGINT)
        try:
            tool.wait(timeout=20)
        except subprocess.TimeoutExpired:
            tool.kill()


def _armed(pid: int, func: str) -> bool:
    """Whether libc's `func` starts with a breakpoint (int3) in process `pid`: its uprobe is
    live."""
    modules = ModuleSet.from_maps(ProcessMaps.from_pid(pid), pid)
    libc = next(m for m in modules.modules if os.path.realpath(m.path) == LIBC)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(libc.bias + symbol_address(LIBC, func))
        return mem.read(1) == b"\xcc"


def valgrind(cmd: list[str]) -> tuple[int, float]:
    return plain(["valgrind", "-q", "--leak-check=full", *cmd])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default="0:100000,2000:20000", metavar="WORK:PAIRS,...",
                    help="rounds of arithmetic per allocation and malloc/free pairs, one table "
                    "each (work 0: allocation-bound, the worst case for uprobes; 2000: ~30 us "
                    "of program per allocator call)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_leak: run as root (BPF)", file=sys.stderr)
        return 1
    program = workload()
    env = dict(os.environ)
    kernel_cflags()  # sets BCC_KERNEL_SOURCE when this kernel has no headers
    env.update({k: v for k, v in os.environ.items() if k.startswith("BCC_")})
    subprocess.run([UBT, "leak", "-c", f"{program} bench 1000"], capture_output=True, env=env)
    for item in args.work.split(","):
        work, pairs = item.split(":")
        compare([program, "bench", pairs, work], args.repeat, env)
    return 0


def compare(cmd: list[str], repeat: int, env: dict[str, str]) -> None:
    """One table: every tool on `cmd`, interleaved, medians."""
    tools = {"untraced": lambda: plain(cmd), "ubt leak": lambda: ubt_leak(cmd, env),
             "memleak-bpfcc": lambda: memleak(cmd, env), "valgrind": lambda: valgrind(cmd)}
    results: dict[str, list[tuple[int, float]]] = {name: [] for name in tools}
    for _ in range(repeat):  # interleaved: drift on a shared machine hits all alike
        for name, run in tools.items():
            results[name].append(run())
    base = statistics.median(ns for ns, _ in results["untraced"])
    calls = 2 * int(cmd[2])
    rows = []
    per_call: dict[str, float] = {}
    total: dict[str, float] = {}
    for name, runs in results.items():
        loop = statistics.median(ns for ns, _ in runs)
        per_call[name] = (loop - base) / calls / 1000
        total[name] = statistics.median(wall for _, wall in runs)
        rows.append([name, f"{loop / 1e6:.0f}", f"{per_call[name]:.2f}", f"{total[name]:.2f}"])
    print_table(f"leaky bench {cmd[2]} (work {cmd[3]}: {calls} allocator calls, "
                f"{base / calls:.0f} ns of program per call), median of {repeat}",
                ["tool", "loop CPU ms", "us per call", "total s"], rows)
    print(f"ubt / memleak per call: {per_call['ubt leak'] / per_call['memleak-bpfcc']:.2f}x "
          f"(goal <= 2); valgrind / ubt total: {total['valgrind'] / total['ubt leak']:.1f}x "
          f"(goal >= 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
