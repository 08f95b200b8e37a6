"""DWARF constants, LEB128 readers and abbreviation tables compiled for fast DIE scanning.

A DIE's size is fixed by its abbreviation and the unit's address/offset sizes, except for a few
variable forms (LEB128, strings, blocks). Each abbreviation is therefore compiled once per unit
into an `Abbrev`: a *skip plan* (one integer when every form has a fixed size) that steps over a
DIE without decoding it, and a *read plan* that decodes only the attributes the index needs into
fixed *slots*. The scanner then spends almost nothing on the type, variable and parameter DIEs that
make up most of real debug info.
"""
from __future__ import annotations


from dataclasses import dataclass
from typing import NamedTuple

from symbolizer.dwarf_sections import DwarfError
from unwind.leb128 import read_sleb as read_sleb, read_uleb as read_uleb  # re-exported

# Tags the index looks at.
TAG_COMPILE_UNIT = 0x11
TAG_SUBPROGRAM = 0x2E
TAG_INLINED_SUBROUTINE = 0x1D
TAG_LEXICAL_BLOCK = 0x0B
TAG_NAMESPACE = 0x39
TAG_IMPORTED_UNIT = 0x3D

# Attributes, by the slot their decoded value lands in.
SLOT_SIBLING, SLOT_NAME, SLOT_LINKAGE, SLOT_LOW, SLOT_HIGH = 0, 1, 2, 3, 4
SLOT_HIGH_OFFSET, SLOT_RANGES, SLOT_ORIGIN, SLOT_SPEC, SLOT_CALL_FILE = 5, 6, 7, 8, 9
SLOT_CALL_LINE, SLOT_CALL_COLUMN, SLOT_IMPORT, SLOT_STMT_LIST, SLOT_COMP_DIR = 10, 11, 12, 13, 14
SLOT_STR_OFFSETS_BASE, SLOT_ADDR_BASE, SLOT_RNGLISTS_BASE, SLOT_DECLARATION = 15, 16, 17, 18
NUM_SLOTS = 19

_ATTR_SLOTS = {
    0x01: SLOT_SIBLING, 0x03: SLOT_NAME, 0x6E: SLOT_LINKAGE, 0x2007: SLOT_LINKAGE,
    0x11: SLOT_LOW, 0x12: SLOT_HIGH, 0x55: SLOT_RANGES, 0x31: SLOT_ORIGIN, 0x47: SLOT_SPEC,
    0x58: SLOT_CALL_FILE, 0x59: SLOT_CALL_LINE, 0x57: SLOT_CALL_COLUMN,
    0x18: SLOT_IMPORT, 0x10: SLOT_STMT_LIST, 0x1B: SLOT_COMP_DIR, 0x72: SLOT_STR_OFFSETS_BASE,
    0x73: SLOT_ADDR_BASE, 0x74: SLOT_RNGLISTS_BASE, 0x3C: SLOT_DECLARATION,
}

# Forms.
FORM_ADDR, FORM_BLOCK2, FORM_BLOCK4, FORM_DATA2, FORM_DATA4 = 0x01, 0x03, 0x04, 0x05, 0x06
FORM_DATA8, FORM_STRING, FORM_BLOCK, FORM_BLOCK1, FORM_DATA1 = 0x07, 0x08, 0x09, 0x0A, 0x0B
FORM_FLAG, FORM_SDATA, FORM_STRP, FORM_UDATA, FORM_REF_ADDR = 0x0C, 0x0D, 0x0E, 0x0F, 0x10
FORM_REF1, FORM_REF2, FORM_REF4, FORM_REF8, FORM_REF_UDATA = 0x11, 0x12, 0x13, 0x14, 0x15
FORM_INDIRECT, FORM_SEC_OFFSET, FORM_EXPRLOC, FORM_FLAG_PRESENT = 0x16, 0x17, 0x18, 0x19
FORM_STRX, FORM_ADDRX, FORM_REF_SUP4, FORM_STRP_SUP, FORM_DATA16 = 0x1A, 0x1B, 0x1C, 0x1D, 0x1E
FORM_LINE_STRP, FORM_REF_SIG8, FORM_IMPLICIT_CONST, FORM_LOCLISTX = 0x1F, 0x20, 0x21, 0x22
FORM_RNGLISTX, FORM_REF_SUP8 = 0x23, 0x24
FORM_STRX1, FORM_STRX2, FORM_STRX3, FORM_STRX4 = 0x25, 0x26, 0x27, 0x28
FORM_ADDRX1, FORM_ADDRX2, FORM_ADDRX3, FORM_ADDRX4 = 0x29, 0x2A, 0x2B, 0x2C
FORM_GNU_ADDR_INDEX, FORM_GNU_STR_INDEX = 0x1F01, 0x1F02
FORM_GNU_REF_ALT, FORM_GNU_STRP_ALT = 0x1F20, 0x1F21

