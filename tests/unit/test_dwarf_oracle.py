"""DwarfIndex against eu-addr2line (and llvm-symbolizer where the two oracles disagree).

Every byte of `.text` of each fixture binary, and 2,000 random addresses of libc's `.text`, are
fed to ``eu-addr2line -a -f -i`` in one run (without ``-C``: the index hands out linkage names, as
eu-addr2line prints them; the facade demangles). The index must give the same inline chain —
function names, file, line, column — for every address, except where eu-addr2line is known to
differ from llvm-symbolizer and gdb; those addresses must then match llvm-symbolizer exactly:

- addresses in padding after a function's end: eu-addr2line still reports the scopes before it;
- assembler units with alias subprograms sharing one range (``__memmove_ssse3`` /
  ``__memcpy_ssse3``): eu-addr2line prints the ELF symbol, not a DWARF name;
- a few nested inlined instances (libstdc++ string constructors) that libdw drops from the
  chain.

Where the index has no subprogram for an address, eu-addr2line prints the ELF symbol name: only
the location is compared there (the facade adds symbol names).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from symbolizer.dwarf_index import DwarfIndex
from tests.oracle.elfutils import Chain, OracleFrame, build_id, parse_eu_addr2line

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
VARIANTS = ("O0", "O2-nofp", "dwarf4", "dwarf5", "dwz", "gz", "nopie", "stripped", "debugframe")
PROGRAMS = ("chain", "cxx", "threads", "libchain.so")


def _text_range(path: str) -> tuple[int, int]:
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        return int(text["sh_addr"]), int(text["sh_size"])


def _eu(elf: str, addresses: Sequence[int]) -> list[Chain]:
    proc = subprocess.run(["eu-addr2line", "-a", "-f", "-i", "-e", elf],
                          input="".join(f"{a:#x}\n" for a in addresses),
                          capture_output=True, text=True, timeout=600, check=True)
    chains = parse_eu_addr2line(proc.stdout)
    assert len(chains) == len(addresses)
    return chains


def _llvm(elf: str, addresses: Sequence[int]) -> list[Chain]:
    tool = shutil.which("llvm-symbolizer") or shutil.which("llvm-symbolizer-14")
    if tool is None:
        pytest.skip("llvm-symbolizer is not installed")
    proc = subprocess.run([tool, f"--obj={elf}", "--output-style=JSON", "--inlining",
                           "--no-demangle"],
                          input="".join(f"{a:#x}\n" for a in addresses),
                          capture_output=True, text=True, timeout=600, check=True)
    chains = []
    for line in proc.stdout.splitlines():
        if line.strip():
            doc: dict[str, Any] = json.loads(line)
            chains.append(tuple(
                OracleFrame(s.get("FunctionName") or None, s.get("FileName") or None,
                            s.get("Line") or None, s.get("Column") or None)
                for s in doc.get("Symbol", []) if s.get("FileName") or s.get("FunctionName")))
    assert len(chains) == len(addresses)
    return chains


def _ours(index: DwarfIndex, addr: int) -> Chain:
    return tuple(OracleFrame(f.function, f.file, f.line or None, f.column or None)
                 for f in index.lookup(addr))


def _same(ours: Chain, oracle: Chain) -> bool:
    """Equal chains, with the outermost name free where ours has none (the oracle falls back
    to the ELF symbol table there, or, for llvm-symbolizer, may prefer the symbol's name)."""
    if not ours:
        return all(f.file is None for f in oracle)
    if len(ours) != len(oracle):
        return False
    *inner, last = ours
    *oracle_inner, oracle_last = oracle
    return inner == oracle_inner and (last.file, last.line, last.column) == \
        (oracle_last.file, oracle_last.line, oracle_last.column) and \
        (last.function is None or last.function == oracle_last.function)


def _compare(elf: str, index: DwarfIndex, addresses: Sequence[int]) -> tuple[int, list[str]]:
    """(addresses where eu-addr2line differs but llvm-symbolizer agrees, real mismatches)."""
    ours = [_ours(index, a) for a in addresses]
    eu = _eu(elf, addresses)
    differ = [i for i, (o, e) in enumerate(zip(ours, eu)) if not _same(o, e)
              and not (len(o) == 1 and o[0].function is None and len(e) == 1
                       and (o[0].file, o[0].line, o[0].column) ==
                       (e[0].file, e[0].line, e[0].column))]
    if not differ:
        return 0, []
    llvm = _llvm(elf, [addresses[i] for i in differ])
    bad = [f"{addresses[i]:#x}: ours {ours[i]} eu {eu[i]} llvm {ll}"
           for i, ll in zip(differ, llvm) if not _same(ours[i], ll)]
    return len(differ) - len(bad), bad


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("program", PROGRAMS)
def test_fixture_matches_oracles(fixture_build: Any, tmp_path: Path, variant: str,
                                 program: str) -> None:
    name = program if program.endswith(".so") else fixture_build.program_name(program, variant)
    elf = str(fixture_build.variant_dir(variant) / name)
    debug = elf + ".debug" if variant == "stripped" else elf
    alt = str(fixture_build.variant_dir(variant) / fixture_build.COMMON_DEBUG) \
        if variant == "dwz" else None
    index = DwarfIndex.load_or_build(debug, alt, None, str(tmp_path))
    start, size = _text_range(elf)
    quirks, bad = _compare(elf, index, range(start, start + size))
    assert not bad, "\n".join(bad[:20])
    assert quirks <= size // 100


def test_libc_sample_matches_oracles(tmp_path: Path) -> None:
    bid = build_id(LIBC) if os.path.exists(LIBC) else None
    debug = f"/usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug" if bid else ""
    if not os.path.exists(debug):
        pytest.skip("libc6-dbg is not installed")
    start, size = _text_range(LIBC)
    rng = random.Random(20261122)
    addresses = sorted(rng.randrange(start, start + size) for _ in range(2000))
    index = DwarfIndex.load_or_build(debug, None, bid, str(tmp_path))
    quirks, bad = _compare(LIBC, index, addresses)
    assert not bad, "\n".join(bad[:20])
    assert quirks <= len(addresses) // 200      # measured: ~0.15 % of random addresses
