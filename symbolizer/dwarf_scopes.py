"""The scope tree of a function: subprogram → lexical blocks → inlined subroutines, with the
variables and parameters each declares, their C types and their DWARF locations.

A concrete DIE of an inlined instance (or of an out-of-line copy of an inline function) often
carries only ``DW_AT_abstract_origin`` and its location: name, type and declaration coordinates
come from the abstract DIE, possibly in another unit or in the dwz alt file. `ScopeBuilder`
resolves all of that once, so the resulting values are plain data:

    scope = ScopeBuilder(reader, namer).build(subprogram_die)
    for s in scope.chain_at(elf_addr):          # outermost first
        for var in s.variables:
            var.location_at(elf_addr)            # expression bytes, or None (optimized out)

Locations keep their raw expressions and pc ranges, and subprograms their ``DW_AT_frame_base``,
so the values can later be turned into reads without decoding DWARF again.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from symbolizer.dwarf_attrs import (
    AT_CALL_FILE, AT_CALL_LINE, AT_CONST_VALUE, AT_DECL_FILE, AT_DECL_LINE, AT_ENTRY_PC,
    AT_FRAME_BASE, AT_LOCATION, AT_NAME, AT_TYPE, AttrValue, Die, DieReader,
)
from symbolizer.dwarf_lines import read_file_table
from symbolizer.dwarf_locations import Location, read_location
from symbolizer.dwarf_types import TypeNamer
from symbolizer.dwarf_units import DwarfFile, UnitHeader

TAG_LEXICAL_BLOCK, TAG_PARAMETER, TAG_INLINED, TAG_SUBPROGRAM = 0x0B, 0x05, 0x1D, 0x2E
TAG_VARIABLE = 0x34


class ScopeKind(enum.Enum):
    """What opened a scope."""

    SUBPROGRAM = "subprogram"
    INLINED = "inlined"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Variable:
    """A variable or parameter as declared in one scope.

    :param type_name: its C type, spelled as ``stap -L`` spells it (`symbolizer.dwarf_types`).
    :param location: ``DW_AT_location``, None without one (a constant, or optimized out).
    :param const_value: ``DW_AT_const_value``: the value itself, no location needed.
    :param die_offset: of the concrete DIE, in the file it was read from.
    """

    name: str
    type_name: str
    is_parameter: bool
    location: Location | None
    const_value: AttrValue | None
    die_offset: int

    def location_at(self, elf_addr: int) -> bytes | None:
        """The location expression valid at `elf_addr`, None where there is none."""
        return None if self.location is None else self.location.at(elf_addr)

    def available_at(self, elf_addr: int) -> bool:
        """Whether the value can be known at `elf_addr`: a constant, or a location there."""
        return self.const_value is not None or self.location_at(elf_addr) is not None


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope with code.

    :param name: the function's ``DW_AT_name`` (through its abstract origin) for subprograms
        and inlined instances, None for blocks.
    :param ranges: its code as (start, end) ELF address pairs, in the producer's order.
    :param entry_pc: where execution enters it (``DW_AT_entry_pc``, else the first range).
    :param decl_file, decl_line: the function's declaration (subprograms and inlined instances).
    :param call_file, call_line: the call site of an inlined instance.
    :param frame_base: a subprogram's ``DW_AT_frame_base`` (``DW_OP_fbreg`` is relative to it).
    :param abstract_offset: offset of the abstract DIE its origin chain ends at (itself without
        one), to find every instance of one function.
    """

    kind: ScopeKind
    die_offset: int
    abstract_offset: int
    name: str | None
    ranges: tuple[tuple[int, int], ...]
    entry_pc: int | None
    decl_file: str | None
    decl_line: int | None
    call_file: str | None
    call_line: int | None
    frame_base: Location | None
    variables: tuple[Variable, ...]
    children: tuple[Scope, ...]

    def covers(self, elf_addr: int) -> bool:
        """Whether `elf_addr` is in the scope's code."""
        return any(start <= elf_addr < end for start, end in self.ranges)

    def chain_at(self, elf_addr: int) -> tuple[Scope, ...]:
        """This scope and the nested scopes covering `elf_addr`, outermost first; () when this
        scope does not cover it."""
        if not self.covers(elf_addr):
            return ()
        for child in self.children:
            inner = child.chain_at(elf_addr)
            if inner:
                return (self,) + inner
        return (self,)

    def walk(self) -> tuple[Scope, ...]:
        """This scope and all nested ones, in DIE order (parents first)."""
        out: list[Scope] = [self]
        for child in self.children:
            out.extend(child.walk())
        return tuple(out)


