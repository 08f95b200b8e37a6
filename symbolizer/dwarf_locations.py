"""DWARF locations: where a variable (or a frame base) lives, resolved per pc.

A ``DW_AT_location`` or ``DW_AT_frame_base`` is either one expression valid over the whole scope
(``exprloc``, or a block before DWARF 4) or a *location list*: expressions that each hold over a
pc range, in `.debug_loc` (DWARF 2–4: address pairs relative to the unit's base address) or
`.debug_loclists` (DWARF 5: ``DW_LLE_*`` entries, address indexes into `.debug_addr`). A pc no
entry covers means *optimized out there*.

The raw expression bytes are kept with their pc range (`LocationEntry`), so a later stage can
turn them into reads (BPF fetches) without decoding DWARF again:

    loc = read_location(dfile, unit, die.attrs[AT_LOCATION])
    expr = loc.at(elf_addr)          # bytes, or None where the variable has no location
"""
from __future__ import annotations

from dataclasses import dataclass

from symbolizer.dwarf_forms import V_ADDRX, read_uleb
from symbolizer.dwarf_ranges import (
    BOUNDS_OFFSET_PAIR, BOUNDS_START_END, BOUNDS_START_LENGTH, BOUNDS_STARTX_ENDX,
    BOUNDS_STARTX_LENGTH, read_bounds,
)
from symbolizer.dwarf_sections import DwarfError
from symbolizer.dwarf_units import DwarfFile, UnitHeader

WHOLE_SCOPE = (0, 1 << 64)

LLE_END_OF_LIST, LLE_BASE_ADDRESSX, LLE_STARTX_ENDX, LLE_STARTX_LENGTH = 0, 1, 2, 3
LLE_OFFSET_PAIR, LLE_DEFAULT_LOCATION, LLE_BASE_ADDRESS, LLE_START_END = 4, 5, 6, 7
LLE_START_LENGTH, LLE_GNU_VIEW_PAIR = 8, 9
_LLE_BOUNDS = {LLE_OFFSET_PAIR: BOUNDS_OFFSET_PAIR, LLE_START_END: BOUNDS_START_END,
               LLE_START_LENGTH: BOUNDS_START_LENGTH, LLE_STARTX_ENDX: BOUNDS_STARTX_ENDX,
               LLE_STARTX_LENGTH: BOUNDS_STARTX_LENGTH}
_MAX_ENTRIES = 1 << 16          # a longer list is corrupt data running through the section


@dataclass(frozen=True, slots=True)
class LocationEntry:
    """One expression and the ELF address range [start, end) where it holds."""

    start: int
    end: int
    expr: bytes


@dataclass(frozen=True, slots=True)
class Location:
    """A whole ``DW_AT_location`` (or frame base).

    :param entries: in list order; an ``exprloc`` is one entry over `WHOLE_SCOPE`.
    :param is_list: whether it came from a location list.
    :param default: a DWARF 5 ``DW_LLE_default_location`` expression for pcs no entry covers.
    """

    entries: tuple[LocationEntry, ...]
    is_list: bool
    default: bytes | None = None

    def at(self, elf_addr: int) -> bytes | None:
        """The expression valid at `elf_addr` (the first entry covering it), None where the
        value has no location. An empty expression (optimized out) also gives None."""
        for entry in self.entries:
            if entry.start <= elf_addr < entry.end:
                return entry.expr or None
        return self.default or None


def read_location(dfile: DwarfFile, unit: UnitHeader, value: int | str | bytes) -> Location:
    """The location an attribute value describes: `bytes` is an expression, an `int` the offset
    of a location list (`.debug_loclists` for DWARF 5 units, `.debug_loc` before).

    :raises DwarfError: a truncated or malformed list.
    """
    if isinstance(value, bytes):
        return Location((LocationEntry(*WHOLE_SCOPE, value),), False)
    if isinstance(value, str):
        raise DwarfError(f"{dfile.sections.path}: a string where a location was expected")
    base = dfile.root(unit).base
    try:
        if unit.version >= 5:
            return _loclists(dfile, unit, value, base)
        return _loc(dfile.sections.loc, value, unit.addr_size, base, dfile.sections.path)
    except IndexError:
        raise DwarfError(f"{dfile.sections.path}: location list at 0x{value:x} is truncated") \
            from None


def _loc(data: bytes, pos: int, addr_size: int, base: int, path: str) -> Location:
    """A DWARF 2–4 `.debug_loc` list (DWARF 4 §2.6.2)."""
    if pos >= len(data):
        raise DwarfError(f"{path}: location list offset 0x{pos:x} is past .debug_loc")
    all_ones = (1 << (8 * addr_size)) - 1
    entries: list[LocationEntry] = []
    for _ in range(_MAX_ENTRIES):
        start = int.from_bytes(data[pos:pos + addr_size], "little")
        end = int.from_bytes(data[pos + addr_size:pos + 2 * addr_size], "little")
        pos += 2 * addr_size
        if start == 0 and end == 0:
            return Location(tuple(entries), True)
        if start == all_ones:
            base = end
            continue
        size = int.from_bytes(data[pos:pos + 2], "little")
        expr = data[pos + 2:pos + 2 + size]
        pos += 2 + size
        if len(expr) != size:
            raise IndexError(pos)
        if end > start:
            entries.append(LocationEntry(base + start, base + end, expr))
    raise DwarfError(f"{path}: location list without an end")


def _loclists(dfile: DwarfFile, unit: UnitHeader, pos: int, base: int) -> Location:
    """A DWARF 5 `.debug_loclists` list (DWARF 5 §2.6.2)."""
    data = dfile.sections.loclists
    path = dfile.sections.path
    if pos >= len(data):
        raise DwarfError(f"{path}: location list offset 0x{pos:x} is past .debug_loclists")
    addr_size = unit.addr_size
    root = dfile.root(unit)

    def addr(at: int) -> int:
        return int.from_bytes(data[at:at + addr_size], "little")

    def indexed(index: int) -> int:
        return dfile.address(unit, root, V_ADDRX, index)

    entries: list[LocationEntry] = []
    default: bytes | None = None
    for _ in range(_MAX_ENTRIES):
        kind = data[pos]
        pos += 1
        if kind == LLE_END_OF_LIST:
            return Location(tuple(entries), True, default)
        if kind == LLE_BASE_ADDRESSX:
            index, pos = read_uleb(data, pos)
            base = indexed(index)
            continue
        if kind == LLE_BASE_ADDRESS:
            base, pos = addr(pos), pos + addr_size
            continue
        if kind == LLE_GNU_VIEW_PAIR:           # location views: not addresses, skipped
            _, pos = read_uleb(data, pos)
            _, pos = read_uleb(data, pos)
            continue
        if kind == LLE_DEFAULT_LOCATION:
            start = end = 0
        elif kind in _LLE_BOUNDS:
            start, end, pos = read_bounds(data, pos, _LLE_BOUNDS[kind], addr_size, base, indexed)
        else:
            raise DwarfError(f"{path}: bad location list entry kind {kind} at 0x{pos - 1:x}")
        size, pos = read_uleb(data, pos)
        expr = data[pos:pos + size]
        pos += size
        if len(expr) != size:
            raise IndexError(pos)
        if kind == LLE_DEFAULT_LOCATION:
            default = expr
        elif end > start:
            entries.append(LocationEntry(start, end, expr))
    raise DwarfError(f"{path}: location list without an end")
