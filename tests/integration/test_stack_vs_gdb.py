"""`ubt stack -p PID --format json` against gdb, frame for frame, on every thread.

Method
------
1. Start the target and wait until it is blocked at its known place: its "ready" line (fixtures,
   python3) or a full pipe (ls), then every thread asleep in a system call with the same (sp, pc)
   on two polls (`BlockedProcess.stop`).
2. Run ubt (ptrace seize, copy, detach), then gdb (attach, walk with the Python API, detach), then
   check the stop signature again: both observers saw the same stop, or the test is void.
3. Match threads by tid and compare frame i of ubt with frame i of gdb
   (``tests.oracle.stack_compare``, shared with test_process_vs_gdb.py):

   pc, inlined, name, file:line, module, the signal-frame mapping, the walk's end, gdb's
   TAILCALL frames and the two accepted gdb/eu-addr2line disagreement classes are defined once,
   in that module's docstring.
4. Sanity of the oracle itself: the fixture frames gdb shows are the ones the sources' ``LINE:``
   markers predict (function, file, line), so the targets really blocked at the known place.
"""
from __future__ import annotations

import os
from typing import Any

import pytest

from tests.integration import FIXTURE_SRC, PROGRAMS, VARIANTS
from tests.oracle import gdb as gdb_oracle
from tests.oracle.gdb import GdbThread
from tests.oracle.stack_compare import compare_process, gdb_name

pytestmark = [pytest.mark.integration, pytest.mark.needs_root,
              pytest.mark.skipif(not gdb_oracle.available(), reason="gdb is not installed")]

# The fixture frames gdb must show, innermost first, per thread name: (function, LINE marker,
# inlined). None stands for gdb's <signal handler called>.
EXPECTED_CHAIN: dict[str, dict[str, list[tuple[str, str, bool] | None]]] = {
    "chain": {"*": [
        ("lc_wait", "lc_read", False), ("lc_enter", "lc_enter_call", False),
        ("fx_leaf", "leaf_call", False), ("fx_recurse", "recurse_base", False),
        *[("fx_recurse", "recurse_call", False)] * 9,
        ("fx_inlined", "inlined_call", True), ("fx_with_inline", "inline_site", False),
        ("fx_vla", "vla_call", False), ("fx_big_frame", "big_call", False),
        ("fx_start", "start_call", False), ("main", "main_call", False)]},
    "threads": {
        "fx-main": [("main", "main_join", False)],
        "fx-cond": [("cond_block", "cond_wait", False), ("cond_outer", "cond_outer_call", False),
                    ("cond_thread", "cond_thread_call", False)],
        "fx-sleep": [("sleep_block", "sleep_call", False),
                     ("sleep_outer", "sleep_outer_call", False),
                     ("sleep_thread", "sleep_thread_call", False)],
        "fx-signal": [("handler_block", "handler_pause", False),
                      ("usr1_handler", "handler_call", False), None,
                      ("sig_block", "sig_read", False), ("sig_outer", "sig_outer_call", False),
                      ("sig_thread", "sig_thread_call", False)],
    },
    "cxx": {"*": [
        ("fx::io::block_forever(int)", "cxx_read", False),
        ("fx::Worker::on_error(std::exception const&)", "cxx_on_error_call", False),
        ("fx::Worker::run(int)", "cxx_catch_call", False),
        ("fx::dispatch<fx::Worker>(fx::Worker&, int)", "cxx_dispatch_call", False),
        ("main()", "cxx_main_call", False)]},
}
FIXTURE_THREADS = {"chain": 1, "threads": 4, "cxx": 1}


def observe(bp: Any, ubt: Any) -> tuple[dict[int, dict[str, Any]], dict[int, GdbThread]]:
    """ubt first, then gdb, on the same stop (checked)."""
    ubt_threads = ubt.stack_json(bp.pid)
    gdb_threads = gdb_oracle.gdb_backtrace(bp.pid)
    after = bp.stop_signature()
    assert after == bp.stop, (f"the target moved between observations: {bp.stop} -> {after}; "
                              f"the comparison would be void")
    return ubt_threads, gdb_threads


