"""`ubt process` (real BPF, real uprobes) against gdb stopped at the same function entry.

Method
------
1. ubt: ``ubt process BINARY FUNC... -c 'CMD >/dev/null' --format json`` (``-n N`` where the
   program would run on): one JSON object per hit.
2. gdb, the oracle (``tests.oracle.gdb_stops``): the same command, started the same way (through
   ``/bin/sh -c 'exec CMD'``, stdout to /dev/null), with ``break *ADDR`` at the *exact entry* of
   each probed function (ubt's uprobe fires at ``func+0``; ``break func`` would skip the
   prologue), ADDR from the ELF symbol table (pyelftools, independent of ubt's lookup); at each
   stop gdb's Python API walks the stopped thread (``tests/oracle/gdb_breaks.py``).
3. Hit k of ubt is stop k of gdb: the programs are deterministic (the threaded fixtures make
   their threads' calls one thread after the other, or each probed function is called once and
   hits are matched by probe). The probe label must match the breakpoint's, the thread name
   ubt's ``comm``.
4. The two runs have different ASLR (gdb even disables it), so frames are compared by
   module-relative address (ubt's ``offset``; for gdb ``pc`` minus the bias of the module
   mapped there at that stop) and then exactly as `ubt stack` is compared with gdb
   (``tests.oracle.stack_compare``): alignment on (address, inlined), function name, file:line,
   inline frames, module, the end of the walk; gdb tail-call frames are set aside and listed.
   Identical (ubt, gdb) stack pairs are compared once.

What gdb shows at ``break *opendir``: gdb hides an inline frame whose block starts at the stop
pc unless the breakpoint's location symbol is that inlined function (``stopped_by_user_bp_
inline_frame`` in gdb/inline-frame.c); gdb's location for ``*0x...`` at opendir's entry is
``invalid_name`` (``info breakpoints``: "in invalid_name at ../sysdeps/unix/sysv/linux/
opendir.c:33"), so gdb 13 shows ``#0 invalid_name (inlined)`` above ``#1 __opendir``, as ubt does.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
from collections import Counter
from typing import Any, Sequence

import pytest

from tests.conftest import ubt_command
from tests.integration import VARIANTS
from tests.oracle import gdb as gdb_oracle
from tests.oracle.gdb import GdbThread
from tests.oracle.gdb_stops import (Break, GdbRun, elf_symbol, gdb_stops, relative_gdb,
                                    relative_ubt)
from tests.oracle.stack_compare import compare_thread, side_by_side

pytestmark = [pytest.mark.integration, pytest.mark.needs_root,
              pytest.mark.skipif(not gdb_oracle.available(), reason="gdb is not installed")]

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
END_LINE = re.compile(r"^ubt: (\d+) hits?, (\d+) lost events?, (\d+) truncated stacks?(.*)$")
MAX_SHOWN = 3  # differing hits listed in a failure


# ---- running ubt ----------------------------------------------------------------------------

def end_counts(stderr: str) -> tuple[int, int, int, str]:
    """(hits, lost, truncated, rest) from the end line of ``ubt process``."""
    lines = stderr.strip().splitlines()
    m = END_LINE.match(lines[-1]) if lines else None
    assert m, f"no end line on stderr:\n{stderr[-2000:]}"
    return int(m[1]), int(m[2]), int(m[3]), m[4]


def ubt_process(ubt: Any, binary: str, funcs: Sequence[str], command: str, *args: str,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``ubt process BINARY FUNCS -c 'COMMAND >/dev/null' ARGS``; fails the test unless it
    succeeded with its start and end lines on stderr and no traceback. A run that does not end
    by itself within `timeout` (its -n limit or the command's exit should end it) gets a Ctrl-C,
    and the failure shows what it had gathered."""
    argv = [*ubt_command(), "process", binary, *funcs, "-c", f"{command} >/dev/null", *args]
    what = f"ubt process {binary} {' '.join(funcs)} -c {command!r} {' '.join(args)}"
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=ubt.env) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)
            try:
                out, err = p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            probes = Counter(json.loads(ln)["probe"] for ln in out.splitlines()
                             if ln.startswith("{"))
            pytest.fail(f"{what}: still running after {timeout}s; after Ctrl-C: exit "
                        f"{p.returncode}, hits printed per probe {dict(probes)}, stderr:\n"
                        f"{err[-3000:]}")
    proc = subprocess.CompletedProcess(argv, p.returncode, out, err)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, \
        f"{what}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
    first = proc.stderr.splitlines()[0] if proc.stderr else ""
    assert first.startswith("Tracing ") and first.endswith("Hit Ctrl-C to end."), \
        f"{what}: start line {first!r}"
    return proc


