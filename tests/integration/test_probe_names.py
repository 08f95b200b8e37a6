"""Probe names resolve to the addresses binutils gives them: C++ functions by the names people
write (``ns::Class::method``, with or without the parameter list, globs), not only by linkage
name; binutils' ``nm -C`` (demangling) is the oracle."""
from __future__ import annotations

import fnmatch
import subprocess
from typing import Any

import pytest

from ubt.errors import UbtError
from ubt.probes import resolve_probes
from ubt.probespec import parse_probe


def nm_functions(prog: str) -> dict[str, int]:
    """Demangled name (with parameters) → address, for the defined code symbols of `prog`."""
    out = subprocess.run(["nm", "-C", "--defined-only", prog], capture_output=True, text=True,
                         check=True).stdout
    funcs: dict[str, int] = {}
    for line in out.splitlines():
        addr, kind, name = line.split(" ", 2)
        if kind in "tTwW" and "[clone" not in name:
            # nm prints a template function's return type first: gdb (and ubt) do not
            head, paren, rest = name.partition("(")
            if " " in head.replace(", ", ",") and ">" in head:
                head = head.split(" ", 1)[1]
            funcs[head + paren + rest] = int(addr, 16)
    return funcs


@pytest.mark.parametrize("variant", ["O2-nofp", "O0"])
def test_cxx_names_resolve_like_nm(variant: str, fixture_build: Any) -> None:
    prog = str(fixture_build.program_path("cxx", variant))
    funcs = {n: a for n, a in nm_functions(prog).items() if n.startswith("fx::")}
    assert len(funcs) >= 3, funcs
    for full, addr in funcs.items():
        short = full[:full.index("(")]
        for spelling in (full, short):
            points = resolve_probes(prog, [parse_probe(spelling)])
            assert [(p.elf_addr, p.label) for p in points] == [(addr, spelling)], spelling
    workers = sorted(a for n, a in funcs.items() if fnmatch.fnmatchcase(n, "fx::Worker::*"))
    points = resolve_probes(prog, [parse_probe("fx::Worker::*")])
    assert sorted(p.elf_addr for p in points) == workers
    assert all(p.label.startswith("fx::Worker::") for p in points)


def test_unknown_cxx_name_suggests_cxx_names(fixture_build: Any) -> None:
    prog = str(fixture_build.program_path("cxx", "O2-nofp"))
    with pytest.raises(UbtError, match=r"nearest: .*fx::Worker::run"):
        resolve_probes(prog, [parse_probe("fx::Worker::runn")])


CXX_SOURCE = r"""
#include <string>
struct Vec { int x; __attribute__((noinline)) int operator*() const; };
int Vec::operator*() const { return x * 2; }
__attribute__((noinline)) std::string name_of(int n) { return std::string(n, 'x'); }
int main(int argc, char **) { Vec v{argc}; return *v + (int)name_of(argc).size(); }
"""


def test_cxx_names_with_glob_characters_and_abi_tags(tmp_path: Any) -> None:
    """``Vec::operator*`` is a name, not a glob; ``name_of`` (``name_of[abi:cxx11](int)``,
    a function returning std::string) is found without its ABI tag, as gdb finds it."""
    src, prog = tmp_path / "names.cpp", str(tmp_path / "names")
    src.write_text(CXX_SOURCE)
    subprocess.run(["g++", "-O2", "-fomit-frame-pointer", "-o", prog, str(src)], check=True)
    funcs = nm_functions(prog)
    want = {"Vec::operator*": funcs["Vec::operator*() const"],
            "name_of": funcs["name_of[abi:cxx11](int)"],
            "name_of[abi:cxx11](int)": funcs["name_of[abi:cxx11](int)"]}
    for spelling, addr in want.items():
        points = resolve_probes(prog, [parse_probe(spelling)])
        assert [p.elf_addr for p in points] == [addr], spelling
