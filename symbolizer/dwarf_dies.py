"""The fast DIE scanner: one pass over a unit collecting only what symbolization needs.

It records subprograms that own code, the inlined instances nested in them (through lexical
blocks) with their call sites, and ``DW_TAG_imported_unit`` references. Every other subtree —
types, variables, parameters, call sites, abstract (inline-only) functions — is stepped over:
with ``DW_AT_sibling`` when the producer gave one, else DIE by DIE using each abbreviation's
precomputed size, never decoding attributes the index does not use.
"""
from __future__ import annotations

from dataclasses import dataclass

from symbolizer.dwarf_forms import (
    NUM_SLOTS, R_BLOCK, R_BLOCK1, R_BLOCK2, R_BLOCK4, R_CSTR, R_INDIRECT, R_SLEB, R_ULEB,
    SLOT_CALL_COLUMN, SLOT_CALL_FILE, SLOT_CALL_LINE, SLOT_DECLARATION, SLOT_HIGH,
    SLOT_HIGH_OFFSET, SLOT_IMPORT, SLOT_LINKAGE, SLOT_LOW, SLOT_NAME, SLOT_ORIGIN, SLOT_RANGES,
    SLOT_SIBLING, SLOT_SPEC, TAG_IMPORTED_UNIT, TAG_INLINED_SUBROUTINE, TAG_LEXICAL_BLOCK,
    TAG_NAMESPACE, TAG_SUBPROGRAM, Abbrev, AttrSpec, read_uleb,
)
from symbolizer.dwarf_ranges import read_ranges
from symbolizer.dwarf_sections import DwarfError
from symbolizer.dwarf_units import DwarfFile, UnitHeader, UnitRoot, read_values

_TOP, _SKIP = -1, -2        # scopes that are not a function: top level, and a skipped subtree
_INTERESTING = frozenset((TAG_SUBPROGRAM, TAG_INLINED_SUBROUTINE, TAG_LEXICAL_BLOCK,
                          TAG_NAMESPACE, TAG_IMPORTED_UNIT))


@dataclass(frozen=True, slots=True)
class ScopeDie:
    """A subprogram with code or an inlined instance, as found by the scanner.

    :param offset: of the DIE in its file's `.debug_info`.
    :param parent: index of the enclosing `ScopeDie` in the unit's list (-1 for subprograms).
    :param ranges: its code as (start, end) pairs, in the order the producer listed them.
    :param name, linkage_name: the DIE's own ``DW_AT_name`` / ``DW_AT_linkage_name``.
    :param origin: ``DW_AT_abstract_origin`` or ``DW_AT_specification`` target (absolute
        offset, ``ALT_REF``-flagged for the alt file), None without one.
    :param call_file, call_line, call_column: the call site of an inlined instance.
    """

    offset: int
    parent: int
    inlined: bool
    ranges: tuple[tuple[int, int], ...]
    name: str | None
    linkage_name: str | None
    origin: int | None
    call_file: int | None
    call_line: int | None
    call_column: int | None


@dataclass(frozen=True, slots=True)
class UnitScan:
    """Everything the scanner found in one unit, scopes in DIE order (parents first)."""

    scopes: tuple[ScopeDie, ...]
    imports: tuple[int, ...]


def scan_unit(dfile: DwarfFile, unit: UnitHeader) -> UnitScan:
    """Scan `unit` of `dfile`; DwarfError on undecodable DIEs (bad codes, truncation)."""
    try:
        return _scan(dfile, unit)
    except IndexError:
        raise DwarfError(f"{dfile.sections.path}: unit at 0x{unit.offset:x} is truncated") \
            from None
    except DwarfError as exc:
        raise DwarfError(f"{dfile.sections.path}: unit at 0x{unit.offset:x}: {exc}") from None


