"""Symbolizing random libc addresses: ubt cold and warm against addr2line, llvm-symbolizer and
eu-addr2line (all with inline chains), on the same addresses in the same run.

Cold: an empty ubt cache (the DWARF index and symbol table are built from the debug file).
Warm: the same command again (indexes loaded from the cache). Every figure includes process
start-up, as a user would see it.

    .venv/bin/python bench/bench_symbolize.py [--count 20000]
"""
from __future__ import annotations

import argparse
import os
import tempfile

from common import LIBC, UBT, print_table, random_addresses, run_stdin, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20000)
    args = ap.parse_args()
    addrs = random_addresses(LIBC, args.count)
    data = "".join(f"{a:#x}\n" for a in addrs)
    cache = tempfile.mkdtemp(prefix="ubt-bench-")
    env = dict(os.environ, UBT_CACHE_DIR=cache)
    tools = {
        "addr2line -f -i": ["addr2line", "-f", "-i", "-e", LIBC],
        "llvm-symbolizer --inlining": ["llvm-symbolizer", "--inlining", f"--obj={LIBC}"],
        "eu-addr2line -f -i": ["eu-addr2line", "-f", "-i", "-e", LIBC],
    }
    rows = []
    anchor = timed(lambda: run_stdin(tools["addr2line -f -i"], data))
    for name, argv in tools.items():
        t = anchor if name.startswith("addr2line") else timed(lambda: run_stdin(argv, data))
        rows.append((name, f"{t:.2f}", f"{args.count / t:,.0f}", f"{anchor / t:.2f}"))
    ubt = [UBT, "symbolize", "-e", LIBC, "--format", "json"]
    cold = timed(lambda: run_stdin(ubt, data, env))
    warm = timed(lambda: run_stdin(ubt, data, env), repeat=3)
    rows.append(("ubt symbolize (cold cache)", f"{cold:.2f}", f"{args.count / cold:,.0f}",
                 f"{anchor / cold:.2f}"))
    rows.append(("ubt symbolize (warm cache)", f"{warm:.2f}", f"{args.count / warm:,.0f}",
                 f"{anchor / warm:.2f}"))
    print_table(f"Symbolizing {args.count:,} random libc addresses (libc6-dbg DWARF)",
                ["tool", "seconds", "addresses/s", "speed vs addr2line"], rows)
    print("\ngoals: warm >= 1.5x addr2line's rate; cold <= 3 s")


if __name__ == "__main__":
    main()
