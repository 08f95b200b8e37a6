"""`ubt stack` and `ubt process` on stripped programs whose debug files only a real debuginfod
server has: full names, inline frames and file:line equal to gdb's (given the same debug files
by build-id), then the same output from the cache alone, with no connection attempted.

The oracle is gdb (``tests.oracle``) with a debug-file directory holding the served debug files;
`check_expected_chain` first proves that gdb itself saw the fixture's names, inline frame and
lines (the ``LINE:`` markers of fixtures/src), so two runs without debug info cannot agree by
accident. "No connection" is proven by pointing DEBUGINFOD_URLS at a listening socket that counts
every connection made to it (`ConnectionCounter`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Ubt
from tests.debuginfod.servers import (UNSERVED, ConnectionCounter, Corpus, DebuginfodServer,
                                      env_for)
from tests.integration.test_process_vs_gdb import (CHAIN_PROBES, assert_same,
                                                   fixture_functions, in_order, ubt_hits)
from tests.integration.test_stack_vs_gdb import check_expected_chain
from tests.oracle import gdb as gdb_oracle
from tests.oracle.gdb_stops import Break, elf_symbol, gdb_stops, relative_ubt
from tests.oracle.stack_compare import compare_process

pytestmark = [pytest.mark.integration, pytest.mark.needs_root,
              pytest.mark.skipif(not gdb_oracle.available(), reason="gdb is not installed")]


def stack_json(stdout: str) -> dict[int, dict[str, Any]]:
    """``ubt stack --format json`` output → {tid: thread object}."""
    return {doc["tid"]: doc for doc in map(json.loads, stdout.splitlines())}


def offline_env(counter: ConnectionCounter, cache: Path, tmp_path: Path) -> dict[str, str]:
    """The debuginfod cache of the first run, a URL that counts connections, and an empty ubt
    cache (no DWARF index or unwind table to reuse: everything is read from the debuginfod
    cache again)."""
    return env_for(counter.url, cache, UBT_CACHE_DIR=str(tmp_path / "fresh-ubt-cache"))


def test_stack_from_server_then_cache(start_server: Callable[[], DebuginfodServer],
                                      counter: ConnectionCounter, corpus: Corpus,
                                      debug_tree: Path, tmp_path: Path, needs_root: None,
                                      spawn_blocked: Any,
                                      line_markers: dict[str, tuple[str, int]]) -> None:
    """`chain-stripped` (compared with gdb) and `threads-stripped`, whose debug file no server
    has (one line, then a negative hit in the cache)."""
    server = start_server()
    cache = tmp_path / "cache"
    bp = spawn_blocked([str(corpus.binary("chain-stripped"))], ready=b"ready")
    unserved = spawn_blocked([str(corpus.binary(UNSERVED))], ready=b"ready")

    def stacks(env: dict[str, str]) -> list[tuple[int, str, str]]:
        runs = [Ubt(env).run("stack", "-p", str(p.pid), "--format", "json")
                for p in (bp, unserved)]
        return [(r.returncode, r.stdout, r.stderr) for r in runs]

    first = stacks(env_for(server.url, cache))
    assert [r[0] for r in first] == [0, 0] and first[0][2] == "", first
    gdb_threads = gdb_oracle.gdb_backtrace(bp.pid, debug_dirs=[str(debug_tree)])
    assert bp.stop_signature() == bp.stop, "the target moved between ubt and gdb"
    oracle = check_expected_chain("chain", gdb_threads, line_markers)
    assert not oracle, "gdb does not see the served debug info:\n" + "\n".join(oracle)
    problems = compare_process(stack_json(first[0][1]), gdb_threads, None, [str(debug_tree)])
    assert not problems, "ubt stack != gdb:\n" + "\n\n".join(problems)
    for name in ("chain-stripped", "libchain.so"):  # fetched, not found locally
        fetched = cache / corpus.build_ids[name] / "debuginfo"
        assert fetched.read_bytes() == corpus.debug_file(name).read_bytes()
    missing = corpus.build_ids[UNSERVED]
    assert first[1][2].splitlines() == [
        f"ubt: debuginfod: no debuginfo for build-id {missing} on any server"]
    assert (cache / missing / "debuginfo").stat().st_size == 0  # the negative hit

    server.stop()
    assert stacks(offline_env(counter, cache, tmp_path)) == first
    assert counter.connections == 0


def test_debug_frame_from_fetched_debuginfo(start_server: Callable[[], DebuginfodServer],
                                            corpus: Corpus, debug_tree: Path, tmp_path: Path,
                                            needs_root: None, spawn_blocked: Any,
                                            line_markers: dict[str, tuple[str, int]]) -> None:
    """`chain-debugframe`, stripped: its own code has CFI only in `.debug_frame`, which only the
    served debug files hold. With the server ubt walks all of it, as gdb does; without it the
    walk ends in the first frame of that code (libchain.so, under libc's read)."""
    bp = spawn_blocked([str(corpus.binary("debugframe/chain-debugframe"))], ready=b"ready")
    without = Ubt(env_for(None, tmp_path / "no-cache")).run("stack", "-p", str(bp.pid),
                                                            "--format", "json")
    server = start_server()
    fetched = Ubt(env_for(server.url, tmp_path / "cache")).run("stack", "-p", str(bp.pid),
                                                               "--format", "json")
    assert fetched.returncode == 0 and without.returncode == 0, fetched.stderr + without.stderr
    gdb_threads = gdb_oracle.gdb_backtrace(bp.pid, debug_dirs=[str(debug_tree)])
    assert bp.stop_signature() == bp.stop, "the target moved between ubt and gdb"
    oracle = check_expected_chain("chain", gdb_threads, line_markers)
    assert not oracle, "gdb does not see the served debug info:\n" + "\n".join(oracle)
    problems = compare_process(stack_json(fetched.stdout), gdb_threads, None,
                               [str(debug_tree)])
    assert not problems, "ubt stack != gdb:\n" + "\n\n".join(problems)
    (alone,) = stack_json(without.stdout).values()
    assert alone["stop_reason"] != "end_of_stack"
    assert len(alone["frames"]) < 4 and "main" not in [f["function"] for f in alone["frames"]]


def comparable(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hits without what differs between two runs of one program (pids, times, ASLR)."""
    out = []
    for hit in hits:
        doc = relative_ubt(hit)
        out.append({k: v for k, v in doc.items() if k not in ("pid", "tid", "time")})
    return out


def test_process_from_server_then_cache(start_server: Callable[[], DebuginfodServer],
                                        counter: ConnectionCounter, corpus: Corpus,
                                        debug_tree: Path, tmp_path: Path,
                                        needs_root: None) -> None:
    """``ubt process -c`` with real uprobes on `chain-stripped` (fx_recurse 10 times, fx_leaf,
    lc_enter in libchain.so) against gdb stopped at the same entries."""
    prog = str(corpus.binary("chain-stripped"))
    lib = str(corpus.binary("libchain.so"))
    server = start_server()
    cache = tmp_path / "cache"
    hits, _ = ubt_hits(Ubt(env_for(server.url, cache)), prog, CHAIN_PROBES, prog, "-n", "12")
    symbols = str(corpus.debug_file("chain-stripped"))  # the stripped program has no .symtab
    breaks = [Break("fx_recurse", prog, elf_symbol(symbols, "fx_recurse")),
              Break("fx_leaf", prog, elf_symbol(symbols, "fx_leaf")),
              Break("lc_enter", lib, elf_symbol(lib, "lc_enter"))]
    run = gdb_stops([prog], breaks, max_stops=12, debug_dirs=[str(debug_tree)])
    names = fixture_functions(run.stops[-1].thread.frames,
                              str(corpus.debug_dir / "chain-stripped"))
    assert names == ["lc_enter", "fx_leaf", *["fx_recurse"] * 10, "fx_inlined",
                     "fx_with_inline", "fx_vla", "fx_big_frame", "fx_start", "main"], \
        f"gdb does not see the served debug info: {names}"
    assert_same(hits, run, in_order(hits, run), "chain-stripped (debug info from the server)",
                [str(debug_tree)])

    server.stop()
    again, _ = ubt_hits(Ubt(offline_env(counter, cache, tmp_path)), prog, CHAIN_PROBES, prog,
                        "-n", "12")
    assert comparable(again) == comparable(hits)
    assert counter.connections == 0
