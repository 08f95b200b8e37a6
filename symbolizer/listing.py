"""Probe points of one debug file: functions with their parameters, and statement lines with
the variables available at each (what ``ubt list`` prints).

`Lister` opens a debug file (and its dwz alt file) with the location sections, finds function
definitions by name (`symbolizer.dwarf_functions`), builds the scope trees of the subprograms
that hold their code (`symbolizer.dwarf_scopes`) and chooses the lines (`symbolizer.
dwarf_statements`). Only the units holding the functions asked for are decoded:

    lister = Lister(debug_path, alt_path, build_id)
    for fn in lister.functions("fx_*", hint_addrs=[...]): ...
    for point in lister.statements("fx_walk", hint_addrs=[0x1234]): ...
"""
from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from symbolizer.dwarf_aranges import build_cu_map
from symbolizer.dwarf_attrs import AT_DECL_LINE, AT_PRODUCER, AT_TYPE, Die, DieReader
from symbolizer.dwarf_call_sites import CallSites, call_sites
from symbolizer.dwarf_functions import FunctionDef, FunctionFinder
from symbolizer.dwarf_lines import NO_FILE, read_line_rows
from symbolizer.dwarf_scopes import Scope, ScopeBuilder, ScopeKind, Variable
from symbolizer.dwarf_sections import LOCATION_SECTIONS, DwarfError, load_sections
from symbolizer.dwarf_statements import LineChooser, StatementPoint, variables_at
from unwind.cfi import cache_root
from symbolizer.dwarf_types import TypeNamer
from symbolizer.dwarf_units import DwarfFile
from symbolizer.var_types import CType, TypeReader

__all__ = ["DwarfError", "FunctionPoint", "Lister", "StatementPoint"]


@dataclass(frozen=True, slots=True)
class FunctionPoint:
    """A function that can be probed by name.

    :param file, line: its declaration; None when DWARF does not say.
    :param entry: ELF address where its first instance (its own code, or the first inlined
        copy of an inline function) is entered; None when it has no instance with code.
    :param parameters: in declaration order, with their types.
    """

    name: str
    file: str | None
    line: int | None
    entry: int | None
    parameters: tuple[Variable, ...]


