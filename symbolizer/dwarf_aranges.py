"""Address → compilation unit: `.debug_aranges`, completed from the units' own ranges.

The index builds a unit only when an address falls into it, so it first needs to know which
unit covers which code. `.debug_aranges` answers that without touching `.debug_info`; units it
does not list (producers may omit it, e.g. clang) are covered from their root DIE's
``DW_AT_low_pc``/``DW_AT_high_pc``/``DW_AT_ranges``, which costs one DIE per unit.
"""
from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass

from symbolizer.dwarf_forms import TAG_COMPILE_UNIT
from symbolizer.dwarf_sections import DwarfError
from symbolizer.dwarf_units import DwarfFile


@dataclass(frozen=True, slots=True)
class CuMap:
    """Sorted, non-overlapping code ranges and the offset of the unit owning each."""

    starts: array[int]
    ends: array[int]
    units: array[int]

    def unit_for(self, elf_addr: int) -> int | None:
        """Offset of the unit whose code covers `elf_addr`, None when no unit does."""
        i = bisect.bisect_right(self.starts, elf_addr) - 1
        if i >= 0 and elf_addr < self.ends[i]:
            return self.units[i]
        return None


def build_cu_map(main: DwarfFile) -> CuMap:
    """The address map of `main`'s compile units; DwarfError only if nothing can be read."""
    unit_offsets = {u.offset for u in main.units}
    entries: list[tuple[int, int, int]] = []
    listed: set[int] = set()
    for start, end, cu in _aranges(main.sections.aranges):
        if cu in unit_offsets:
            listed.add(cu)
            if start != 0:                  # 0: code the linker discarded
                entries.append((start, end, cu))
    for unit in main.units:
        if unit.offset in listed:
            continue
        try:
            root = main.root(unit)
        except DwarfError:
            continue                        # a lookup in this unit cannot work anyway
        if root.tag == TAG_COMPILE_UNIT:
            entries.extend((s, e, unit.offset) for s, e in root.ranges if s != 0)
    entries.sort()
    starts, ends, units = array("Q"), array("Q"), array("Q")
    for start, end, cu in entries:
        if starts and start < ends[-1]:     # overlap: the earlier unit keeps the shared part
            if end <= ends[-1]:
                continue
            start = ends[-1]
        if starts and start == ends[-1] and cu == units[-1]:
            ends[-1] = end
            continue
        starts.append(start)
        ends.append(end)
        units.append(cu)
    return CuMap(starts, ends, units)


def _aranges(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, unit offset) for every entry of every readable set in `.debug_aranges`."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos + 4 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "little")
        hdr, offset_size = pos + 4, 4
        if length == 0xFFFFFFFF:
            length = int.from_bytes(data[pos + 4:pos + 12], "little")
            hdr, offset_size = pos + 12, 8
        end = hdr + length
        if length == 0 or end > len(data):
            break                           # unreadable from here on: units fall back to DIEs
        cu = int.from_bytes(data[hdr + 2:hdr + 2 + offset_size], "little")
        addr_size = data[hdr + 2 + offset_size]
        seg_size = data[hdr + 3 + offset_size]
        if addr_size not in (4, 8) or seg_size != 0:
            pos = end
            continue
        tuple_size = 2 * addr_size
        p = hdr + 4 + offset_size
        p += (-(p - pos)) % tuple_size          # tuples are aligned from the set's start
        while p + tuple_size <= end:
            start = int.from_bytes(data[p:p + addr_size], "little")
            size = int.from_bytes(data[p + addr_size:p + tuple_size], "little")
            p += tuple_size
            if start == 0 and size == 0:
                break
            if size:
                out.append((start, start + size, cu))
        pos = end
    return out
