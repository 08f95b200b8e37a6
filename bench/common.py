"""Shared helpers for the bench/ scripts: timing, tables, sample addresses.

Each bench script prints a table with its anchors (the tools ubt is compared against) measured in
the same run, so ratios hold on a noisy machine even when absolute figures move.
"""
from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UBT = str(ROOT / ".venv" / "bin" / "ubt")
LIBC = str(Path("/lib/x86_64-linux-gnu/libc.so.6").resolve())


def text_range(elf: str) -> tuple[int, int]:
    """[start, end) of the .text section of `elf`, from readelf."""
    out = subprocess.run(["readelf", "-SW", elf], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.search(r"\]\s+\.text\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            start, size = int(m.group(1), 16), int(m.group(2), 16)
            return start, start + size
    raise SystemExit(f"{elf}: no .text section")


def random_addresses(elf: str, count: int, seed: int = 2) -> list[int]:
    """`count` reproducible uniformly random addresses inside `elf`'s .text."""
    start, end = text_range(elf)
    rng = random.Random(seed)
    return [rng.randrange(start, end) for _ in range(count)]


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of `repeat` runs of `fn`, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_stdin(argv: Sequence[str], data: str, env: dict[str, str] | None = None) -> str:
    """Run a command with `data` on stdin; fail loudly if it fails."""
    res = subprocess.run(list(argv), input=data, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{argv[0]} failed ({res.returncode}): {res.stderr.strip()[:300]}")
    return res.stdout


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned text table."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
