"""Units of `.debug_info`: headers (DWARF 2–5), root DIEs, and decoding one DIE's attributes.

`DwarfFile` wraps the sections of one file (the debug file, or a dwz alt file reached through
`alt`) and answers the questions the scanner and name resolver ask about a unit: its abbreviations,
its root attributes (bases for ``strx``/``addrx``/``rnglistx``, ``stmt_list``, ``comp_dir``), and
the attributes of the DIE at any `.debug_info` offset. Everything is decoded on demand and cached
per unit, so a lookup touches only the units it needs.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from symbolizer.dwarf_forms import (
    NUM_SLOTS, R_BLOCK, R_BLOCK1, R_BLOCK2, R_BLOCK4, R_CSTR, R_INDIRECT, R_NONE, R_SLEB, R_ULEB,
    SLOT_ADDR_BASE, SLOT_COMP_DIR, SLOT_HIGH, SLOT_HIGH_OFFSET, SLOT_LOW, SLOT_NAME, SLOT_RANGES,
    SLOT_RNGLISTS_BASE, SLOT_STMT_LIST, SLOT_STR_OFFSETS_BASE, V_ADDRX, V_LINE_STRP, V_REF_ALT,
    V_REF_UNIT, V_STR_INLINE, V_STRP, V_STRP_ALT, V_STRX, Abbrev, AbbrevCompiler, AttrSpec,
    form_meaning, form_reader, read_sleb, read_uleb,
)
from symbolizer.dwarf_ranges import read_ranges
from symbolizer.dwarf_sections import DwarfError, DwarfSections

# Marks a DIE reference into the alt (dwz / supplementary) file's .debug_info.
ALT_REF = 1 << 62
DW_UT_SKELETON, DW_UT_SPLIT_COMPILE, DW_UT_TYPE, DW_UT_SPLIT_TYPE = 4, 5, 2, 6



#: compile, type, partial, skeleton and split units (DW_TAG_*_unit)
_UNIT_TAGS = frozenset({0x11, 0x41, 0x3C, 0x4A, 0x4B})

@dataclass(frozen=True, slots=True)
class UnitHeader:
    """A unit's header: where it is and how to read it.

    :param offset: of the header in `.debug_info`; `end` is one past its last byte.
    :param die_offset: of its root DIE.
    """

    offset: int
    end: int
    version: int
    addr_size: int
    offset_size: int
    abbrev_offset: int
    die_offset: int


@dataclass(frozen=True, slots=True)
class UnitRoot:
    """What the root DIE of a unit tells its readers.

    :param base: the base address for ``DW_AT_ranges`` and location lists (``DW_AT_low_pc``).
    :param ranges: the unit's code ranges as (start, end) pairs.
    :param stmt_list: offset of its line program in `.debug_line`, None when it has none.
    """

    tag: int
    name: str | None
    comp_dir: str | None
    base: int
    ranges: tuple[tuple[int, int], ...]
    stmt_list: int | None
    str_offsets_base: int
    addr_base: int
    rnglists_base: int


def parse_unit_headers(info: bytes) -> tuple[list[UnitHeader], str | None]:
    """Every unit header in `info`, and why parsing stopped early (None when it did not).

    A unit whose length runs past the section is kept, clipped to the section, so its own DIEs
    fail to decode but the units before it still work; a header that cannot be read ends the list.
    """
    units: list[UnitHeader] = []
    pos, size = 0, len(info)
    while pos < size:
        try:
            header = _unit_header(info, pos)
        except (IndexError, DwarfError) as exc:
            return units, f"bad unit header at 0x{pos:x}: {exc or 'truncated'}"
        units.append(header)
        if header.end > size:
            return units, f"unit at 0x{pos:x} runs past the end of .debug_info"
        pos = header.end
    return units, None


def _unit_header(info: bytes, pos: int) -> UnitHeader:
    length = int.from_bytes(info[pos:pos + 4], "little")
    start, offset_size = pos + 4, 4
    if length == 0xFFFFFFFF:
        length = int.from_bytes(info[pos + 4:pos + 12], "little")
        start, offset_size = pos + 12, 8
    elif length >= 0xFFFFFFF0:
        raise DwarfError(f"reserved unit length 0x{length:x}")
    end = start + length
    version = int.from_bytes(info[start:start + 2], "little")
    if version < 2 or version > 5:
        raise DwarfError(f"unsupported DWARF version {version}")
    p = start + 2
    if version >= 5:
        unit_type, addr_size = info[p], info[p + 1]
        abbrev_offset = int.from_bytes(info[p + 2:p + 2 + offset_size], "little")
        p += 2 + offset_size
        if unit_type in (DW_UT_SKELETON, DW_UT_SPLIT_COMPILE):
            p += 8
        elif unit_type in (DW_UT_TYPE, DW_UT_SPLIT_TYPE):
            p += 8 + offset_size
    else:
        abbrev_offset = int.from_bytes(info[p:p + offset_size], "little")
        addr_size = info[p + offset_size]
        p += offset_size + 1
    if addr_size not in (4, 8) or p > end:
        raise DwarfError(f"bad unit header (address size {addr_size})")
    return UnitHeader(pos, end, version, addr_size, offset_size, abbrev_offset, p)


def read_values(data: bytes, pos: int, attrs: tuple[AttrSpec, ...], vals: list[int | str | None],
                unit: UnitHeader) -> int:
    """Decode the attributes of the DIE whose attributes start at `pos` into `vals` by slot.

    Values are raw: integers (unit-relative references made absolute, alt-file references
    flagged with `ALT_REF`) or, for ``DW_FORM_string``, the string. Returns the position after
    the DIE's attributes.
    """
    for slot, reader, meaning, const in attrs:
        value: int | str
        if reader > 0:
            end = pos + reader
            if slot < 0:
                pos = end
                continue
            value = int.from_bytes(data[pos:end], "little")
            pos = end
        elif reader == R_NONE:
            value = const
        elif reader == R_ULEB:
            value, pos = read_uleb(data, pos)
        elif reader == R_CSTR:
            end = data.index(b"\0", pos)
            value = data[pos:end].decode("utf-8", "replace") if slot >= 0 else 0
            pos = end + 1
        elif reader == R_SLEB:
            value, pos = read_sleb(data, pos)
        elif reader == R_INDIRECT:
            form, pos = read_uleb(data, pos)
            spec = AttrSpec(slot, form_reader(form, unit.addr_size, unit.offset_size,
                                              unit.version), form_meaning(form), 0)
            pos = read_values(data, pos, (spec,), vals, unit)
            continue
        else:
            pos = _skip_block(data, pos, reader)
            continue
        if slot >= 0:
            if meaning == V_REF_UNIT:
                value = unit.offset + int(value)
            elif meaning == V_REF_ALT:
                value = int(value) | ALT_REF
            vals[slot] = value
    return pos


def _skip_block(data: bytes, pos: int, reader: int) -> int:
    size, pos = block_size(data, pos, reader)
    return pos + size


def block_size(data: bytes, pos: int, reader: int) -> tuple[int, int]:
    """(size, position of the first byte) of a block attribute read with `reader` at `pos`."""
    if reader == R_BLOCK:
        return read_uleb(data, pos)
    if reader == R_BLOCK1:
        return data[pos], pos + 1
    if reader == R_BLOCK2:
        return int.from_bytes(data[pos:pos + 2], "little"), pos + 2
    if reader == R_BLOCK4:
        return int.from_bytes(data[pos:pos + 4], "little"), pos + 4
    raise DwarfError(f"bad attribute reader {reader}")


class DwarfFile:
    """The units of one file's `.debug_info`, decoded lazily and cached.

    :param alt: the dwz alt file (``.gnu_debugaltlink``) that ``DW_FORM_GNU_ref_alt`` and
        ``DW_FORM_GNU_strp_alt`` point into, when there is one.
    """

    def __init__(self, sections: DwarfSections, alt: DwarfFile | None = None) -> None:
        self.sections = sections
        self.alt = alt
        self.units, self.header_error = parse_unit_headers(sections.info)
        self._unit_offsets = [u.offset for u in self.units]
        self._abbrevs: dict[tuple[int, int, int, int], dict[int, Abbrev]] = {}
        self._compilers: dict[tuple[int, int, int], AbbrevCompiler] = {}
        self._roots: dict[int, UnitRoot] = {}

    def unit_for(self, offset: int) -> UnitHeader:
        """The unit containing the `.debug_info` `offset`; DwarfError when none does."""
        i = bisect.bisect_right(self._unit_offsets, offset) - 1
        if i < 0 or offset >= self.units[i].end:
            raise DwarfError(f"{self.sections.path}: DIE offset 0x{offset:x} is in no unit")
        return self.units[i]

    def abbrevs(self, unit: UnitHeader) -> dict[int, Abbrev]:
        """The unit's compiled abbreviation table (shared by units with the same table)."""
        key = (unit.abbrev_offset, unit.addr_size, unit.offset_size, unit.version)
        table = self._abbrevs.get(key)
        if table is None:
            if unit.abbrev_offset >= len(self.sections.abbrev):
                raise DwarfError(f"{self.sections.path}: unit at 0x{unit.offset:x}: abbrev "
                                 f"offset 0x{unit.abbrev_offset:x} is past .debug_abbrev")
            sizes = (unit.addr_size, unit.offset_size, unit.version)
            compiler = self._compilers.get(sizes)
            if compiler is None:
                compiler = self._compilers[sizes] = AbbrevCompiler(*sizes)
            table = compiler.compile(self.sections.abbrev, unit.abbrev_offset)
            self._abbrevs[key] = table
        return table

    def read_die(self, offset: int) -> tuple[UnitHeader, Abbrev, list[int | str | None], int]:
        """Decode the DIE at `offset`: its unit, abbreviation, slot values and end position."""
        unit = self.unit_for(offset)
        data = self.sections.info
        try:
            code, pos = read_uleb(data, offset)
            abbrev = self.abbrevs(unit).get(code)
            if abbrev is None:
                raise DwarfError(f"{self.sections.path}: bad abbrev code {code} at 0x{offset:x}")
            vals: list[int | str | None] = [None] * NUM_SLOTS
            pos = read_values(data, pos, abbrev.attrs, vals, unit)
        except (IndexError, ValueError) as exc:
            if isinstance(exc, DwarfError):
                raise
            raise DwarfError(f"{self.sections.path}: truncated DIE at 0x{offset:x}") from None
        if pos > unit.end:
            raise DwarfError(f"{self.sections.path}: DIE at 0x{offset:x} runs past its unit")
        return unit, abbrev, vals, pos

    def root(self, unit: UnitHeader) -> UnitRoot:
        """The unit's root DIE attributes (cached)."""
        root = self._roots.get(unit.offset)
        if root is None:
            root = self._read_root(unit)
            self._roots[unit.offset] = root
        return root

    def _read_root(self, unit: UnitHeader) -> UnitRoot:
        _, abbrev, vals, _ = self.read_die(unit.die_offset)
        if abbrev.tag not in _UNIT_TAGS:
            # garbage where the unit's first DIE should be: the unit cannot be trusted at all
            raise DwarfError(f"unit at 0x{unit.offset:x} starts with tag 0x{abbrev.tag:x}, "
                             "not a unit DIE")
        sections = self.sections
        str_offsets_base = _int(vals[SLOT_STR_OFFSETS_BASE], 8 if unit.version >= 5 else 0)
        addr_base = _int(vals[SLOT_ADDR_BASE], 8)
        rnglists_base = _int(vals[SLOT_RNGLISTS_BASE], 0)
        partial = UnitRoot(abbrev.tag, None, None, 0, (), None, str_offsets_base, addr_base,
                           rnglists_base)
        m = abbrev.meanings
        name = self.string(unit, partial, m[SLOT_NAME], vals[SLOT_NAME])
        comp_dir = self.string(unit, partial, m[SLOT_COMP_DIR], vals[SLOT_COMP_DIR])
        low, high, high_offset = vals[SLOT_LOW], vals[SLOT_HIGH], vals[SLOT_HIGH_OFFSET]
        base = self.address(unit, partial, m[SLOT_LOW], low) if low is not None else 0
        ranges: tuple[tuple[int, int], ...] = ()
        if vals[SLOT_RANGES] is not None:
            ranges = tuple(read_ranges(sections, unit.version, unit.addr_size, unit.offset_size,
                                       base, addr_base, rnglists_base, m[SLOT_RANGES],
                                       _int(vals[SLOT_RANGES], 0)))
        elif low is not None and high_offset is not None:
            ranges = ((base, base + _int(high_offset, 0)),)
        elif low is not None and high is not None:
            ranges = ((base, self.address(unit, partial, m[SLOT_HIGH], high)),)
        stmt = vals[SLOT_STMT_LIST]
        return UnitRoot(abbrev.tag, name, comp_dir, base, ranges,
                        None if stmt is None else _int(stmt, 0), str_offsets_base, addr_base,
                        rnglists_base)

    def string(self, unit: UnitHeader, root: UnitRoot, meaning: int,
               raw: int | str | None) -> str | None:
        """Interpret a raw string-valued attribute (inline, strp, line_strp, strx, alt strp)."""
        if raw is None:
            return None
        if isinstance(raw, str):
            return raw if meaning == V_STR_INLINE else None
        sections = self.sections
        if meaning == V_STRP:
            return _cstr(sections.str, raw, sections.path)
        if meaning == V_LINE_STRP:
            return _cstr(sections.line_str, raw, sections.path)
        if meaning == V_STRX:
            at = root.str_offsets_base + raw * unit.offset_size
            if at + unit.offset_size > len(sections.str_offsets):
                raise DwarfError(f"{sections.path}: string index {raw} is past .debug_str_offsets")
            off = int.from_bytes(sections.str_offsets[at:at + unit.offset_size], "little")
            return _cstr(sections.str, off, sections.path)
        if meaning == V_STRP_ALT:
            if self.alt is None:            # the alt file is missing: the name is unknown
                return None
            return _cstr(self.alt.sections.str, raw, self.alt.sections.path)
        return None

    def address(self, unit: UnitHeader, root: UnitRoot, meaning: int, raw: int | str) -> int:
        """Interpret a raw address-valued attribute (``DW_FORM_addr`` or an ``addrx`` index)."""
        if isinstance(raw, str):
            raise DwarfError(f"{self.sections.path}: string where an address was expected")
        if meaning != V_ADDRX:
            return raw
        at = root.addr_base + raw * unit.addr_size
        table = self.sections.addr
        if at + unit.addr_size > len(table):
            raise DwarfError(f"{self.sections.path}: address index {raw} is past .debug_addr")
        return int.from_bytes(table[at:at + unit.addr_size], "little")


def _int(value: int | str | None, default: int) -> int:
    return value if isinstance(value, int) else default


def _cstr(data: bytes, offset: int, path: str) -> str:
    end = data.find(b"\0", offset)
    if end < 0 or offset >= len(data):
        raise DwarfError(f"{path}: string offset 0x{offset:x} is out of its section")
    return data[offset:end].decode("utf-8", "replace")
