"""symbolizer.symbolizer.Symbolizer: DWARF frames, symbol-table fallback, failure reasons.

The DWARF index is replaced by a stub here (its own tests live with it); the last tests use the
real `DwarfIndex` when it is importable.
"""
from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from symbolizer.dwarf_sections import DwarfError
from symbolizer.elf import ElfImage
from symbolizer.frames import SourceFrame, SymbolReason, SymFrame
from symbolizer.locate import DebugInfoLocator
from symbolizer.module import Module
from symbolizer.symbolizer import AddressIndex, Symbolizer

from .test_symbolizer_elf import BUILD, LIBC, LIBC_DEBUG, _need, nm_code_symbols

STRIPPED = BUILD / "stripped" / "chain-stripped"
O2 = BUILD / "O2-nofp" / "chain-O2-nofp"


def _module(path: str | Path) -> Module:
    path = str(path)
    return Module(path, path, ElfImage(path).build_id, 0, 0, 1 << 64)


class StubIndex:
    def __init__(self, answers: dict[int, tuple[SourceFrame, ...]],
                 broken: frozenset[int] = frozenset()) -> None:
        self.answers = answers
        self.broken = broken

    def lookup(self, elf_addr: int) -> tuple[SourceFrame, ...]:
        if elf_addr in self.broken:
            raise DwarfError("bad DIE")
        return self.answers.get(elf_addr, ())


def _loader(index: AddressIndex, calls: list[tuple[object, ...]] | None = None
            ) -> Callable[[str, str | None, str | None, str], AddressIndex]:
    def load(debug: str, alt: str | None, build_id: str | None, cache: str) -> AddressIndex:
        if calls is not None:
            calls.append((debug, alt, build_id, cache))
        return index
    return load


def _no_local_debug(tmp_path: Path) -> DebugInfoLocator:
    return DebugInfoLocator(debug_roots=(str(tmp_path / "no-debug"),))


def _start(path: str | Path, name: str, dynamic: bool = False) -> tuple[int, int]:
    return next((s, size) for s, (size, names) in nm_code_symbols(path, dynamic).items()
                if name in names)


def test_symbol_table_only(tmp_path: Path) -> None:
    _need(LIBC)
    sym = Symbolizer(str(tmp_path), locator=_no_local_debug(tmp_path))
    start, size = _start(LIBC, "malloc", dynamic=True)
    [frame] = sym.symbolize(_module(LIBC), start + 5)
    assert frame == SymFrame("malloc", 5, size, None, None, None, False,
                             SymbolReason.NO_DEBUG_INFO)
    assert sym.debug_files(_module(LIBC)).debug_path is None


def test_no_symbol_and_unreadable(tmp_path: Path) -> None:
    _need(LIBC)
    sym = Symbolizer(str(tmp_path), locator=_no_local_debug(tmp_path))
    [frame] = sym.symbolize(_module(LIBC), 0x10)
    assert frame.function is None and frame.reason is SymbolReason.NO_SYMBOL
    gone = Module("/gone", str(tmp_path / "gone"), None, 0, 0, 1 << 64)
    assert sym.symbolize(gone, 0x1000) == (
        SymFrame(None, None, None, None, None, None, False, SymbolReason.UNREADABLE_FILE),)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + bytes(100))
    [frame] = sym.symbolize(Module("/junk", str(junk), None, 0, 0, 1 << 64), 0x10)
    assert frame.reason is SymbolReason.UNREADABLE_FILE


def test_dwarf_frames_demangled_with_offsets(tmp_path: Path) -> None:
    _need(O2)
    start, size = _start(O2, "fx_with_inline")
    addr = start + 7
    index = StubIndex({addr: (
        SourceFrame("_ZN2fx7inlinedEi", None, None, "/src/chain.c", 47, 9, True),
        SourceFrame("fx_with_inline", start, size, "/src/chain.c", 55, 13, False))})
    calls: list[tuple[object, ...]] = []
    sym = Symbolizer(str(tmp_path), index_loader=_loader(index, calls))
    module = _module(O2)
    assert sym.symbolize(module, addr) == (
        SymFrame("fx::inlined(int)", None, None, "/src/chain.c", 47, 9, True, None),
        SymFrame("fx_with_inline", 7, size, "/src/chain.c", 55, 13, False, None))
    sym.symbolize(module, addr + 1)
    assert calls == [(str(O2), None, ElfImage(str(O2)).build_id, str(tmp_path))]