# How a form's bytes are read: a positive reader is a fixed size in bytes (a little-endian
# integer, or 16 opaque bytes for data16); the codes below are the other cases.
R_NONE = 0            # flag_present / implicit_const: no bytes
R_ULEB, R_SLEB, R_CSTR, R_BLOCK1 = -1, -2, -3, -4
R_BLOCK2, R_BLOCK4, R_BLOCK, R_INDIRECT = -5, -6, -7, -8

# What a decoded value means, beyond its bytes.
V_INT, V_REF_UNIT, V_REF_INFO, V_REF_ALT, V_STR_INLINE, V_STRP, V_LINE_STRP = 0, 1, 2, 3, 4, 5, 6
V_STRX, V_STRP_ALT, V_ADDRX, V_RNGLISTX, V_SIGNED, V_OTHER, V_LOCLISTX = 7, 8, 9, 10, 11, 12, 13

_OFFSET_FORMS = frozenset((FORM_STRP, FORM_SEC_OFFSET, FORM_LINE_STRP, FORM_STRP_SUP,
                           FORM_GNU_REF_ALT, FORM_GNU_STRP_ALT))
_FIXED_FORMS = {
    FORM_DATA1: 1, FORM_REF1: 1, FORM_FLAG: 1, FORM_STRX1: 1, FORM_ADDRX1: 1,
    FORM_DATA2: 2, FORM_REF2: 2, FORM_STRX2: 2, FORM_ADDRX2: 2,
    FORM_STRX3: 3, FORM_ADDRX3: 3,
    FORM_DATA4: 4, FORM_REF4: 4, FORM_STRX4: 4, FORM_ADDRX4: 4, FORM_REF_SUP4: 4,
    FORM_DATA8: 8, FORM_REF8: 8, FORM_REF_SIG8: 8, FORM_REF_SUP8: 8, FORM_DATA16: 16,
}
_VARIABLE_FORMS = {
    FORM_UDATA: R_ULEB, FORM_REF_UDATA: R_ULEB, FORM_STRX: R_ULEB, FORM_ADDRX: R_ULEB,
    FORM_LOCLISTX: R_ULEB, FORM_RNGLISTX: R_ULEB, FORM_GNU_ADDR_INDEX: R_ULEB,
    FORM_GNU_STR_INDEX: R_ULEB, FORM_SDATA: R_SLEB, FORM_STRING: R_CSTR, FORM_BLOCK1: R_BLOCK1,
    FORM_BLOCK2: R_BLOCK2, FORM_BLOCK4: R_BLOCK4, FORM_BLOCK: R_BLOCK, FORM_EXPRLOC: R_BLOCK,
    FORM_INDIRECT: R_INDIRECT, FORM_FLAG_PRESENT: R_NONE, FORM_IMPLICIT_CONST: R_NONE,
}
_MEANING = {
    FORM_REF1: V_REF_UNIT, FORM_REF2: V_REF_UNIT, FORM_REF4: V_REF_UNIT, FORM_REF8: V_REF_UNIT,
    FORM_REF_UDATA: V_REF_UNIT, FORM_REF_ADDR: V_REF_INFO, FORM_GNU_REF_ALT: V_REF_ALT,
    FORM_REF_SUP4: V_REF_ALT, FORM_REF_SUP8: V_REF_ALT, FORM_STRING: V_STR_INLINE,
    FORM_STRP: V_STRP, FORM_LINE_STRP: V_LINE_STRP, FORM_STRX: V_STRX, FORM_STRX1: V_STRX,
    FORM_STRX2: V_STRX, FORM_STRX3: V_STRX, FORM_STRX4: V_STRX, FORM_GNU_STR_INDEX: V_STRX,
    FORM_GNU_STRP_ALT: V_STRP_ALT, FORM_STRP_SUP: V_STRP_ALT, FORM_ADDRX: V_ADDRX,
    FORM_ADDRX1: V_ADDRX, FORM_ADDRX2: V_ADDRX, FORM_ADDRX3: V_ADDRX, FORM_ADDRX4: V_ADDRX,
    FORM_GNU_ADDR_INDEX: V_ADDRX, FORM_RNGLISTX: V_RNGLISTX, FORM_LOCLISTX: V_LOCLISTX,
    FORM_SDATA: V_SIGNED,
    FORM_FLAG_PRESENT: V_INT, FORM_IMPLICIT_CONST: V_INT, FORM_DATA16: V_OTHER,
    FORM_BLOCK1: V_OTHER, FORM_BLOCK2: V_OTHER, FORM_BLOCK4: V_OTHER, FORM_BLOCK: V_OTHER,
    FORM_EXPRLOC: V_OTHER, FORM_REF_SIG8: V_OTHER,
}
_CONSTANT_FORMS = frozenset((FORM_DATA1, FORM_DATA2, FORM_DATA4, FORM_DATA8, FORM_UDATA,
                             FORM_SDATA, FORM_IMPLICIT_CONST))


