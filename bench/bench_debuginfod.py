"""Cold fetch + symbolize of a stripped fixture through a local elfutils `debuginfod`: ubt
against `debuginfod-find` + `eu-addr2line` for the same build-id and addresses, same run.

A `debuginfod -F` server on 127.0.0.1 serves the fixture's debug file; the stripped binary is
copied alone elsewhere, so only the server can supply its DWARF. "Cold" means an empty
debuginfod cache (and an empty ubt cache); "warm fetch" keeps the downloaded file but not ubt's
DWARF index; "warm" keeps both. Every figure is a whole command, start-up included, best of
`--repeat` runs.

    .venv/bin/python bench/bench_debuginfod.py [--program cxx-stripped] [--count 2000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, UBT, print_table, random_addresses, run_stdin, timed

sys.path.insert(0, str(ROOT))

from symbolizer.elf import ElfImage  # noqa: E402

STRIPPED = ROOT / "fixtures" / "build" / "stripped"


def start_server(served: Path, work: Path, build_id: str) -> tuple[subprocess.Popen[bytes], str]:
    """`debuginfod -F served` on a free port; returns once it serves `build_id`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["debuginfod", "-F", str(served), "-p", str(port),
                             "-d", str(work / "db.sqlite")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/buildid/{build_id}/debuginfo", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("debuginfod did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", default="cxx-stripped")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not (STRIPPED / args.program).exists():
        subprocess.run([sys.executable, str(ROOT / "fixtures" / "build.py"), "stripped"],
                       check=True)
    work = Path(tempfile.mkdtemp(prefix="ubt-bench-debuginfod-"))
    (work / "served").mkdir()
    (work / "bin").mkdir()
    shutil.copy2(STRIPPED / f"{args.program}.debug", work / "served")
    binary = str(work / "bin" / args.program)
    shutil.copy2(STRIPPED / args.program, binary)
    build_id = ElfImage(binary).build_id
    assert build_id
    data = "".join(f"{a:#x}\n" for a in random_addresses(binary, args.count))
    server, url = start_server(work / "served", work, build_id)
    runs = 0

    def env(cache: Path) -> dict[str, str]:
        return dict(os.environ, DEBUGINFOD_URLS=url, DEBUGINFOD_CACHE_PATH=str(cache),
                    UBT_CACHE_DIR=str(cache) + "-ubt", DEBUGINFOD_PROGRESS="")

    def fresh() -> Path:
        nonlocal runs
        runs += 1
        return work / f"cache{runs}"

    def elfutils(cache: Path) -> None:
        e = env(cache)
        path = run_stdin(["debuginfod-find", "debuginfo", build_id], "", e).strip()
        run_stdin(["eu-addr2line", "-f", "-i", "-C", "-e", path], data, e)

    def ubt(cache: Path) -> None:
        run_stdin([UBT, "symbolize", "-e", binary], data, env(cache))

    def ubt_fetch_only(cache: Path) -> None:
        run_stdin([UBT, "debuginfod", "find", "debuginfo", build_id], "", env(cache))

    try:
        rows = []
        anchor = timed(lambda: elfutils(fresh()), args.repeat)
        rows.append(("debuginfod-find + eu-addr2line -f -i, cold", anchor))
        libdwfl = timed(lambda: run_stdin(["eu-addr2line", "-f", "-i", "-C", "-e", binary],
                                          data, env(fresh())), args.repeat)
        rows.append(("eu-addr2line on the stripped file (libdwfl fetches), cold", libdwfl))
        rows.append(("debuginfod-find debuginfo, cold", timed(
            lambda: run_stdin(["debuginfod-find", "debuginfo", build_id], "", env(fresh())),
            args.repeat)))
        rows.append(("ubt debuginfod find debuginfo, cold",
                     timed(lambda: ubt_fetch_only(fresh()), args.repeat)))
        rows.append(("ubt symbolize, cold", timed(lambda: ubt(fresh()), args.repeat)))
        warm_fetch = fresh()
        ubt_fetch_only(warm_fetch)

        def warm_fetch_run() -> None:
            shutil.rmtree(str(warm_fetch) + "-ubt", ignore_errors=True)
            ubt(warm_fetch)

        rows.append(("ubt symbolize, fetched file cached, no DWARF index",
                     timed(warm_fetch_run, args.repeat)))
        warm = fresh()
        ubt(warm)
        rows.append(("ubt symbolize, warm", timed(lambda: ubt(warm), args.repeat)))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    size = (STRIPPED / f"{args.program}.debug").stat().st_size
    print_table(f"Fetch {args.program}.debug ({size // 1024} KiB) from a local debuginfod and "
                f"symbolize {args.count:,} addresses", ["what", "seconds", "vs elfutils"],
                [(name, f"{t:.3f}", f"{anchor / t:.2f}") for name, t in rows])


if __name__ == "__main__":
    main()
