"""`ubt process ... --print` (real BPF, real uprobes) against gdb's `print` at the same address.

Method
------
1. ubt: ``ubt process PROG PROBE --print EXPRS -c 'setarch -R PROG ARGS' --format json``: the
   values read at each hit (``"vars"``) and the probe's address (frame 0's ELF ``offset``).
2. gdb, the oracle (``tests.oracle.gdb_stops`` with ``prints``): the same program and
   arguments, ``break *ADDR`` at that very address, and ``output EXPR`` of each expression
   (the same text without the ``$``) at every stop. gdb runs the program without address space
   randomization, and so does ubt's command (``setarch -R``), with the same environment and
   argument strings, so pointers are equal, not just alike.
3. Hit k is stop k (the fixture is single-threaded and deterministic). gdb's text is brought to
   ubt's notation only where the notations differ (`normalize_gdb`): ``<optimized out>`` is
   ``?``, a pointer ``(type *) 0x...`` is ``0x...``, a ``char *`` is its string, struct
   members ``x = 1`` are ``.x=1``, arrays are written with braces on both sides, a char array
   is its string up to the first NUL. Everything else must be the same text.

A function probe (no line) must also be where gdb's ``break FUNC`` stops (gdb run on the file,
not the process): the entry of optimized code, after the prologue line at -O0. One case probes
libc (debug info from libc6-dbg) while ``ls`` runs.

Entry values (``DW_OP_entry_value``: the caller's register at the call) away from the entry
are recovered by both from the caller's call site (frame 1's return address); ubt only when
the call value uses what the hit's snapshot knows of the caller (constants, module addresses,
callee-saved registers, its CFA and captured stack), and not what needs a read at the hit: a
string behind an entry value (``name``: the ``char *`` points into .rodata) or memory behind
one (``argv[0]``). Those stay ``?``; they are listed per case (`entry_values`) and must be
exactly the ones where ubt says ``?`` and gdb has a value: nothing else may differ.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

from tests.integration.test_process_vs_gdb import ubt_process
from tests.oracle import gdb as gdb_oracle
from tests.oracle.gdb_stops import Break, GdbRun, gdb_stops

pytestmark = [pytest.mark.integration, pytest.mark.needs_root,
              pytest.mark.skipif(not gdb_oracle.available(), reason="gdb is not installed")]

WALK = ("$name $count $state $visit $head $seen $pt $r $depth $r->name $r->depth "
        "$r->values[1] $pt.x $pt.y $r->next $r$")
HEAP = ("$item $tag $letter $item->label $item->where $item->where->y $item->id "
        "$item->state $item->code $item->where$ $item->code[2]")
BUFFERS = "$argv $argc $argv[0] $flag $sink $buf $matrix $matrix[1] $matrix[1][2] $word"

#: (variant, probe, --print, arguments, expressions ubt may leave to gdb's entry values)
CASES = [
    ("O2-nofp", "fx_walk@vars.c:60", WALK, ("x",), set()),
    ("O2-nofp", "fx_heap", HEAP, ("heap", "x"), set()),
    ("O2-nofp", "fx_heap@vars.c:107", HEAP + " $n", (), set()),
    ("O2-nofp", "fx_buffers@vars.c:84", BUFFERS, ("a",), {"argv[0]"}),
    ("O2-nofp", "fx_walk@vars.c:69", "$name $count $state $visit $head $seen $pt", (),
     {"name"}),
    ("O0", "fx_walk@vars.c:60", WALK, (), set()),
    ("O0", "fx_heap", HEAP, ("O0-heap",), set()),
]


def gdb_expression(word: str) -> str:
    """The gdb expression of a --print word: without the `$`; `$p$` (the struct `p` points
    to) is `*p`."""
    return "*" + word[1:-1] if word.endswith("$") else word[1:]


def normalize_gdb(text: str) -> str:
    """gdb's `output` in ubt's notation (see the module docstring)."""
    if text == "<optimized out>":
        return "?"
    m = re.fullmatch(r'(?:\(.*\) |\{.*\} )?(0x[0-9a-f]+)(?: <[^>]*>)?(?: (".*"))?', text)
    if m:
        return m[2] or m[1]
    if text.startswith('"'):                            # a char array
        first = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        assert first, text
        return '"' + first[1].split("\\000")[0] + '"'
    members = re.sub(r"(\w+) = ", r".\1=", text)       # {x = 1} -> {.x=1}
    return re.sub(r'\(.*?\) (0x[0-9a-f]+)|(0x[0-9a-f]+) ("[^"]*")',    # members' pointers
                  lambda m: m[1] or m[3], members)


def normalize_ubt(text: str) -> str:
    return text.replace("[", "{").replace("]", "}")


@pytest.mark.parametrize("variant,probe,prints,args,entry_values", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_values_match_gdb(variant: str, probe: str, prints: str, args: tuple[str, ...],
                          entry_values: set[str], fixture_build: Any, needs_root: None,
                          ubt: Any) -> None:
    prog = str(fixture_build.program_path("vars", variant))
    command = " ".join(["setarch", "-R", prog, *args])
    proc = ubt_process(ubt, prog, [probe], command, "--print", prints, "--format", "json")
    hits = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert hits, f"no hits of {probe}:\n{proc.stderr}"
    addr = hits[0]["frames"][0]["offset"]
    assert all(h["frames"][0]["offset"] == addr for h in hits)
    run = gdb_stops([prog, *args], [Break(probe, prog, addr)], max_stops=len(hits) + 1,
                    env=ubt.env, prints=[gdb_expression(w) for w in prints.split()])
    compare(hits, run, prints, f"{probe} ({variant}) at {addr:#x}", entry_values)
    if "@" not in probe:        # a function probe goes where gdb's `break FUNC` stops
        assert addr == gdb_break_address(prog, probe), f"{probe} ({variant}) placed at {addr:#x}"


def test_libc_parameter_at_a_statement(ubt: Any, needs_root: None) -> None:
    """A statement probe in libc (debug info from libc6-dbg) while `ls` runs: getenv's
    `name` (a string in the environment or in ls's .rodata), `len`, `name_start`."""
    prints = "$name $len $name_start"
    proc = ubt_process(ubt, "/bin/ls", ["getenv@getenv.c:67"], "ls /", "--print", prints,
                       "--format", "json", "-n", "3")
    hits = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(hits) == 3, proc.stderr
    libc = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
    addr = hits[0]["frames"][0]["offset"]
    assert hits[0]["frames"][0]["module"] == libc
    run = gdb_stops(["/bin/ls", "/"], [Break("getenv", libc, addr)], max_stops=3,
                    env=ubt.env, prints=[w[1:] for w in prints.split()])
    compare(hits, run, prints, f"getenv@getenv.c:67 at {addr:#x} of libc", set())
    assert hits[0]["vars"]["name"].startswith('"')


def compare(hits: list[dict[str, Any]], run: GdbRun, prints: str, what: str,
            entry_values: set[str]) -> None:
    """Hit k's values against gdb's at stop k (see the module docstring)."""
    assert len(run.stops) == len(hits), f"ubt {len(hits)} hits, gdb {len(run.stops)} stops"
    problems: list[str] = []
    left_to_gdb: set[str] = set()
    for k, (hit, stop) in enumerate(zip(hits, run.stops)):
        for word in prints.split():
            key, label = word[1:], gdb_expression(word)
            mine, theirs = hit["vars"][key], normalize_gdb(stop.values[label])
            if normalize_ubt(mine) == theirs:
                continue
            if mine == "?" and label in entry_values:
                left_to_gdb.add(label)
                continue
            problems.append(f"hit {k}: ${key}: ubt {mine!r}, gdb {stop.values[label]!r}")
    assert not problems, f"{what}:\n" + "\n".join(problems)
    assert left_to_gdb == entry_values, f"entry values ubt left to gdb: {left_to_gdb}"


def gdb_break_address(prog: str, function: str) -> int:
    """Where gdb's `break FUNCTION` goes in `prog` (an ELF address: the program is not run)."""
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"break {function}", prog],
                         capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"Breakpoint 1 at (0x[0-9a-f]+)", out)
    assert m, out
    return int(m[1], 16)