class Lister:
    """Functions and statement lines of one debug file.

    :param build_id: keys the on-disk name index (``funcs/<build-id>.v1`` under the cache root);
        without one the index is not persisted.
    :raises OSError, DwarfError: the file cannot be read or is not ELF.
    """

    def __init__(self, debug_path: str, alt_path: str | None, build_id: str | None,
                 cache_dir: str | None = None) -> None:
        alt = None
        if alt_path:
            try:
                alt = DwarfFile(load_sections(alt_path, LOCATION_SECTIONS))
            except (OSError, DwarfError):
                alt = None              # names and types defined in the alt file stay unknown
        self.main = DwarfFile(load_sections(debug_path, LOCATION_SECTIONS), alt)
        self._reader = DieReader(self.main)
        namer = TypeNamer(self._reader)
        self._builder = ScopeBuilder(self._reader, namer)
        self.types = TypeReader(self._reader, namer)
        cache = None
        if build_id:
            cache = os.path.join(cache_root(cache_dir), "funcs", f"{build_id}.v1")
        self._cu_map = build_cu_map(self.main)
        self._finder = FunctionFinder(self.main, self._reader, self._cu_map, cache)
        self._trees: dict[int, Scope] = {}
        self._call_sites: dict[int, CallSites | None] = {}

    def function_names(self) -> list[str]:
        """Every function name the debug file defines or inlines (for "did you mean")."""
        return sorted(self._finder.name_index())

    def functions(self, pattern: str, hint_addrs: Sequence[int] = ()) -> list[FunctionPoint]:
        """The functions matching `pattern`, with their parameters."""
        out = []
        for fdef in self._finder.find(pattern, hint_addrs):
            scope = self._builder.build(fdef.definition)
            entry = next((s.entry_pc for s in map(self._instance, fdef.instances)
                          if s.entry_pc is not None), None)
            out.append(FunctionPoint(
                fdef.name, scope.decl_file, scope.decl_line, entry,
                tuple(v for v in scope.variables if v.is_parameter)))
        return out

    def statements(self, pattern: str, hint_addrs: Sequence[int] = ()) -> list[StatementPoint]:
        """The probe-able lines of the functions matching `pattern`, in function then line
        order."""
        return [p for fdef in self._finder.find(pattern, hint_addrs)
                for p in self._points(fdef)]

    def entry_points(self, pattern: str, hint_addrs: Sequence[int] = (),
                     offset: int | None = None) -> list[StatementPoint]:
        """Where a function probe with values goes in each function matching `pattern` (its
        out-of-line code), with the variables there: `offset` bytes past the entry when given,
        else after the prologue as SystemTap and gdb place ``function("f")`` / ``break f``:
        at the entry of optimized code (its location lists are valid from the first
        instruction), after the first line of unoptimized code (whose variables live in stack
        slots the prologue fills): at the next statement row's address."""
        out = []
        for fdef in self._finder.find(pattern, hint_addrs):
            for die in fdef.instances:
                scope = self._instance(die)
                if scope.kind is not ScopeKind.SUBPROGRAM or scope.entry_pc is None:
                    continue
                entry = scope.entry_pc
                addr = entry + offset if offset is not None else self._after_prologue(fdef,
                                                                                      scope)
                chain = scope.chain_at(addr)
                available, unavailable = variables_at(chain, addr)
                out.append(StatementPoint(fdef.name, scope.decl_file or "", scope.decl_line or 0,
                                          addr, (addr,), available, unavailable,
                                          scope.frame_base, entry))
        return out

    def _after_prologue(self, fdef: FunctionDef, scope: Scope) -> int:
        entry = scope.entry_pc
        assert entry is not None
        root = self.main.root(fdef.unit)
        producer = self._reader.die(self.main, fdef.unit.die_offset).str_attr(AT_PRODUCER) or ""
        if root.stmt_list is None or _optimized(producer):
            return entry
        rows = read_line_rows(self.main.sections, root.stmt_list, root.comp_dir, root.name)
        end = next((e for s, e in scope.ranges if s <= entry < e), entry)
        i = bisect.bisect_right(rows.addrs, entry)
        while i < len(rows.addrs) and rows.addrs[i] < end:
            if rows.is_stmt[i] and rows.file_idx[i] != NO_FILE:
                return rows.addrs[i]
            i += 1
        return entry

    def call_sites(self, entry_pc: int) -> CallSites | None:
        """The direct calls of the function entered at `entry_pc` made in its unit, by return
        address (`symbolizer.dwarf_call_sites`); None: entry values cannot be recovered."""
        if entry_pc not in self._call_sites:
            found: CallSites | None = None
            try:
                unit = self._cu_map.unit_for(entry_pc)
                if unit is not None:
                    sub = next((self._reader.die(self.main, s.offset)
                                for s in self._finder.scan(unit).scopes
                                if s.parent < 0 and s.ranges and s.ranges[0][0] == entry_pc),
                               None)
                    if sub is not None:
                        found = call_sites(self._reader, sub)
            except DwarfError:
                found = None
            self._call_sites[entry_pc] = found
        return self._call_sites[entry_pc]

    def variable_type(self, var: Variable) -> CType:
        """The C type of a variable listed by this lister, for reading its value."""
        die = self._reader.die(self.main, var.die_offset)
        return self.types.of(self._reader.integrated_ref(die, AT_TYPE))

    def _points(self, fdef: FunctionDef) -> list[StatementPoint]:
        reader = self._reader
        decl_file = self._builder.decl_file(fdef.definition)
        decl_line = reader.integrated(fdef.definition, AT_DECL_LINE)
        if decl_file is None or not isinstance(decl_line, int):
            return []
        root = self.main.root(fdef.unit)
        if root.stmt_list is None:
            return []
        rows = read_line_rows(self.main.sections, root.stmt_list, root.comp_dir, root.name)
        scan = self._finder.scan(fdef.unit.offset)
        real = [(s.ranges[0][0], s.ranges, s.offset) for s in scan.scopes if s.parent < 0]
        chooser = LineChooser(rows, real, self._decl_of)
        instances = []
        for die in fdef.instances:
            instance = self._instance(die)
            holder = self._holder(die)
            if instance.kind is ScopeKind.INLINED and _redundant(instance):
                continue
            instances.append((instance, holder))
        return chooser.points(fdef.name, decl_file, decl_line, instances)

    def _decl_of(self, offset: int) -> tuple[str | None, int | None]:
        die = self._reader.die(self.main, offset)
        line = self._reader.integrated(die, AT_DECL_LINE)
        return self._builder.decl_file(die), line if isinstance(line, int) else None

    def _holder(self, die: Die) -> Scope:
        """The scope tree of the subprogram whose code holds the instance `die`."""
        scan = self._finder.scan(die.unit.offset)
        index = next(i for i, s in enumerate(scan.scopes) if s.offset == die.offset)
        while scan.scopes[index].parent >= 0:
            index = scan.scopes[index].parent
        offset = scan.scopes[index].offset
        tree = self._trees.get(offset)
        if tree is None:
            tree = self._trees[offset] = self._builder.build(self._reader.die(self.main, offset))
        return tree

    def _instance(self, die: Die) -> Scope:
        """The scope of the instance `die`, found in its subprogram's tree."""
        return next(s for s in self._holder(die).walk() if s.die_offset == die.offset)


def _optimized(producer: str) -> bool:
    """Whether a unit's ``DW_AT_producer`` (gcc records its options) says it was optimized."""
    levels = re.findall(r"(?:^|\s)-O(\S*)", producer)
    return bool(levels) and levels[-1] != "0"


def _redundant(instance: Scope) -> bool:
    """perf skips an inlined instance "called" from its own declaration line (a recursive
    inline whose call site is the function's first line)."""
    return instance.call_line == instance.decl_line and instance.call_file == instance.decl_file