class ScopeBuilder:
    """Builds `Scope` trees from DIEs, sharing file tables and type names between builds."""

    def __init__(self, reader: DieReader, namer: TypeNamer) -> None:
        self._reader = reader
        self._namer = namer
        self._files: dict[tuple[int, int], tuple[str | None, ...]] = {}

    def build(self, die: Die) -> Scope:
        """The scope tree under a subprogram, inlined-subroutine or lexical-block DIE."""
        reader = self._reader
        kind = {TAG_SUBPROGRAM: ScopeKind.SUBPROGRAM, TAG_INLINED: ScopeKind.INLINED}.get(
            die.tag, ScopeKind.BLOCK)
        variables: list[Variable] = []
        children: list[Scope] = []
        for child in reader.children(die):
            if child.tag in (TAG_VARIABLE, TAG_PARAMETER):
                var = self._variable(child)
                if var is not None:
                    variables.append(var)
            elif child.tag in (TAG_LEXICAL_BLOCK, TAG_INLINED):
                children.append(self.build(child))
        is_function = kind is not ScopeKind.BLOCK
        name = reader.integrated(die, AT_NAME) if is_function else None
        decl_line = reader.integrated(die, AT_DECL_LINE) if is_function else None
        frame_base = die.attrs.get(AT_FRAME_BASE)
        return Scope(
            kind=kind,
            die_offset=die.offset,
            abstract_offset=reader.origin(die).offset,
            name=name if isinstance(name, str) else None,
            ranges=die.ranges,
            entry_pc=_entry_pc(die),
            decl_file=self.decl_file(die) if is_function else None,
            decl_line=decl_line if isinstance(decl_line, int) else None,
            call_file=self._file(die.dfile, die.unit, die.int_attr(AT_CALL_FILE)),
            call_line=die.int_attr(AT_CALL_LINE),
            frame_base=None if frame_base is None else read_location(die.dfile, die.unit,
                                                                     frame_base),
            variables=tuple(variables),
            children=tuple(children),
        )

    def _variable(self, die: Die) -> Variable | None:
        reader = self._reader
        name = reader.integrated(die, AT_NAME)
        if not isinstance(name, str):
            return None             # its abstract DIE is in a missing alt file
        location = die.attrs.get(AT_LOCATION)
        const = reader.integrated(die, AT_CONST_VALUE)
        return Variable(
            name=name,
            type_name=self._namer.name(reader.integrated_ref(die, AT_TYPE)),
            is_parameter=die.tag == TAG_PARAMETER,
            location=None if location is None else read_location(die.dfile, die.unit, location),
            const_value=const,
            die_offset=die.offset,
        )

    def decl_file(self, die: Die) -> str | None:
        """The full path of the file `die` (through its origin) is declared in."""
        holder = self._reader.holder(die, AT_DECL_FILE)
        if holder is None:
            return None
        return self._file(holder.dfile, holder.unit, holder.int_attr(AT_DECL_FILE))

    def _file(self, dfile: DwarfFile, unit: UnitHeader, index: int | None) -> str | None:
        """Entry `index` of the file table of `unit`'s line program, as a full path."""
        if index is None:
            return None
        key = (id(dfile), unit.offset)
        files = self._files.get(key)
        if files is None:
            root = dfile.root(unit)
            files = () if root.stmt_list is None else read_file_table(
                dfile.sections, root.stmt_list, root.comp_dir, root.name)
            self._files[key] = files
        return files[index] if 0 <= index < len(files) else None


def _entry_pc(die: Die) -> int | None:
    """``DW_AT_entry_pc`` (an address, or in DWARF 5 possibly an offset from the lowest pc),
    else the start of the first range, as libdw's ``dwarf_entrypc`` and perf's
    ``die_entrypc`` find it."""
    entry = die.int_attr(AT_ENTRY_PC)
    if not die.ranges:
        return entry
    if entry is None:
        return die.ranges[0][0]
    low = min(start for start, _ in die.ranges)
    return entry if entry >= low else low + entry
