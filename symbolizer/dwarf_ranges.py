"""Address range lists: ``DW_AT_ranges`` in `.debug_ranges` (DWARF 2–4) and `.debug_rnglists`.

A function split into hot and cold parts, an inlined instance scattered by the optimizer, or a
unit with code in several sections all describe their code as a range list rather than a
``low_pc``/``high_pc`` pair. This module turns one such attribute into (start, end) pairs.
"""
from __future__ import annotations

from collections.abc import Callable

from symbolizer.dwarf_forms import V_RNGLISTX, read_uleb
from symbolizer.dwarf_sections import DwarfError, DwarfSections

RLE_END_OF_LIST, RLE_BASE_ADDRESSX, RLE_STARTX_ENDX, RLE_STARTX_LENGTH = 0, 1, 2, 3
RLE_OFFSET_PAIR, RLE_BASE_ADDRESS, RLE_START_END, RLE_START_LENGTH = 4, 5, 6, 7


def read_ranges(sections: DwarfSections, version: int, addr_size: int, offset_size: int,
                base: int, addr_base: int, rnglists_base: int, meaning: int,
                value: int) -> list[tuple[int, int]]:
    """Decode the range list a ``DW_AT_ranges`` value names, dropping empty ranges.

    :param base: the unit's base address (its ``DW_AT_low_pc``), for offset entries.
    :param meaning: ``V_RNGLISTX`` when `value` is an index (``DW_FORM_rnglistx``), else it is
        an offset (into `.debug_rnglists` for DWARF 5, `.debug_ranges` before).
    """
    try:
        if version < 5:
            return _ranges_v4(sections.ranges, value, addr_size, base)
        data = sections.rnglists
        if meaning == V_RNGLISTX:
            table = rnglists_base or (12 if offset_size == 4 else 20)
            at = table + value * offset_size
            if at + offset_size > len(data):
                raise DwarfError(f"range list index {value} is past .debug_rnglists")
            value = table + int.from_bytes(data[at:at + offset_size], "little")
        return _rnglists(data, value, addr_size, base, sections.addr, addr_base)
    except IndexError:
        raise DwarfError(f"{sections.path}: truncated range list at 0x{value:x}") from None
    except DwarfError as exc:
        raise DwarfError(f"{sections.path}: {exc}") from None


def _ranges_v4(data: bytes, pos: int, addr_size: int, base: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    all_ones = (1 << (8 * addr_size)) - 1
    while True:
        if pos + 2 * addr_size > len(data):
            raise DwarfError(f"range list at 0x{pos:x} runs past .debug_ranges")
        start = int.from_bytes(data[pos:pos + addr_size], "little")
        end = int.from_bytes(data[pos + addr_size:pos + 2 * addr_size], "little")
        pos += 2 * addr_size
        if start == 0 and end == 0:
            return out
        if start == all_ones:
            base = end
        elif end > start:
            out.append((base + start, base + end))


# How a DWARF 5 range list or location list entry gives its bounds (DW_RLE_* and DW_LLE_* share
# the encodings, not the kind numbers).
BOUNDS_OFFSET_PAIR, BOUNDS_START_END, BOUNDS_START_LENGTH = 0, 1, 2
BOUNDS_STARTX_ENDX, BOUNDS_STARTX_LENGTH = 3, 4
_RLE_BOUNDS = {RLE_OFFSET_PAIR: BOUNDS_OFFSET_PAIR, RLE_START_END: BOUNDS_START_END,
               RLE_START_LENGTH: BOUNDS_START_LENGTH, RLE_STARTX_ENDX: BOUNDS_STARTX_ENDX,
               RLE_STARTX_LENGTH: BOUNDS_STARTX_LENGTH}


def read_bounds(data: bytes, pos: int, bounds: int, addr_size: int, base: int,
                indexed: Callable[[int], int]) -> tuple[int, int, int]:
    """(start, end, position after) of an entry's bounds encoded as `bounds` (``BOUNDS_*``);
    `indexed` resolves an index into `.debug_addr`."""
    if bounds == BOUNDS_OFFSET_PAIR:
        a, pos = read_uleb(data, pos)
        b, pos = read_uleb(data, pos)
        return base + a, base + b, pos
    if bounds == BOUNDS_START_END:
        start = int.from_bytes(data[pos:pos + addr_size], "little")
        end = int.from_bytes(data[pos + addr_size:pos + 2 * addr_size], "little")
        return start, end, pos + 2 * addr_size
    if bounds == BOUNDS_START_LENGTH:
        start = int.from_bytes(data[pos:pos + addr_size], "little")
        length, pos = read_uleb(data, pos + addr_size)
        return start, start + length, pos
    a, pos = read_uleb(data, pos)
    b, pos = read_uleb(data, pos)
    start = indexed(a)
    return start, (indexed(b) if bounds == BOUNDS_STARTX_ENDX else start + b), pos


def _rnglists(data: bytes, pos: int, addr_size: int, base: int, addr: bytes,
              addr_base: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []

    def indexed(index: int) -> int:
        at = addr_base + index * addr_size
        if at + addr_size > len(addr):
            raise DwarfError(f"address index {index} is past .debug_addr")
        return int.from_bytes(addr[at:at + addr_size], "little")

    while True:
        kind = data[pos]
        pos += 1
        if kind == RLE_END_OF_LIST:
            return out
        if kind == RLE_BASE_ADDRESS:
            base = int.from_bytes(data[pos:pos + addr_size], "little")
            pos += addr_size
            continue
        if kind == RLE_BASE_ADDRESSX:
            index, pos = read_uleb(data, pos)
            base = indexed(index)
            continue
        bounds = _RLE_BOUNDS.get(kind)
        if bounds is None:
            raise DwarfError(f"bad range list entry kind {kind} at 0x{pos - 1:x}")
        start, end, pos = read_bounds(data, pos, bounds, addr_size, base, indexed)
        if end > start:
            out.append((start, end))
