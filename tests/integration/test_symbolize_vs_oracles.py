"""`ubt symbolize -e ELF --format json` against eu-addr2line and llvm-symbolizer.

Method
------
The same addresses go, in one run each (stdin), to ``eu-addr2line -a -f -i -C -e ELF``,
``llvm-symbolizer --obj=ELF --output-style=JSON`` and ``ubt symbolize -e ELF --format json``.
For each address the answer is the inline chain, innermost first, of (function, file, line);
columns are not compared. Each address lands in exactly one class:

- ``eu``: ubt == eu-addr2line (the reference: ubt's contract is eu-addr2line's output).
  Sub-counted: ``eu, llvm disagrees`` when llvm-symbolizer says something else (e.g. llvm takes the
  outer function's name from the symbol table: ``__read`` where DWARF's linkage name is
  ``__GI___libc_read``; it prints ``??`` for code without DWARF that eu names from ``.symtab``).
- ``llvm (oracles disagree)``: ubt == llvm-symbolizer, which disagrees with eu-addr2line.
- ``mixed (oracles disagree)``: the oracles disagree and ubt takes, field by field, one of their
  answers (chains of equal length), or the inline chain of one and the outer function's name of
  the other (e.g. at libc 0x831ab eu-addr2line reports ``__GI__IO_default_xsputn`` inlined into
  itself twice, llvm-symbolizer and gdb one frame named ``_IO_default_xsputn`` /
  ``__GI__IO_default_xsputn``).
- ``+ C++ template return type omitted``: the oracles demangle ``int fx::dispatch<fx::Worker>(
  fx::Worker&, int)`` with the template function's return type; ubt may print gdb's form
  ``fx::dispatch<fx::Worker>(fx::Worker&, int)`` (the stack tests hold ubt to gdb's names).
- ``symbol fallback``: an oracle prints ``??`` for the containing function, a sized symbol
  (``.symtab``/``.dynsym`` of the file or its debug file) covers the address, and ubt names one of
  the covering symbols; the rest of the chain is compared as above.
- ``UNEXPLAINED``: anything else, and any address where ubt names no function although a sized
  symbol covers it (whatever the oracles say). The test asserts there are none.

The class counts are printed (``pytest -s``) and attached to the failure message.
"""
from __future__ import annotations

import collections
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration import VARIANTS
from tests.oracle import elfutils
from tests.oracle.elfutils import (Chain, OracleFrame, SymbolOracle, debug_files,
                                   is_return_type_prefix)

pytestmark = [pytest.mark.integration]

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
N_LIBC_ADDRESSES = 20_000
SEED = 0x5EED_0B7
MAX_EXAMPLES = 25


# ---- ELF helpers ------------------------------------------------------------------------------

def exec_segments(path: str) -> list[tuple[int, int]]:
    """[start, end) of each executable PT_LOAD."""
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return [(s["p_vaddr"], s["p_vaddr"] + s["p_memsz"]) for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1]


def section_range(path: str, name: str) -> tuple[int, int] | None:
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        return None if sec is None else (sec["sh_addr"], sec["sh_addr"] + sec["sh_size"])


# ---- running ubt ----------------------------------------------------------------------------------

def ubt_symbolize(ubt: Any, elf: str, addresses: Sequence[int]) -> list[Chain]:
    proc = ubt.run("symbolize", "-e", elf, "--format", "json",
                   input="".join(f"{a:#x}\n" for a in addresses))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, \
        f"ubt symbolize -e {elf} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    chains: list[Chain] = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        assert doc["address"] == addresses[len(chains)], f"answers out of order at {line}"
        chains.append(tuple(OracleFrame(f.get("function"), f.get("file"), f.get("line") or None,
                                        f.get("column") or None) for f in doc["frames"]))
    assert len(chains) == len(addresses), f"ubt answered {len(chains)} of {len(addresses)}"
    return chains


# ---- classification ---------------------------------------------------------------------------

def _key(f: OracleFrame) -> tuple[str | None, str | None, int | None]:
    return (f.function, f.file, f.line)


def same(a: Chain, b: Chain) -> bool:
    return len(a) == len(b) and all(_key(x) == _key(y) for x, y in zip(a, b))


