"""Whole DIEs: every attribute decoded by its ``DW_AT_*`` code, children, references followed.

The address index reads a handful of attributes into fixed slots (`symbolizer.dwarf_forms`) and
skips everything else; the variable listing needs all of them (types, locations, constant
values, declaration and call coordinates, frame bases) but only for the DIEs of one function and
the types those name. `DieReader` decodes such DIEs on demand and memoizes them:

    reader = DieReader(dfile)                       # dfile: DwarfFile (with its dwz alt file)
    die = reader.die(dfile, offset)
    name = reader.integrated(die, AT_NAME)          # through abstract origins, like libdw
    for child in reader.children(die): ...
    typ = reader.ref(die, AT_TYPE)

Values are interpreted: strings (``strp``, ``strx``, ``line_strp``, alt-file strings) come back
as `str`, addresses (``addrx``) resolved, blocks and ``exprloc`` as `bytes`, references as
absolute offsets (``ALT_REF``-flagged when they point into the alt file), ``loclistx`` as an
offset into `.debug_loclists`. Code ranges (``low_pc``/``high_pc``/``ranges``) are resolved into
`Die.ranges` with the index's own rules (`symbolizer.dwarf_dies.die_ranges`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from symbolizer.dwarf_dies import die_ranges
from symbolizer.dwarf_forms import (
    NUM_SLOTS, R_CSTR, R_INDIRECT, R_NONE, R_SLEB, R_ULEB,
    V_ADDRX, V_LINE_STRP, V_LOCLISTX, V_OTHER, V_REF_ALT, V_REF_INFO, V_REF_UNIT, V_STR_INLINE,
    V_STRP, V_STRP_ALT, V_STRX, Abbrev, AttrSpec, form_meaning, form_reader, read_sleb, read_uleb,
)
from symbolizer.dwarf_sections import DwarfError
from symbolizer.dwarf_units import ALT_REF, DwarfFile, UnitHeader, UnitRoot, block_size

AT_SIBLING, AT_LOCATION, AT_NAME, AT_BYTE_SIZE, AT_CONST_VALUE = 0x01, 0x02, 0x03, 0x0B, 0x1C
AT_INLINE, AT_UPPER_BOUND, AT_ABSTRACT_ORIGIN, AT_COUNT = 0x20, 0x2F, 0x31, 0x37
AT_DECL_FILE, AT_DECL_LINE, AT_DECLARATION, AT_EXTERNAL = 0x3A, 0x3B, 0x3C, 0x3F
AT_FRAME_BASE, AT_SPECIFICATION, AT_TYPE, AT_ENTRY_PC = 0x40, 0x47, 0x49, 0x52
AT_CALL_FILE, AT_CALL_LINE, AT_LOCLISTS_BASE, AT_PROTOTYPED = 0x58, 0x59, 0x8C, 0x27
AT_PRODUCER = 0x25

_STRING_MEANINGS = frozenset((V_STR_INLINE, V_STRP, V_LINE_STRP, V_STRX, V_STRP_ALT))
_REF_MEANINGS = frozenset((V_REF_UNIT, V_REF_INFO, V_REF_ALT))
_MAX_CHAIN = 16             # longer origin chains are cycles in corrupt data

AttrValue = int | str | bytes


@dataclass(frozen=True, slots=True)
class Die:
    """One decoded DIE.

    :param dfile: the file it lives in (the main debug file or the dwz alt file); references
        without ``ALT_REF`` point into this file.
    :param end: offset just past its attributes, where its first child starts.
    :param ranges: its code as (start, end) pairs; () without code.
    """

    dfile: DwarfFile = field(repr=False, compare=False)
    unit: UnitHeader = field(repr=False, compare=False)
    offset: int
    tag: int
    has_children: bool
    end: int
    attrs: dict[int, AttrValue]
    ranges: tuple[tuple[int, int], ...]

    def int_attr(self, code: int) -> int | None:
        """The attribute as an integer, None when absent or not an integer."""
        value = self.attrs.get(code)
        return value if isinstance(value, int) else None

    def str_attr(self, code: int) -> str | None:
        """The attribute as a string, None when absent or not a string."""
        value = self.attrs.get(code)
        return value if isinstance(value, str) else None


class DieReader:
    """Decodes DIEs of one debug file and its alt file, memoizing DIEs and child lists."""

    def __init__(self, main: DwarfFile) -> None:
        self.main = main
        self._dies: dict[tuple[int, int], Die] = {}
        self._children: dict[tuple[int, int], tuple[tuple[Die, ...], int]] = {}
        self._loclists_bases: dict[tuple[int, int], int] = {}

    def die(self, dfile: DwarfFile, offset: int) -> Die:
        """The DIE at `offset` of `dfile`'s `.debug_info`; DwarfError when it cannot be read."""
        key = (id(dfile), offset)
        found = self._dies.get(key)
        if found is None:
            found = self._dies[key] = self._read(dfile, dfile.unit_for(offset), offset)
        return found

    def ref(self, die: Die, code: int) -> Die | None:
        """The DIE a reference attribute of `die` points to, None when absent or unreachable
        (a dwz alt file that is missing)."""
        value = die.attrs.get(code)
        if not isinstance(value, int):
            return None
        if value & ALT_REF:
            alt = die.dfile.alt
            return None if alt is None else self.die(alt, value & ~ALT_REF)
        return self.die(die.dfile, value)

    def is_reference(self, die: Die, code: int) -> bool:
        """Whether attribute `code` of `die` has a reference form (a ``DW_AT_count`` or bound
        naming the DIE that holds the value, not the value); also True for an indirect form,
        which this does not decode."""
        abbrev_code = read_uleb(die.dfile.sections.info, die.offset)[0]
        abbrev = die.dfile.abbrevs(die.unit).get(abbrev_code)
        if abbrev is None:
            return False
        for attr_code, spec in zip(abbrev.codes, abbrev.attrs):
            if attr_code == code:
                return spec.reader == R_INDIRECT or spec.meaning in _REF_MEANINGS
        return False

    def integrated(self, die: Die, code: int) -> AttrValue | None:
        """The attribute from `die` or, like libdw's ``dwarf_attr_integrate``, from the DIEs its
        ``DW_AT_abstract_origin`` / ``DW_AT_specification`` chain leads to."""
        holder = self.holder(die, code)
        return None if holder is None else holder.attrs[code]

    def integrated_ref(self, die: Die, code: int) -> Die | None:
        """The DIE a reference attribute found as by `integrated` points to."""
        holder = self.holder(die, code)
        return None if holder is None else self.ref(holder, code)

    def holder(self, die: Die, code: int) -> Die | None:
        """The first DIE of `die`'s origin/specification chain that has attribute `code`."""
        current: Die | None = die
        for _ in range(_MAX_CHAIN):
            if current is None or code in current.attrs:
                return current
            nxt = self.ref(current, AT_ABSTRACT_ORIGIN)
            current = nxt if nxt is not None else self.ref(current, AT_SPECIFICATION)
        raise DwarfError(f"{die.dfile.sections.path}: DIE reference cycle at 0x{die.offset:x}")

    def origin(self, die: Die) -> Die:
        """The abstract DIE at the end of `die`'s abstract-origin chain (`die` itself without)."""
        current = die
        for _ in range(_MAX_CHAIN):
            nxt = self.ref(current, AT_ABSTRACT_ORIGIN)
            if nxt is None:
                return current
            current = nxt
        raise DwarfError(f"{die.dfile.sections.path}: DIE reference cycle at 0x{die.offset:x}")

    def children(self, die: Die) -> tuple[Die, ...]:
        """The children of `die` in DIE order."""
        return self._child_list(die)[0]

    def _child_list(self, die: Die) -> tuple[tuple[Die, ...], int]:
        """(children, offset just past the list's terminating 0)."""
        key = (id(die.dfile), die.offset)
        found = self._children.get(key)
        if found is not None:
            return found
        if not die.has_children:
            found = ((), die.end)
        else:
            data, end = die.dfile.sections.info, die.unit.end
            out: list[Die] = []
            pos = die.end
            while True:
                if pos >= end:
                    raise DwarfError(f"{die.dfile.sections.path}: children of DIE at "
                                     f"0x{die.offset:x} run past their unit")
                if data[pos] == 0:
                    pos += 1
                    break
                child = self.die(die.dfile, pos)
                out.append(child)
                sibling = child.int_attr(AT_SIBLING)
                if not child.has_children:
                    pos = child.end
                elif sibling is not None and pos < sibling <= end:
                    pos = sibling
                else:
                    pos = self._child_list(child)[1]
            found = (tuple(out), pos)
        self._children[key] = found
        return found

    def _read(self, dfile: DwarfFile, unit: UnitHeader, offset: int) -> Die:
        data = dfile.sections.info
        try:
            code, pos = read_uleb(data, offset)
            abbrev = dfile.abbrevs(unit).get(code)
            if abbrev is None:
                raise DwarfError(f"{dfile.sections.path}: bad abbrev code {code} at "
                                 f"0x{offset:x}")
            root = dfile.root(unit)
            attrs: dict[int, AttrValue] = {}
            slots: list[int | str | None] = [None] * NUM_SLOTS
            for attr_code, spec in zip(abbrev.codes, abbrev.attrs):
                pos = self._attr(dfile, unit, root, data, pos, attr_code, spec, attrs, slots)
        except (IndexError, ValueError) as exc:
            if isinstance(exc, DwarfError):
                raise
            raise DwarfError(f"{dfile.sections.path}: truncated DIE at 0x{offset:x}") from None
        return Die(dfile, unit, offset, abbrev.tag, abbrev.has_children, pos, attrs,
                   _code_ranges(dfile, unit, root, abbrev, slots))

    def _attr(self, dfile: DwarfFile, unit: UnitHeader, root: UnitRoot, data: bytes, pos: int,
              code: int, spec: AttrSpec, attrs: dict[int, AttrValue],
              slots: list[int | str | None]) -> int:
        """Decode one attribute at `pos` into `attrs` (and its slot); the position after it."""
        slot, reader, meaning, const = spec
        raw: int | str | bytes
        if reader == R_INDIRECT:
            form, pos = read_uleb(data, pos)
            spec = AttrSpec(slot, form_reader(form, unit.addr_size, unit.offset_size,
                                              unit.version), form_meaning(form), 0)
            return self._attr(dfile, unit, root, data, pos, code, spec, attrs, slots)
        if reader > 0:
            raw = data[pos:pos + reader]
            pos += reader
            if meaning != V_OTHER:
                raw = int.from_bytes(raw, "little")
        elif reader == R_NONE:
            raw = const
        elif reader == R_ULEB:
            raw, pos = read_uleb(data, pos)
        elif reader == R_SLEB:
            raw, pos = read_sleb(data, pos)
        elif reader == R_CSTR:
            end = data.index(b"\0", pos)
            raw = data[pos:end].decode("utf-8", "replace")
            pos = end + 1
        else:
            size, pos = block_size(data, pos, reader)
            raw = data[pos:pos + size]
            pos += size
        if isinstance(raw, int):
            if meaning == V_REF_UNIT:
                raw += unit.offset
            elif meaning == V_REF_ALT:
                raw |= ALT_REF
        if slot >= 0 and not isinstance(raw, bytes):
            slots[slot] = raw
        attrs[code] = self._interpret(dfile, unit, root, meaning, raw)
        return pos

    def _interpret(self, dfile: DwarfFile, unit: UnitHeader, root: UnitRoot, meaning: int,
                   raw: int | str | bytes) -> AttrValue:
        if isinstance(raw, bytes):
            return raw
        if meaning in _STRING_MEANINGS:
            text = dfile.string(unit, root, meaning, raw)
            return "" if text is None else text
        if meaning == V_ADDRX:
            return dfile.address(unit, root, meaning, raw)
        if meaning == V_LOCLISTX and isinstance(raw, int):
            return self._loclistx(dfile, unit, raw)
        return raw

    def _loclistx(self, dfile: DwarfFile, unit: UnitHeader, index: int) -> int:
        """A ``DW_FORM_loclistx`` index → offset in `.debug_loclists` (DWARF 5 §7.29)."""
        key = (id(dfile), unit.offset)
        base = self._loclists_bases.get(key)
        if base is None:
            root_die = self.die(dfile, unit.die_offset)
            base = root_die.int_attr(AT_LOCLISTS_BASE) or (12 if unit.offset_size == 4 else 20)
            self._loclists_bases[key] = base
        table = dfile.sections.loclists
        at = base + index * unit.offset_size
        if at + unit.offset_size > len(table):
            raise DwarfError(f"{dfile.sections.path}: location list index {index} is past "
                             ".debug_loclists")
        return base + int.from_bytes(table[at:at + unit.offset_size], "little")


def _code_ranges(dfile: DwarfFile, unit: UnitHeader, root: UnitRoot, abbrev: Abbrev,
                 slots: list[int | str | None]) -> tuple[tuple[int, int], ...]:
    """The DIE's code ranges when it has ``low_pc`` or ``ranges``, else ()."""
    if not abbrev.wanted:
        return ()
    return die_ranges(dfile, unit, root, abbrev, slots)