class AttrSpec(NamedTuple):
    """One attribute of a compiled abbreviation (a named tuple: the DIE reader unpacks it in its
    innermost loop).

    :param slot: where its value goes (-1: not needed, only skipped).
    :param reader: a byte count (> 0) or an ``R_*`` code saying how to read its bytes.
    :param meaning: a ``V_*`` code saying how to interpret the value read.
    :param const: the value of a ``DW_FORM_implicit_const`` (1 for ``DW_FORM_flag_present``).
    """

    slot: int
    reader: int
    meaning: int
    const: int


@dataclass(frozen=True, slots=True)
class Abbrev:
    """A compiled abbreviation.

    :param skip: bytes of the DIE's attributes when all are fixed-size, else -1 (use `attrs`).
    :param wanted: True when some attribute lands in a slot.
    :param sibling_at: offset of a fixed-size ``DW_AT_sibling`` within the DIE's attributes when
        every attribute before it is fixed-size, else -1.
    :param meanings: the ``V_*`` code of the attribute in each slot (-1 for empty slots), so a
        decoded raw value can be interpreted later (string offsets, address indexes...).
    :param codes: the ``DW_AT_*`` code of each of `attrs`, for readers that decode every
        attribute (`symbolizer.dwarf_attrs`).
    """

    tag: int
    has_children: bool
    skip: int
    wanted: bool
    sibling_at: int
    sibling_size: int
    attrs: tuple[AttrSpec, ...]
    meanings: tuple[int, ...]
    codes: tuple[int, ...]


def form_reader(form: int, addr_size: int, offset_size: int, version: int) -> int:
    """The ``R_*`` code for reading `form` in a unit with these sizes; DwarfError if unknown."""
    if form in _FIXED_FORMS:
        return _FIXED_FORMS[form]
    if form in _OFFSET_FORMS:
        return offset_size
    if form == FORM_ADDR:
        return addr_size
    if form == FORM_REF_ADDR:
        return addr_size if version <= 2 else offset_size
    reader = _VARIABLE_FORMS.get(form)
    if reader is None:
        raise DwarfError(f"unknown attribute form 0x{form:x}")
    return reader


def form_meaning(form: int) -> int:
    """The ``V_*`` code saying how a value of `form` is interpreted."""
    return _MEANING.get(form, V_INT)