def _names_ok(u: OracleFrame, o: OracleFrame, outermost: bool, cover: set[str]) -> str | None:
    """How ubt's function is acceptable against oracle frame `o`: 'exact'; 'symbol' (the oracle
    has ??, ubt names a sized symbol covering the address); 'rettype' (the oracle's demangled
    template function carries its return type, ubt prints gdb's form without it); else None."""
    if u.function == o.function:
        return "exact"
    if o.function is None and outermost and cover and u.function in cover:
        return "symbol"
    if is_return_type_prefix(o.function, u.function):
        return "rettype"
    return None


def match_with_fallback(u: Chain, o: Chain, cover: set[str]) -> set[str] | None:
    """The set of ways (see `_names_ok`) ubt's chain equals oracle chain `o`, or None."""
    if len(u) != len(o):
        return None
    hows = set()
    for i, (uf, of) in enumerate(zip(u, o)):
        if (uf.file, uf.line) != (of.file, of.line):
            return None
        named = _names_ok(uf, of, i == len(u) - 1, cover)
        if named is None:
            return None
        hows.add(named)
    return hows


def mixed_match(u: Chain, e: Chain, ll: Chain, cover: set[str]) -> bool:
    """ubt takes each field from one of the two (disagreeing) oracles. With chains of equal
    length, field by field; otherwise ubt has the inline chain (length, files, lines, inlined
    names) of one oracle and the outermost function's name from either (the oracles name the
    containing function differently: DWARF linkage name vs symbol table)."""
    if len(u) == len(e) == len(ll):
        for i, (uf, ef, lf) in enumerate(zip(u, e, ll)):
            outer = i == len(u) - 1
            if not (_names_ok(uf, ef, outer, cover) or _names_ok(uf, lf, outer, cover)):
                return False
            if (uf.file, uf.line) not in ((ef.file, ef.line), (lf.file, lf.line)):
                return False
        return True
    for shape, other in ((e, ll), (ll, e)):
        if len(u) != len(shape) or not u or not other:
            continue
        head_ok = all(_names_ok(uf, of, False, cover) and (uf.file, uf.line) == (of.file, of.line)
                      for uf, of in zip(u[:-1], shape[:-1]))
        last_u, last_s, last_o = u[-1], shape[-1], other[-1]
        if head_ok and (last_u.file, last_u.line) == (last_s.file, last_s.line) and (
                _names_ok(last_u, last_s, True, cover) or _names_ok(last_u, last_o, True, cover)):
            return True
    return False


@dataclass
class Outcome:
    counts: collections.Counter[str]
    examples: dict[str, list[str]]
    eu_with_source: int = 0  # addresses eu-addr2line placed in a file (DWARF was exercised)

    def summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))

    def unexplained(self) -> list[str]:
        return self.examples.get("UNEXPLAINED", [])


def fmt_chain(c: Chain) -> str:
    return " <- ".join(f"{f.function or '??'}@{f.file or '??'}:{f.line or 0}" for f in c) or "-"


