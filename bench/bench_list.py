"""Listing the probe-able lines of a libc function with their variables: `ubt list` cold and
warm against `perf probe -L` plus one `perf probe -V` per line (what perf needs for the same
answer) and `stap -L ... statement("FUNC@*:*")`, on the same function in the same run.

Cold: an empty ubt cache (the debug file is read: one unit decoded); warm: the same command
again (the answer comes from the cache under list/<build-id>). Every figure includes process
start-up. systemtap is installed with apt when missing; stap needs a kernel build tree, given
with -r (Debian's linux-headers-*-amd64); when it cannot run, the table says why.

    .venv/bin/python bench/bench_list.py [--function getenv]
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import tempfile

from common import LIBC, UBT, print_table, timed

GOAL_WARM = 0.3


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a command; fail loudly if it fails."""
    res = subprocess.run(argv, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{argv[0]} failed ({res.returncode}): {res.stderr.strip()[:300]}")
    return res.stdout


def perf_both(function: str, source: str) -> int:
    """`perf probe -L FUNC` then `-V FUNC:N` for every listed line; the number of lines."""
    out = run(["perf", "probe", "-x", LIBC, "--source", source, "-L", function])
    lines = [int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+L\d+", out, re.M)]
    for n in lines:
        subprocess.run(["perf", "probe", "-x", LIBC, "-V", f"{function}:{n}" if n else function],
                       capture_output=True, text=True)
    return len(lines)


def stap_command(function: str) -> tuple[list[str] | None, str]:
    """The stap command, or None and why stap cannot run here."""
    if shutil.which("stap") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "systemtap"], capture_output=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if shutil.which("stap") is None:
        return None, "systemtap could not be installed"
    trees = sorted(glob.glob("/usr/src/linux-headers-*-amd64"))
    if not trees:
        return None, "no kernel build tree (linux-headers-*-amd64) for stap -r"
    argv = ["stap", "-r", trees[-1], "-L", f'process("{LIBC}").statement("{function}@*:*")']
    probe = subprocess.run(argv, capture_output=True, text=True)
    if probe.returncode or not probe.stdout.strip():
        return None, f"stap -L fails here: {probe.stderr.strip().splitlines()[:1]}"
    return argv, ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--function", default="getenv")
    args = ap.parse_args()
    fn = args.function
    cache = tempfile.mkdtemp(prefix="ubt-bench-")
    source = tempfile.mkdtemp(prefix="ubt-bench-src-")
    env = dict(os.environ, UBT_CACHE_DIR=cache)
    env.pop("DEBUGINFOD_URLS", None)
    ubt = [UBT, "list", LIBC, f"{fn}:*"]
    listed = run(ubt, env).splitlines()
    file = re.search(r'@([^:"]+):\d+', listed[0])
    assert file, listed[0]
    with open(os.path.join(source, os.path.basename(file[1])), "w") as f:
        f.write("".join(f"L{n}\n" for n in range(1, 20000)))
    shutil.rmtree(cache)
    cold = timed(lambda: run(ubt, env))
    warm = timed(lambda: run(ubt, env), repeat=5)
    n_perf = perf_both(fn, source)
    perf = timed(lambda: perf_both(fn, source), repeat=3)
    perf_l = timed(lambda: run(["perf", "probe", "-x", LIBC, "--source", source, "-L", fn]),
                   repeat=3)
    stap_argv, why = stap_command(fn)
    stap = timed(lambda: run(stap_argv), repeat=3) if stap_argv else None
    anchor = stap if stap is not None else perf

    def row(name: str, t: float | None, note: str = "") -> tuple[str, str, str, str]:
        if t is None:
            return (name, "n/a", "n/a", note)
        return (name, f"{t:.3f}", f"{anchor / t:.2f}", note)

    rows = [
        row(f"stap -L statement(\"{fn}@*:*\")", stap, why or "anchor"),
        row("perf probe -L", perf_l, "lines only"),
        row(f"perf probe -L + {n_perf} x -V", perf, "lines and variables"
            + ("" if stap_argv else "; anchor")),
        row("ubt list (cold cache)", cold, f"{len(listed)} lines"),
        row("ubt list (warm cache)", warm,
            f"goal <= {GOAL_WARM} s: {'met' if warm <= GOAL_WARM else 'NOT met'}"),
    ]
    print_table(f"Listing {fn} (libc, libc6-dbg DWARF): seconds, speed-up vs the anchor",
                ("tool", "seconds", "x anchor", "note"), rows)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)


if __name__ == "__main__":
    main()