def check_expected_chain(program: str, gdb_threads: dict[int, GdbThread],
                         markers: dict[str, tuple[str, int]]) -> list[str]:
    """The fixture's own frames in gdb's walk are those the LINE markers predict."""
    problems = []
    expected = EXPECTED_CHAIN[program]
    if len(gdb_threads) != FIXTURE_THREADS[program]:
        problems.append(f"{len(gdb_threads)} threads, expected {FIXTURE_THREADS[program]}")
    for t in gdb_threads.values():
        want = expected.get(t.name or "", expected.get("*"))
        if want is None:
            problems.append(f"unexpected thread {t.name!r}")
            continue
        got: list[tuple[str | None, tuple[str, int | None], bool] | None] = []
        for f in t.frames:
            if f.is_sigtramp:
                got.append(None)
            elif f.fullname and f.fullname.startswith(str(FIXTURE_SRC)):
                got.append((gdb_name(f), (os.path.basename(f.fullname), f.line), f.is_inline))
        exp = [None if w is None else (w[0], markers[w[1]], w[2]) for w in want]
        # a signal frame counts only between fixture frames
        while got and got[0] is None:
            got.pop(0)
        if got != exp:
            problems.append(f"thread {t.name}: fixture frames {got}\n  expected {exp}")
    return problems


# ---- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("program", PROGRAMS)
def test_fixture_stack_matches_gdb(program: str, variant: str, fixture_build: Any,
                                   needs_root: None, spawn_blocked: Any, ubt: Any,
                                   line_markers: dict[str, tuple[str, int]]) -> None:
    path = fixture_build.program_path(program, variant)
    bp = spawn_blocked([str(path)], ready=b"ready")
    ubt_threads, gdb_threads = observe(bp, ubt)

    oracle_problems = check_expected_chain(program, gdb_threads, line_markers)
    assert not oracle_problems, ("gdb does not show the fixture at its known place (harness or "
                                 "fixture problem):\n" + "\n".join(oracle_problems) + "\n" +
                                 "\n".join(gdb_oracle.format_thread(t)
                                           for t in gdb_threads.values()))
    if program == "threads":
        sig = [t for t in gdb_threads.values() if any(f.is_sigtramp for f in t.frames)]
        assert [t.name for t in sig] == ["fx-signal"], "exactly one thread is in a signal handler"

    notes: list[str] = []
    problems = compare_process(ubt_threads, gdb_threads, notes)
    if notes:
        print(f"{path.name}: accepted equivalences: " + "; ".join(notes))
    assert not problems, f"ubt stack != gdb for {path.name}:\n" + "\n\n".join(problems)


REAL_PROGRAMS: dict[str, dict[str, Any]] = {
    # ls writes into a pipe nobody reads: blocked in write() (syscall 1) inside libc.
    "ls": dict(argv=["/bin/ls", "-lR", "/usr/share"], ready=None, syscalls=[1]),
    # Debian's python3, stripped (.eh_frame + .dynsym), asleep in clock_nanosleep inside libc.
    "python3": dict(argv=["/usr/bin/python3", "-c",
                          "import time; print('ready', flush=True); time.sleep(100)"],
                    ready=b"ready", syscalls=[230, 35, 7, 23]),
}


@pytest.mark.real_programs
@pytest.mark.parametrize("name", sorted(REAL_PROGRAMS))
def test_real_program_stack_matches_gdb(name: str, needs_root: None, spawn_blocked: Any,
                                        ubt: Any) -> None:
    spec = REAL_PROGRAMS[name]
    if not os.path.exists(spec["argv"][0]):
        pytest.skip(f"{spec['argv'][0]} is not installed")
    bp = spawn_blocked(spec["argv"], ready=spec["ready"], syscalls=spec["syscalls"])
    ubt_threads, gdb_threads = observe(bp, ubt)
    # The stop is inside libc, which gdb (libc6-dbg) names and places precisely.
    main = gdb_threads[bp.pid]
    assert main.frames and main.frames[0].module and "libc.so" in main.frames[0].module, \
        gdb_oracle.format_thread(main)
    notes: list[str] = []
    problems = compare_process(ubt_threads, gdb_threads, notes)
    if notes:
        print(f"{name}: accepted equivalences: " + "; ".join(notes))
    assert not problems, f"ubt stack != gdb for {name}:\n" + "\n\n".join(problems)