class AbbrevCompiler:
    """Compiles abbreviation tables for units of one address/offset size and DWARF version.

    Producers repeat the same declarations in every unit's table (libc has 4,000 tables), so a
    declaration is compiled once and found again by its raw bytes; parsing a table is then
    little more than finding where each declaration ends.
    """

    def __init__(self, addr_size: int, offset_size: int, version: int) -> None:
        self._sizes = (addr_size, offset_size, version)
        self._decls: dict[bytes, Abbrev] = {}

    def compile(self, data: bytes, offset: int) -> dict[int, Abbrev]:
        """Parse the table at `offset` of `.debug_abbrev`; DwarfError when it is truncated."""
        try:
            return self._compile(data, offset)
        except IndexError:
            raise DwarfError(f"truncated abbreviation table at 0x{offset:x}") from None

    def _compile(self, data: bytes, pos: int) -> dict[int, Abbrev]:
        table: dict[int, Abbrev] = {}
        decls = self._decls
        while True:
            code = data[pos]
            pos += 1
            if code >= 0x80:
                code, pos = read_uleb(data, pos - 1)
            if code == 0:
                return table
            start = pos
            while data[pos] >= 0x80:            # the tag
                pos += 1
            pos += 2                            # its last byte, DW_CHILDREN_*
            while True:
                attr = data[pos]
                form = data[pos + 1]
                if attr < 0x80 and form < 0x80:
                    pos += 2
                else:
                    attr, pos = read_uleb(data, pos)
                    form, pos = read_uleb(data, pos)
                if form == FORM_IMPLICIT_CONST:
                    while data[pos] >= 0x80:
                        pos += 1
                    pos += 1
                elif attr == 0 and form == 0:
                    break
            raw = data[start:pos]
            abbrev = decls.get(raw)
            if abbrev is None:
                abbrev = _decl(raw, *self._sizes)
                decls[raw] = abbrev
            table[code] = abbrev


def _decl(raw: bytes, addr_size: int, offset_size: int, version: int) -> Abbrev:
    """Compile one declaration (the bytes after its code, through its 0, 0 terminator)."""
    tag, pos = read_uleb(raw, 0)
    has_children = raw[pos] != 0
    pos += 1
    specs: list[AttrSpec] = []
    codes: list[int] = []
    while True:
        attr, pos = read_uleb(raw, pos)
        form, pos = read_uleb(raw, pos)
        const = 0
        if form == FORM_IMPLICIT_CONST:
            const, pos = read_sleb(raw, pos)
        elif form == FORM_FLAG_PRESENT:
            const = 1
        if attr == 0 and form == 0:
            return _abbrev(tag, has_children, specs, tuple(codes))
        specs.append(_spec(attr, form, const, addr_size, offset_size, version))
        codes.append(attr)


def _spec(attr: int, form: int, const: int, addr_size: int, offset_size: int,
          version: int) -> AttrSpec:
    slot = _ATTR_SLOTS.get(attr, -1)
    if slot == SLOT_HIGH and form in _CONSTANT_FORMS:
        slot = SLOT_HIGH_OFFSET
    return AttrSpec(slot, form_reader(form, addr_size, offset_size, version), form_meaning(form),
                    const)


def _abbrev(tag: int, has_children: bool, specs: list[AttrSpec],
            codes: tuple[int, ...]) -> Abbrev:
    skip = 0
    sibling_at = sibling_size = -1
    for spec in specs:
        if spec.slot == SLOT_SIBLING and skip >= 0 and spec.reader > 0 \
                and spec.meaning == V_REF_UNIT:
            sibling_at, sibling_size = skip, spec.reader
        if spec.reader >= 0 and skip >= 0:
            skip += spec.reader
        else:
            skip = -1
    meanings = [-1] * NUM_SLOTS
    for spec in specs:
        if spec.slot >= 0:
            meanings[spec.slot] = spec.meaning
    wanted = any(spec.slot >= 0 for spec in specs)
    return Abbrev(tag, has_children, skip, wanted, sibling_at, sibling_size, tuple(specs),
                  tuple(meanings), codes)
