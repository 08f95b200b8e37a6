"""`ubt list` against `perf probe -L FUNC` (the probe-able lines) and `perf probe -V FUNC:N`
(the variables available at each): fixture functions (optimized: inlining, lexical blocks,
parameters moving between registers and the stack; DWARF 5 and 4, i.e. `.debug_loclists` and
`.debug_loc`; a separate debug file) and a few libc functions (libc6-dbg).

Lines must be equal. Variables must be equal up to the counted rules of
`tests.oracle.listing_compare`; each test prints the rules it applied.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from typing import Any

import pytest

from symbolizer.elf import ElfImage
from symbolizer.listing import Lister
from symbolizer.locate import DebugInfoLocator
from tests.oracle.listing_compare import compare_vars
from tests.oracle.perf_probe import elf_symbols, has_cfi, perf_lines, perf_vars

pytestmark = [pytest.mark.integration]

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
FIXTURE_FUNCTIONS = {
    "vars": ("fx_walk", "fx_buffers", "fx_scaled", "fx_consume", "main"),
    "chain": ("fx_recurse", "fx_with_inline", "fx_inlined", "fx_vla", "fx_big_frame"),
}
LIBC_FUNCTIONS = ("getenv", "opendir", "qsort_r", "strtok_r")


@pytest.fixture(scope="module", autouse=True)
def _perf() -> None:
    if shutil.which("perf") is None:
        pytest.fail("perf is missing (package linux-perf): run `make bootstrap`")


def _lister(path: str) -> tuple[Lister, str]:
    image = ElfImage(path)
    files = DebugInfoLocator().find(image)
    assert files.debug_path, f"{path}: no debug info"
    return Lister(files.debug_path, files.alt_path, image.build_id), files.debug_path


def check_function(path: str, function: str, applied: Counter[str]) -> list[str]:
    """All differences between ubt and perf for one function (empty when they agree)."""
    lister, debug_path = _lister(path)
    addrs = [a for n, a in elf_symbols(path, debug_path).items() if n == function]
    points = lister.statements(function, addrs)
    assert points, f"{function}: ubt lists no line"
    entry = lister.functions(function, addrs)[0].entry
    oracle = perf_lines(path, function, os.path.basename(points[0].file))
    problems = []
    ours = {p.line for p in points}
    if ours != set(oracle.relative):
        problems.append(f"{function}: lines ubt-only {sorted(ours - set(oracle.relative))}, "
                        f"perf-only {sorted(set(oracle.relative) - ours)}")
    symbols = elf_symbols(path, debug_path)
    cfi = has_cfi(debug_path)
    for point in points:
        if point.line not in oracle.relative:
            continue
        perf = perf_vars(path, function, oracle.relative[point.line], symbols)
        if perf.refused:
            applied["perf-refused"] += 1
            continue
        block = perf.by_address.get(point.address)
        if block is None:
            problems.append(f"{function}:{point.line}: perf has no block at "
                            f"{point.address:#x} ({sorted(map(hex, perf.by_address))})")
            continue
        frame_base = point.frame_base.at(point.address) if point.frame_base else None
        problems += [f"{function}:{point.line}: {p}" for p in compare_vars(
            point.variables, point.address, block, frame_base, cfi, entry,
            {v.name for v in point.unavailable}, applied)]
    return problems


# (not "stripped": perf does not follow .gnu_debuglink to a debug file next to the binary)
@pytest.mark.parametrize("variant", ["O2-nofp", "dwarf4", "dwz"])
@pytest.mark.parametrize("program", sorted(FIXTURE_FUNCTIONS))
def test_fixture_functions_match_perf(fixture_build: Any, program: str, variant: str) -> None:
    path = str(fixture_build.program_path(program, variant))
    applied: Counter[str] = Counter()
    problems = [p for f in FIXTURE_FUNCTIONS[program] for p in check_function(path, f, applied)]
    print(f"{program}-{variant}: rules applied {dict(applied)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("function", LIBC_FUNCTIONS)
def test_libc_functions_match_perf(function: str) -> None:
    applied: Counter[str] = Counter()
    problems = check_function(LIBC, function, applied)
    print(f"libc {function}: rules applied {dict(applied)}")
    assert not problems, "\n".join(problems)


def test_cli_json_is_the_listing(fixture_build: Any, ubt: Any,
                                 line_markers: dict[str, tuple[str, int]]) -> None:
    """The CLI prints what the library lists (JSON fields, stap-style text, the cache)."""
    path = str(fixture_build.program_path("vars", "O2-nofp"))
    lister, _ = _lister(path)
    want = [(p.line, p.address, [(v.name, v.type_name) for v in p.variables])
            for p in lister.statements("fx_walk")]
    for attempt in ("cold", "warm"):
        proc = ubt.run("list", path, "fx_walk@vars.c:*", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        got = [json.loads(line) for line in out.splitlines()]
        assert [(g["line"], g["address"], [(v["name"], v["type"]) for v in g["vars"]])
                for g in got] == want, attempt
        assert all(g["function"] == "fx_walk" and g["file"].endswith("/vars.c") for g in got)
    line = line_markers["walk_shadow"][1]
    text = ubt.run("list", f'process("{path}").statement("fx_walk@vars.c:{line}")').stdout
    assert text.startswith(f'process("{path}").statement("fx_walk@')
    assert text.rstrip().endswith("$head:struct fx_record* const")
