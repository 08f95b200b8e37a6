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

import os
from collections.abc import Sequence
from dataclasses import dataclass

from symbolizer.dwarf_aranges import build_cu_map
from symbolizer.dwarf_attrs import AT_DECL_LINE, Die, DieReader
from symbolizer.dwarf_functions import FunctionDef, FunctionFinder
from symbolizer.dwarf_lines import read_line_rows
from symbolizer.dwarf_scopes import Scope, ScopeBuilder, ScopeKind, Variable
from symbolizer.dwarf_sections import LOCATION_SECTIONS, DwarfError, load_sections
from symbolizer.dwarf_statements import LineChooser, StatementPoint
from unwind.cfi import cache_root
from symbolizer.dwarf_types import TypeNamer
from symbolizer.dwarf_units import DwarfFile

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
        self._builder = ScopeBuilder(self._reader, TypeNamer(self._reader))
        cache = None
        if build_id:
            cache = os.path.join(cache_root(cache_dir), "funcs", f"{build_id}.v1")
        self._finder = FunctionFinder(self.main, self._reader, build_cu_map(self.main), cache)
        self._trees: dict[int, Scope] = {}

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


def _redundant(instance: Scope) -> bool:
    """perf skips an inlined instance "called" from its own declaration line (a recursive
    inline whose call site is the function's first line)."""
    return instance.call_line == instance.decl_line and instance.call_file == instance.decl_file