def _scan(dfile: DwarfFile, unit: UnitHeader) -> UnitScan:
    data = dfile.sections.info
    abbrevs = dfile.abbrevs(unit)
    root = dfile.root(unit)
    _, root_abbrev, _, pos = dfile.read_die(unit.die_offset)
    scopes: list[ScopeDie] = []
    imports: list[int] = []
    if not root_abbrev.has_children:
        return UnitScan((), ())
    end = unit.end
    unit_offset = unit.offset
    interesting = _INTERESTING
    stack: list[int] = []
    scope = _TOP
    while pos < end:
        die_offset = pos
        code = data[pos]
        pos += 1
        if code >= 0x80:
            code, pos = read_uleb(data, die_offset)
        if code == 0:
            if not stack:
                break
            scope = stack.pop()
            continue
        ab = abbrevs.get(code)
        if ab is None:
            raise DwarfError(f"bad abbrev code {code} at 0x{die_offset:x}")
        if scope == _SKIP or ab.tag not in interesting:
            if ab.has_children:
                if ab.sibling_at >= 0:
                    at = pos + ab.sibling_at
                    pos = _checked_sibling(
                        unit_offset + int.from_bytes(data[at:at + ab.sibling_size], "little"),
                        pos, end)
                    continue
                vals: list[int | str | None] = [None] * NUM_SLOTS
                pos = read_values(data, pos, ab.attrs, vals, unit)
                sibling = vals[SLOT_SIBLING]
                if isinstance(sibling, int):
                    pos = _checked_sibling(sibling, pos, end)
                    continue
                stack.append(scope)
                scope = _SKIP
            elif ab.skip >= 0:
                pos += ab.skip
            else:
                pos = _skip_attrs(data, pos, ab.attrs, unit)
            continue
        vals = [None] * NUM_SLOTS
        pos = read_values(data, pos, ab.attrs, vals, unit)
        child_scope = _SKIP
        tag = ab.tag
        if tag == TAG_SUBPROGRAM or (tag == TAG_INLINED_SUBROUTINE and scope >= 0):
            ranges = die_ranges(dfile, unit, root, ab, vals)
            if ranges:
                child_scope = len(scopes)
                scopes.append(_scope_die(dfile, unit, root, ab, vals, die_offset,
                                         scope if tag == TAG_INLINED_SUBROUTINE else -1, ranges))
        elif tag == TAG_LEXICAL_BLOCK:
            child_scope = scope if scope >= 0 else _SKIP
        elif tag == TAG_NAMESPACE:
            child_scope = scope if scope == _TOP else _SKIP
        elif tag == TAG_IMPORTED_UNIT:
            target = vals[SLOT_IMPORT]
            if isinstance(target, int):
                imports.append(target)
        if ab.has_children:
            sibling = vals[SLOT_SIBLING]
            if child_scope == _SKIP and isinstance(sibling, int):
                pos = _checked_sibling(sibling, pos, end)
                continue
            stack.append(scope)
            scope = child_scope
    if pos > end:
        raise DwarfError("last DIE runs past the end of its unit")
    return UnitScan(tuple(scopes), tuple(imports))


def _checked_sibling(sibling: int, pos: int, end: int) -> int:
    if sibling < pos or sibling > end:
        raise DwarfError(f"DW_AT_sibling 0x{sibling:x} points outside its unit")
    return sibling


def _skip_attrs(data: bytes, pos: int, attrs: tuple[AttrSpec, ...], unit: UnitHeader) -> int:
    for _slot, reader, _meaning, _const in attrs:
        if reader >= 0:
            pos += reader
        elif reader == R_ULEB or reader == R_SLEB:
            while data[pos] >= 0x80:
                pos += 1
            pos += 1
        elif reader == R_CSTR:
            pos = data.index(b"\0", pos) + 1
        elif reader == R_BLOCK:
            size, pos = read_uleb(data, pos)
            pos += size
        elif reader == R_BLOCK1:
            pos += 1 + data[pos]
        elif reader == R_BLOCK2:
            pos += 2 + int.from_bytes(data[pos:pos + 2], "little")
        elif reader == R_BLOCK4:
            pos += 4 + int.from_bytes(data[pos:pos + 4], "little")
        elif reader == R_INDIRECT:
            vals: list[int | str | None] = [None] * NUM_SLOTS
            pos = read_values(data, pos, (AttrSpec(-1, reader, 0, 0),), vals, unit)
    return pos


def die_ranges(dfile: DwarfFile, unit: UnitHeader, root: UnitRoot, ab: Abbrev,
                vals: list[int | str | None]) -> tuple[tuple[int, int], ...]:
    """The DIE's code ranges; () for declarations, abstract instances and discarded code."""
    if vals[SLOT_DECLARATION]:
        return ()
    ranges = vals[SLOT_RANGES]
    low = vals[SLOT_LOW]
    if isinstance(ranges, int):
        found = read_ranges(dfile.sections, unit.version, unit.addr_size, unit.offset_size,
                            root.base, root.addr_base, root.rnglists_base,
                            ab.meanings[SLOT_RANGES], ranges)
        return tuple(r for r in found if r[0] != 0)
    if low is None:
        return ()
    start = dfile.address(unit, root, ab.meanings[SLOT_LOW], low)
    high_offset, high = vals[SLOT_HIGH_OFFSET], vals[SLOT_HIGH]
    if isinstance(high_offset, int):
        end = start + high_offset
    elif high is not None:
        end = dfile.address(unit, root, ab.meanings[SLOT_HIGH], high)
    else:
        end = start + 1
    if start == 0 or end <= start:      # 0: code the linker discarded
        return ()
    return ((start, end),)


def _scope_die(dfile: DwarfFile, unit: UnitHeader, root: UnitRoot, ab: Abbrev,
               vals: list[int | str | None], offset: int, parent: int,
               ranges: tuple[tuple[int, int], ...]) -> ScopeDie:
    m = ab.meanings
    origin = vals[SLOT_ORIGIN]
    if origin is None:
        origin = vals[SLOT_SPEC]
    return ScopeDie(
        offset=offset,
        parent=parent,
        inlined=ab.tag == TAG_INLINED_SUBROUTINE,
        ranges=ranges,
        name=dfile.string(unit, root, m[SLOT_NAME], vals[SLOT_NAME]),
        linkage_name=dfile.string(unit, root, m[SLOT_LINKAGE], vals[SLOT_LINKAGE]),
        origin=origin if isinstance(origin, int) else None,
        call_file=_opt_int(vals[SLOT_CALL_FILE]),
        call_line=_opt_int(vals[SLOT_CALL_LINE]),
        call_column=_opt_int(vals[SLOT_CALL_COLUMN]),
    )


def _opt_int(value: int | str | None) -> int | None:
    return value if isinstance(value, int) else None