def ubt_hits(ubt: Any, binary: str, funcs: Sequence[str], command: str,
             *args: str) -> tuple[list[dict[str, Any]], tuple[int, int, int, str]]:
    proc = ubt_process(ubt, binary, funcs, command, "--format", "json", *args)
    hits = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    counts = end_counts(proc.stderr)
    assert counts[0] == len(hits), f"end line says {counts[0]} hits, {len(hits)} printed"
    assert counts[1:3] == (0, 0), f"lost events or truncated stacks: {proc.stderr[-500:]}"
    return hits, counts


# ---- comparing --------------------------------------------------------------------------------

def hit_label(hit: dict[str, Any]) -> str:
    f = hit["frames"][0] if hit["frames"] else {}
    where = (f"{f.get('function')} (offset {f['offset']:#x} in {os.path.basename(f['module'])})"
             if f.get("module") else f"{f.get('pc', 0):#x} [unknown]")
    return f"{hit['probe']} tid {hit['tid']} ({hit['comm']}) at {where}"


def compare_runs(hits: list[dict[str, Any]], run: GdbRun, pairs: Sequence[tuple[int, int]],
                 debug_dirs: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Compare ubt hit i with gdb stop j for each (i, j); (problems, notes). Stacks are
    compared by module-relative address; each distinct (ubt stack, gdb stack) pair once.
    `debug_dirs`: the debug-file directories gdb was given (for eu-addr2line too)."""
    problems: list[str] = []
    notes: list[str] = []
    seen: dict[str, list[str]] = {}
    bad = 0
    for i, j in pairs:
        u, g = hits[i], run.stops[j]
        head = []
        if u["probe"] != g.label:
            head.append(f"probe {u['probe']!r} != gdb breakpoint {g.label!r}")
        if g.thread.name is not None and u["comm"] != g.thread.name[:15]:
            head.append(f"comm {u['comm']!r} != gdb thread name {g.thread.name!r}")
        ru, rg = relative_ubt(u), relative_gdb(g)
        rg, note = trim_gdb_guesswork(ru, rg)
        if note and note not in notes:
            notes.append(note)
        key = json.dumps([[(f["pc"], f.get("module"), f.get("inlined"), f.get("function"),
                            f.get("file"), f.get("line")) for f in ru["frames"]],
                          ru["stop_reason"], [repr(f) for f in rg.frames], rg.stop])
        if key not in seen:
            local_notes: list[str] = []
            seen[key] = compare_thread(ru, rg, local_notes, debug_dirs)
            notes.extend(n for n in local_notes if n not in notes)
        diffs = head + seen[key]
        if diffs:
            bad += 1
            if bad <= MAX_SHOWN:
                problems.append(f"ubt hit #{i} ({hit_label(u)}) / gdb stop #{j}:\n  "
                                + "\n  ".join(diffs) + "\n" + side_by_side(ru, rg))
    if bad > MAX_SHOWN:
        problems.append(f"... {bad - MAX_SHOWN} more differing hits (of {len(pairs)})")
    return problems, notes


def trim_gdb_guesswork(u: dict[str, Any], g: GdbThread) -> tuple[GdbThread, str | None]:
    """Where there is no unwind information for a frame (ld.so's ``_dl_start_user``: the caller of
    library initializers before ``main``), ubt stops (``no_unwind_info``) and gdb guesses on,
    taking words of the initial stack (argc, argv pointers) for return addresses: frames in no
    mapped file. Those gdb frames are set aside, only there and only when every one of them is
    outside every module; the frames up to the last one ubt shows are still compared."""
    n = len(u["frames"])
    rest = g.frames[n:]
    if (u.get("stop_reason") != "no_unwind_info" or not rest or len(g.frames) <= n
            or any(f.module is not None for f in rest)):
        return g, None
    last = g.frames[n - 1]
    note = (f"gdb guessed {len(rest)} frames past {last.function or last.name} (no unwind info), "
            f"none in a mapped file: " + ", ".join(f"{f.pc:#x}" for f in rest))
    return dataclasses.replace(g, frames=g.frames[:n], stop="no unwind info (set aside)"), note


def assert_same(hits: list[dict[str, Any]], run: GdbRun, pairs: Sequence[tuple[int, int]],
                what: str, debug_dirs: Sequence[str] = ()) -> None:
    problems, notes = compare_runs(hits, run, pairs, debug_dirs)
    if notes:
        print(f"{what}: accepted equivalences: " + "; ".join(notes))
    assert not problems, f"ubt process != gdb for {what}:\n" + "\n\n".join(problems)


def in_order(hits: list[dict[str, Any]], run: GdbRun) -> list[tuple[int, int]]:
    """Hit k with stop k; the counts must agree."""
    assert len(hits) == len(run.stops), (
        f"ubt saw {len(hits)} hits, gdb {len(run.stops)} stops: ubt "
        f"{Counter(h['probe'] for h in hits)}, gdb {Counter(s.label for s in run.stops)}")
    return [(k, k) for k in range(len(hits))]


def by_probe(hits: list[dict[str, Any]], run: GdbRun) -> list[tuple[int, int]]:
    """Each probe hit exactly once (concurrent threads): matched by probe label."""
    ulabels = [h["probe"] for h in hits]
    glabels = [s.label for s in run.stops]
    assert sorted(ulabels) == sorted(glabels) and len(set(ulabels)) == len(ulabels), \
        f"ubt hits {ulabels}, gdb stops {glabels}"
    return [(i, glabels.index(lab)) for i, lab in enumerate(ulabels)]


def fixture_functions(frames: Sequence[Any], program_path: str) -> list[str]:
    """Names of the frames in the fixture's own files (gdb frames), innermost first."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(program_path))), "src")
    return [f.function or f.name for f in frames
            if (f.fullname or "").startswith(src)]


# ---- fixtures -----------------------------------------------------------------------------------

CHAIN_PROBES = ("fx_recurse", "fx_leaf", "lc_enter")


@pytest.mark.parametrize("variant", VARIANTS)
def test_chain_hits_match_gdb(variant: str, fixture_build: Any, needs_root: None,
                              ubt: Any) -> None:
    """No frame pointers, a shared library, a 20 KB frame, a VLA, an inlined frame and 10-deep
    recursion: fx_recurse (10 hits, each one deeper), fx_leaf and lc_enter (libchain.so)."""
    prog = str(fixture_build.program_path("chain", variant))
    lib = str(fixture_build.variant_dir(variant) / "libchain.so")
    breaks = [Break("fx_recurse", prog, elf_symbol(debug_or(prog), "fx_recurse")),
              Break("fx_leaf", prog, elf_symbol(debug_or(prog), "fx_leaf")),
              Break("lc_enter", lib, elf_symbol(lib, "lc_enter"))]
    hits, _ = ubt_hits(ubt, prog, CHAIN_PROBES, prog, "-n", "12")
    run = gdb_stops([prog], breaks, max_stops=12)
    assert [s.label for s in run.stops] == ["fx_recurse"] * 10 + ["fx_leaf", "lc_enter"], \
        "gdb: unexpected stops (harness problem)"
    # the oracle saw the fixture's whole chain at lc_enter
    names = fixture_functions(run.stops[-1].thread.frames, prog)
    assert names == ["lc_enter", "fx_leaf", *["fx_recurse"] * 10, "fx_inlined",
                     "fx_with_inline", "fx_vla", "fx_big_frame", "fx_start", "main"], names
    assert_same(hits, run, in_order(hits, run), os.path.basename(prog))


def debug_or(path: str) -> str:
    """The file holding `path`'s symbol table (the .debug file of a stripped variant)."""
    return path + ".debug" if os.path.exists(path + ".debug") else path


@pytest.mark.parametrize("variant", ["O2-nofp", "debugframe"])
def test_threads_hits_match_gdb(variant: str, fixture_build: Any, needs_root: None,
                                ubt: Any) -> None:
    """Four threads, one of them inside a SIGUSR1 handler (its stack crosses the signal frame):
    each blocking function is entered once, in its own thread."""
    prog = str(fixture_build.program_path("threads", variant))
    funcs = ("cond_block", "sleep_block", "sig_block", "handler_block")
    hits, _ = ubt_hits(ubt, prog, funcs, prog, "-n", "4")
    run = gdb_stops([prog], [Break(f, prog, elf_symbol(prog, f)) for f in funcs], max_stops=4)
    handler = next(s for s in run.stops if s.label == "handler_block")
    assert any(f.is_sigtramp for f in handler.thread.frames), \
        "gdb shows no signal frame under handler_block (harness problem)"
    assert_same(hits, run, by_probe(hits, run), os.path.basename(prog))


@pytest.mark.parametrize("variant", ["O2-nofp", "O0"])
def test_cxx_hits_match_gdb(variant: str, fixture_build: Any, needs_root: None,
                            ubt: Any) -> None:
    """C++: demangled names with parameters, a frame in the catch block (``run(int) [clone
    .cold]`` at -O2). Probes by mangled name (what ELF symbol tables hold)."""
    prog = str(fixture_build.program_path("cxx", variant))
    funcs = ("_ZN2fx6Worker8on_errorERKSt9exception", "_ZN2fx2io13block_foreverEi")
    hits, _ = ubt_hits(ubt, prog, funcs, prog, "-n", "2")
    run = gdb_stops([prog], [Break(f, prog, elf_symbol(prog, f)) for f in funcs], max_stops=2)
    assert [s.label for s in run.stops] == list(funcs), "gdb: unexpected stops (harness problem)"
    assert_same(hits, run, in_order(hits, run), os.path.basename(prog))


@pytest.mark.parametrize("variant", ["O2-nofp", "O0", "dwz"])
def test_hits_fixture_matches_gdb(variant: str, fixture_build: Any, needs_root: None,
                                  ubt: Any) -> None:
    """All 1000 hits of hit_target in the short-lived fixture, from a loop with an inlined
    call, from 5-deep recursion and from three threads, each equal to gdb's stop of the same
    rank (the fixture's threads run one after the other)."""
    prog = str(fixture_build.program_path("hits", variant))
    hits, _ = ubt_hits(ubt, prog, ["hit_target"], prog)
    run = gdb_stops([prog], [Break("hit_target", prog, elf_symbol(prog, "hit_target"))],
                    max_stops=2000)
    assert len(run.stops) == 1000, f"gdb stopped {len(run.stops)} times (harness problem)"
    assert_same(hits, run, in_order(hits, run), os.path.basename(prog))


def test_cxx_hits_by_cxx_names_match_gdb(fixture_build: Any, needs_root: None, ubt: Any) -> None:
    """The same probes spelled as people write C++ (no linkage names): hits are labelled with
    those spellings and equal gdb's stops at the mangled symbols' addresses."""
    prog = str(fixture_build.program_path("cxx", "O2-nofp"))
    names = {"fx::Worker::on_error": "_ZN2fx6Worker8on_errorERKSt9exception",
             "fx::io::block_forever(int)": "_ZN2fx2io13block_foreverEi"}
    hits, _ = ubt_hits(ubt, prog, list(names), prog, "-n", "2")
    run = gdb_stops([prog], [Break(n, prog, elf_symbol(prog, m)) for n, m in names.items()],
                    max_stops=2)
    assert [s.label for s in run.stops] == list(names), "gdb: unexpected stops (harness problem)"
    assert_same(hits, run, in_order(hits, run), os.path.basename(prog))


# ---- a real program: ls -l / at libc functions ----------------------------------------------

LS_CASES = {
    # function: most hits compared (None: every call of the whole run)
    "opendir": None,
    "strcoll": None,
    "malloc": 150,
    "free": 150,   # probed on the je after its test %rdi,%rdi (trap_cost), shown at the entry
}


@pytest.mark.real_programs
@pytest.mark.parametrize("func", sorted(LS_CASES))
def test_ls_libc_hits_match_gdb(func: str, needs_root: None, ubt: Any) -> None:
    """``ls -l /`` (stripped, no frame pointers) at libc's opendir, strcoll, malloc and free
    (malloc's first calls come from libselinux's initializer, under ld.so's ``_dl_init``)."""
    limit = LS_CASES[func]
    args = ("-n", str(limit)) if limit else ()
    hits, _ = ubt_hits(ubt, "/bin/ls", [func], "ls -l /", *args)
    problems = []
    # gdb (startup-with-shell) stops only in the command; ubt also traces `sh -c 'exec ls ...'`
    foreign = [h for h in hits if h["comm"] != "ls"]
    if foreign:
        problems.append(f"{len(foreign)} of {len(hits)} hits are not from ls but from "
                        f"{sorted({h['comm'] for h in foreign})} (the -c wrapper shell before "
                        f"its exec), e.g. {hit_label(foreign[0])}")
    hits = [h for h in hits if h["comm"] == "ls"]
    assert hits, f"no hit of {func} in ls -l /"
    entry = elf_symbol(LIBC, func)
    top = Counter((h["frames"][0].get("module"), h["frames"][0].get("offset")) for h in hits)
    if set(top) != {(LIBC, entry)}:
        problems.append(f"ubt's ls hits are not all at {func}'s entry ({LIBC}, {entry:#x}): "
                        f"{dict(top)}")
    run = gdb_stops(["ls", "-l", "/"], [Break(func, LIBC, entry)],
                    max_stops=len(hits) if limit else 100000)
    if len(hits) != len(run.stops):
        problems.append(f"ubt saw {len(hits)} hits in ls, gdb {len(run.stops)} stops")
    pairs = [(k, k) for k in range(min(len(hits), len(run.stops)))]
    differ, notes = compare_runs(hits, run, pairs)
    if notes:
        print(f"ls -l / at {func}: accepted equivalences: " + "; ".join(notes))
    problems += differ
    assert not problems, f"ubt process != gdb for ls -l / at {func}:\n" + "\n\n".join(problems)


def test_opendir_entry_shows_inline_frame_like_gdb(needs_root: None, ubt: Any) -> None:
    """At ``break *opendir`` gdb 13 shows the inlined ``invalid_name`` above ``__opendir`` (the
    breakpoint location's symbol is the inlined block: gdb does not skip it); ubt must too."""
    hits, _ = ubt_hits(ubt, "/bin/ls", ["opendir"], "ls -l /")
    run = gdb_stops(["ls", "-l", "/"], [Break("opendir", LIBC, elf_symbol(LIBC, "opendir"))],
                    max_stops=1)
    g = run.stops[0].thread.frames
    gdb_top = [(f.function or f.name, f.is_inline) for f in g[:2]]
    ubt_top = [(f["function"], f["inlined"]) for f in hits[0]["frames"][:2]]
    assert gdb_top == [("invalid_name", True), ("__opendir", False)], \
        f"gdb shows {gdb_top} at *opendir (oracle changed?)"
    assert ubt_top == gdb_top, f"ubt's first hit: {json.dumps(hits[0])[:1500]}"


# ---- the short-lived program: no hit lost, counts per stack -------------------------------------

LOOP = ("main", "loop_path", "loop_step", "hit_target")
THREAD = ("worker", "worker_body", "hit_target")


def expected_shapes(main_comm: str) -> Counter[tuple[str, tuple[str, ...]]]:
    """(comm, fixture frames outermost first) → calls, as hits.c is written."""
    want: Counter[tuple[str, tuple[str, ...]]] = Counter()
    want[(main_comm, LOOP)] = 500
    for depth in range(1, 6):
        want[(main_comm, ("main", *["rec_path"] * depth, "hit_target"))] = 40
    for t in range(3):
        want[(f"hits-t{t}", THREAD)] = 100
    return want


FIXTURE_FUNCS = frozenset({"main", "loop_path", "loop_step", "rec_path", "worker",
                           "worker_body", "hit_target"})


def shape(comm: str, names_outer_first: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    return comm, tuple(n for n in names_outer_first if n in FIXTURE_FUNCS)


@pytest.mark.parametrize("stack_size", [None, "128K"])
def test_short_lived_program_no_hit_lost(stack_size: str | None, fixture_build: Any,
                                         needs_root: None, ubt: Any) -> None:
    """A program that runs for about a millisecond, traced whole by ``-c``: exactly 1000 hits,
    none lost, every frame symbolized, every walk to the outermost frame; also with the largest
    ``--stack-size`` (bigger records in the ring buffer)."""
    prog = str(fixture_build.program_path("hits", "O2-nofp"))
    runtime = min(timed_run([prog]) for _ in range(5))
    assert runtime < 0.005, f"premise: the fixture should run under 5 ms, took {runtime:.4f} s"
    extra = ("--stack-size", stack_size) if stack_size else ()
    hits, counts = ubt_hits(ubt, prog, ["hit_target"], prog, *extra)
    assert counts[:3] == (1000, 0, 0) and not counts[3], counts
    unnamed = [(hit_label(h), f) for h in hits for f in h["frames"] if not f.get("function")]
    assert not unnamed, f"{len(unnamed)} frames not symbolized, e.g. {unnamed[:3]}"
    assert {h["stop_reason"] for h in hits} == {"end_of_stack"}
    got = Counter(shape(h["comm"], [f["function"] for f in reversed(h["frames"])]) for h in hits)
    assert got == expected_shapes(os.path.basename(prog)[:15])


def timed_run(argv: list[str]) -> float:
    import time
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def test_aggregate_counts(fixture_build: Any, needs_root: None, ubt: Any) -> None:
    """``--aggregate``: one entry per distinct stack with the number of calls made along it
    (identical stacks of the three threads are one stack: the key is the frames' pcs)."""
    prog = str(fixture_build.program_path("hits", "O2-nofp"))
    proc = ubt_process(ubt, prog, ["hit_target"], prog, "--aggregate", "--format", "json")
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert end_counts(proc.stderr)[:3] == (1000, 0, 0)
    got = Counter()
    for d in docs:
        got[shape("", [f["function"] for f in reversed(d["frames"])])[1]] += d["count"]
    want = Counter()
    for (_comm, names), n in expected_shapes("x").items():
        want[names] += n
    assert got == want
    assert len(docs) == len(want), f"{len(docs)} aggregated stacks, expected {len(want)}"
    assert [d["count"] for d in docs] == sorted(d["count"] for d in docs), "not sorted by count"

    proc = ubt_process(ubt, prog, ["hit_target"], prog, "--aggregate")
    assert end_counts(proc.stderr)[:3] == (1000, 0, 0)
    text = proc.stdout
    heads = re.findall(r"^(\d+) hits of hit_target \((.*)\):$", text, re.M)
    assert sorted(int(n) for n, _ in heads) == sorted(want.values()), text[:3000]


def test_folded_counts(fixture_build: Any, needs_root: None, ubt: Any) -> None:
    """``--format folded``: ``comm;outer;...;inner COUNT`` per distinct (comm, stack), counts as
    the fixture makes the calls, names as in the JSON hits of the same program."""
    prog = str(fixture_build.program_path("hits", "O2-nofp"))
    proc = ubt_process(ubt, prog, ["hit_target"], prog, "--format", "folded")
    assert end_counts(proc.stderr)[:3] == (1000, 0, 0)
    folded: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        stack, _, n = line.rpartition(" ")
        assert stack not in folded, f"stack printed twice: {stack}"
        folded[stack] = int(n)
    got = Counter()
    for stack, n in folded.items():
        comm, *names = stack.split(";")
        got[shape(comm, names)] += n
    assert got == expected_shapes(os.path.basename(prog)[:15])
    # the same stacks, named as in the per-hit JSON output (itself checked against gdb)
    hits, _ = ubt_hits(ubt, prog, ["hit_target"], prog)
    from_json = Counter(";".join([h["comm"], *(f["function"] or f"?? [{os.path.basename(f['module'] or 'unknown')}]"
                                               for f in reversed(h["frames"]))]) for h in hits)
    assert folded == dict(from_json)