def test_gaps_in_dwarf_are_filled_from_symbols(tmp_path: Path) -> None:
    _need(O2)
    start, size = _start(O2, "fx_leaf")
    index = StubIndex({
        start + 1: (SourceFrame(None, None, None, "/src/chain.c", 25, 0, False),),
        start + 2: (SourceFrame("fx_leaf", None, None, "/src/chain.c", 26, 0, False),),
    })
    sym = Symbolizer(str(tmp_path), index_loader=_loader(index))
    module = _module(O2)
    # no function DIE: the symbol names it, DWARF still gives the line
    assert sym.symbolize(module, start + 1) == (
        SymFrame("fx_leaf", 1, size, "/src/chain.c", 25, 0, False, None),)
    # DWARF's entry unknown: the symbol's entry and size
    assert sym.symbolize(module, start + 2) == (
        SymFrame("fx_leaf", 2, size, "/src/chain.c", 26, 0, False, None),)
    # DWARF does not cover the address at all (where addr2line prints ??)
    assert sym.symbolize(module, start + 3) == (
        SymFrame("fx_leaf", 3, size, None, None, None, False, SymbolReason.NO_DEBUG_INFO),)


def test_corrupt_dwarf(tmp_path: Path) -> None:
    _need(O2)
    start, size = _start(O2, "fx_leaf")
    calls: list[tuple[object, ...]] = []

    def failing(debug: str, alt: str | None, bid: str | None, cache: str) -> AddressIndex:
        calls.append((debug,))
        raise DwarfError(f"{debug}: bad abbrev")

    sym = Symbolizer(str(tmp_path), index_loader=failing)
    module = _module(O2)
    for k in range(3):
        assert sym.symbolize(module, start + k) == (
            SymFrame("fx_leaf", k, size, None, None, None, False,
                     SymbolReason.CORRUPT_DEBUG_INFO),)
    assert len(calls) == 1  # a broken index is not rebuilt for every address
    [frame] = sym.symbolize(module, 0x10)
    assert frame.function is None and frame.reason is SymbolReason.CORRUPT_DEBUG_INFO
    # one bad address in a good index costs that address only
    good = Symbolizer(str(tmp_path), index_loader=_loader(StubIndex({}, frozenset({start}))))
    assert good.symbolize(module, start)[0].reason is SymbolReason.CORRUPT_DEBUG_INFO
    assert good.symbolize(module, start + 1)[0].reason is SymbolReason.NO_DEBUG_INFO


def test_stripped_binary_uses_debuglink_file(tmp_path: Path) -> None:
    _need(STRIPPED)
    calls: list[tuple[object, ...]] = []
    sym = Symbolizer(str(tmp_path), locator=_no_local_debug(tmp_path),
                     index_loader=_loader(StubIndex({}), calls))
    module = _module(STRIPPED)
    start, size = _start(str(STRIPPED) + ".debug", "fx_leaf")
    [frame] = sym.symbolize(module, start + 4)
    assert (frame.function, frame.func_offset, frame.func_size) == ("fx_leaf", 4, size)
    assert calls and calls[0][0] == str(STRIPPED) + ".debug"


def test_libc_symbol_table_speed_and_agreement(tmp_path: Path) -> None:
    _need(LIBC, LIBC_DEBUG)
    sym = Symbolizer(str(tmp_path), index_loader=_loader(StubIndex({})))
    module = _module(LIBC)
    nm = nm_code_symbols(LIBC_DEBUG)
    rng = random.Random(5)
    picks = rng.sample(sorted(s for s in nm if nm[s][0]), 300)
    for start in picks:
        [frame] = sym.symbolize(module, start)
        assert frame.function in nm[start][1] and frame.func_offset == 0


def test_real_index_names_what_eu_addr2line_cannot(tmp_path: Path) -> None:
    _need(LIBC, LIBC_DEBUG)
    sym = Symbolizer(str(tmp_path))
    module = _module(LIBC)
    nm = nm_code_symbols(LIBC_DEBUG)
    starts = sorted(s for s in nm if nm[s][0])[::25]
    out = subprocess.run(["eu-addr2line", "-f", "-e", LIBC],
                         input="".join(f"{s:#x}\n" for s in starts), capture_output=True,
                         text=True, check=True).stdout.splitlines()[0::2]
    for start, eu in zip(starts, out):
        frames = sym.symbolize(module, start)
        assert frames[-1].function is not None, hex(start)
        if eu == "??":
            assert frames[-1].function in nm[start][1]
