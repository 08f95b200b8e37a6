"""ELF symbol tables as sorted arrays: the fallback names for addresses without DWARF.

`.symtab` and `.dynsym` are decoded straight from their raw bytes (pyelftools' per-symbol objects
are too slow for libc-sized tables) into parallel arrays sorted by address, so a lookup is one
bisect. Tables are keyed by ELF address and shared by every process mapping the same file.
"""
from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC = 0, 2, 10
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
_CODE_TYPES = frozenset((STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC))
_BIND_RANK = {STB_GLOBAL: 0, STB_WEAK: 1, STB_LOCAL: 2}


@dataclass(frozen=True, slots=True)
class ElfSymbol:
    """A named code range: `addr` is its ELF address, `size` its length (0 when unknown)."""

    name: str
    addr: int
    size: int


@dataclass(frozen=True, slots=True)
class RawSymbol:
    """One code symbol as read from a table, before aliases are resolved.

    :param limit: end of the section holding it, so a size-0 symbol never reaches past it.
    """

    name: str
    addr: int
    size: int
    bind: int
    type: int
    limit: int

    @property
    def rank(self) -> tuple[int, int, int]:
        """Lower is preferred among symbols at one address: FUNC, then sized, then GLOBAL."""
        is_func = self.type in (STT_FUNC, STT_GNU_IFUNC)
        return (0 if is_func else 1, 0 if self.size else 1, _BIND_RANK.get(self.bind, 3))


@dataclass(frozen=True, slots=True)
class CodeSection:
    """An executable section's address range, indexed by its section number."""

    index: int
    addr: int
    size: int


def decode_symbols(data: bytes, strtab: bytes, is64: bool, little: bool,
                   sections: Sequence[CodeSection]) -> list[RawSymbol]:
    """The code symbols of one raw symbol table section.

    Only FUNC, IFUNC and NOTYPE symbols defined in an executable section are kept; that drops
    data objects, section and file symbols, and compiler-local `.L` labels. A `.symver` alias
    (``nftw@GLIBC_2.2.5``) is named without its version, as `nm -D` shows dynamic symbols.
    """
    by_index = {s.index: s for s in sections}
    order = "<" if little else ">"
    if is64:
        fmt, size = order + "IBBHQQ", 24
    else:
        fmt, size = order + "IIIBBH", 16
    usable = len(data) - len(data) % size
    out: list[RawSymbol] = []
    for fields in struct.iter_unpack(fmt, memoryview(data)[:usable]):
        if is64:
            name_off, info, _other, shndx, value, sym_size = fields
        else:
            name_off, value, sym_size, info, _other, shndx = fields
        sym_type, bind = info & 0xF, info >> 4
        section = by_index.get(shndx)
        if sym_type not in _CODE_TYPES or section is None or shndx == SHN_UNDEF \
                or shndx >= SHN_LORESERVE:
            continue
        name = _cstring(strtab, name_off).partition("@")[0]
        if not name or name.startswith(".L"):
            continue
        out.append(RawSymbol(name, value, sym_size, bind, sym_type, section.addr + section.size))
    return out


def _cstring(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")


class SymbolTable:
    """Code symbols sorted by address; `lookup` finds the one covering an ELF address.

    Several symbols at one address (aliases such as ``read``/``__read``/``__libc_read``) collapse
    to the preferred one (`RawSymbol.rank`). A size-0 symbol covers up to the next symbol or the
    end of its section.
    """

    #: How many preceding symbols `lookup` inspects for one whose range encloses a nested one.
    _NESTING_DEPTH = 4

    def __init__(self, symbols: Iterable[RawSymbol]) -> None:
        best: dict[int, RawSymbol] = {}
        for sym in symbols:
            have = best.get(sym.addr)
            if have is None or sym.rank < have.rank:
                best[sym.addr] = sym
        chosen = sorted(best.values(), key=lambda s: s.addr)
        self._starts = array("Q", (s.addr for s in chosen))
        self._ends = array("Q")
        self._sizes = array("Q", (s.size for s in chosen))
        self._names = [s.name for s in chosen]
        for i, sym in enumerate(chosen):
            if sym.size:
                self._ends.append(sym.addr + sym.size)
            else:
                following = chosen[i + 1].addr if i + 1 < len(chosen) else sym.limit
                self._ends.append(max(sym.addr, min(following, sym.limit)))

    @classmethod
    def merge(cls, tables: Iterable[SymbolTable]) -> SymbolTable:
        """One table holding the symbols of all `tables` (e.g. .dynsym plus MiniDebugInfo)."""
        parts = list(tables)
        if len(parts) == 1:
            return parts[0]
        return cls(sym for table in parts for sym in table.raw())

    def raw(self) -> Iterable[RawSymbol]:
        """The chosen symbols again, for merging; a size-0 symbol keeps its computed end."""
        for start, end, size, name in zip(self._starts, self._ends, self._sizes, self._names):
            yield RawSymbol(name, start, size, STB_GLOBAL, STT_FUNC if size else STT_NOTYPE, end)

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, elf_addr: int) -> ElfSymbol | None:
        """The symbol whose range holds `elf_addr`, or None."""
        i = bisect.bisect_right(self._starts, elf_addr) - 1
        for j in range(i, max(i - self._NESTING_DEPTH, -1), -1):
            if elf_addr < self._ends[j]:
                return ElfSymbol(self._names[j], self._starts[j], self._sizes[j])
        return None