def classify(addresses: Sequence[int], ubt: list[Chain], eu: list[Chain], llvm: list[Chain],
             symbols: SymbolOracle) -> Outcome:
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    for addr, u, e, ll in zip(addresses, ubt, eu, llvm):
        oracles_agree = same(e, ll)
        ubt_unnamed = not u or u[-1].function is None
        needs_cover = ubt_unnamed or any(f.function is None for f in (e[-1:] + ll[-1:]))
        cover = symbols.covering(addr) if needs_cover else set()
        if ubt_unnamed and cover:
            cls = "UNEXPLAINED"  # ubt prints ?? though a sized symbol covers the address
            counts[cls] += 1
            if len(examples[cls]) < MAX_EXAMPLES:
                examples[cls].append(f"{addr:#x}: ubt has no function name, but symbols "
                                     f"{sorted(cover)} cover it\n    ubt  {fmt_chain(u)}")
            continue
        by_eu = match_with_fallback(u, e, cover)
        by_llvm = None if by_eu else match_with_fallback(u, ll, cover)
        if by_eu is not None or by_llvm is not None:
            hows = by_eu if by_eu is not None else by_llvm
            assert hows is not None
            if by_eu is not None:
                cls = "eu" if oracles_agree else "eu, llvm disagrees"
                if not oracles_agree and ll and ll[-1].function is None and e and e[-1].function:
                    cls = "eu, llvm ?? (symbol table name)"
            else:
                cls = "llvm (oracles disagree)"
            if "symbol" in hows:
                cls = "symbol fallback (oracle ??, ubt names a covering symbol)"
            if "rettype" in hows:
                cls += " + C++ template return type omitted (gdb's form)"
        elif not oracles_agree and mixed_match(u, e, ll, cover):
            cls = "mixed (oracles disagree)"
        else:
            cls = "UNEXPLAINED"
        counts[cls] += 1
        if len(examples[cls]) < MAX_EXAMPLES:
            examples[cls].append(f"{addr:#x}\n    ubt  {fmt_chain(u)}\n    eu   {fmt_chain(e)}"
                                 f"\n    llvm {fmt_chain(ll)}"
                                 + (f"\n    symbols {sorted(cover)}" if cover else ""))
    return Outcome(counts, examples, sum(1 for e in eu if e and e[0].file))


def run_all(ubt: Any, elf: str, addresses: list[int]) -> Outcome:
    if elfutils.llvm_symbolizer_path() is None:
        pytest.skip("llvm-symbolizer is not installed")
    eu = elfutils.eu_addr2line(elf, addresses)
    ll = elfutils.llvm_symbolizer(elf, addresses)
    us = ubt_symbolize(ubt, elf, addresses)
    outcome = classify(addresses, us, eu, ll, SymbolOracle(debug_files(elf)))
    print(f"\n{elf}: {len(addresses)} addresses: {outcome.summary()}")
    return outcome


def assert_explained(elf: str, outcome: Outcome) -> None:
    bad = outcome.unexplained()
    assert not bad, (f"{outcome.counts['UNEXPLAINED']} unexplained mismatches for {elf} "
                     f"({outcome.summary()}); first ones:\n" + "\n".join(bad))


# ---- tests ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_libc_random_addresses_match_oracles(ubt: Any) -> None:
    if not os.path.exists(LIBC):
        pytest.skip(f"{LIBC} is not installed")
    rng = random.Random(SEED)
    segments = exec_segments(LIBC)
    text = section_range(LIBC, ".text")
    assert segments and text
    total = sum(hi - lo for lo, hi in segments)
    addresses = []
    for _ in range(N_LIBC_ADDRESSES):
        off = rng.randrange(total)
        for lo, hi in segments:
            if off < hi - lo:
                addresses.append(lo + off)
                break
            off -= hi - lo
    outcome = run_all(ubt, LIBC, addresses)
    assert_explained(LIBC, outcome)
    # The run exercised DWARF (libc6-dbg), not only symbol tables.
    assert outcome.eu_with_source > N_LIBC_ADDRESSES // 2, "is libc6-dbg installed?"


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_text_matches_oracles(variant: str, fixture_build: Any, ubt: Any) -> None:
    """Every 3rd byte of .text of each fixture file (programs and libchain.so) of a variant:
    DWARF 4/5, compressed sections, .debug_frame-only, debuglink, dwz alt files."""
    vdir = fixture_build.variant_dir(variant)
    files = [fixture_build.program_path(p, variant) for p in fixture_build.PROGRAMS]
    files.append(vdir / fixture_build.LIBRARY)
    failures = []
    for path in files:
        text = section_range(str(path), ".text")
        assert text, f"{path}: no .text"
        addresses = list(range(text[0], text[1], 3))
        outcome = run_all(ubt, str(path), addresses)
        assert outcome.eu_with_source > len(addresses) // 4, f"{path}: eu-addr2line found no DWARF"
        if outcome.unexplained():
            failures.append(f"{path.name}: {outcome.counts['UNEXPLAINED']} unexplained "
                            f"({outcome.summary()}):\n" + "\n".join(outcome.unexplained()[:10]))
    assert not failures, "\n\n".join(failures)
