"""Probe-able source lines of a function and the variables available at each.

The lines are chosen the way ``perf probe -L`` chooses them (tools/perf/util/probe-finder.c and
dwarf-aux.c, ``die_walk_lines`` / ``line_range_walk_cb``), so the listing can be checked against
it line for line. For each instance of the function (itself, or its inlined copies):

- the unit's ``is_stmt`` line rows whose address is in the instance's code; a row inside an
  inlined callee counts only as that callee's call site (the callee's ``DW_AT_call_line``), or
  when the callee is a copy of the function itself;
- the function's declaration line at the instance's entry pc, and the call line of each inlined
  callee (not nested deeper) at the callee's entry pc;
- of these, the lines in the function's declaration file at or after its declaration line that
  are *reversible*: the first ``is_stmt`` row at the address (or, at a function's entry, its
  declaration line) gives back the same line — else the address belongs to another line.

A line's variables are those declared in the instance and in every nested scope (lexical block,
inlined callee) that covers the line's first address, with a location or a constant value
there; an inner declaration hides an outer one of the same name. Innermost scopes come first,
as in ``stap -L``.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from symbolizer.dwarf_lines import NO_FILE, LineRows, tail_match
from symbolizer.dwarf_locations import Location
from symbolizer.dwarf_scopes import Scope, ScopeKind, Variable

#: A subprogram of the unit: its entry pc, its ranges and its DIE offset.
RealFunction = tuple[int, tuple[tuple[int, int], ...], int]
#: The (decl file, decl line) of the subprogram DIE at an offset.
DeclOf = Callable[[int], tuple[str | None, int | None]]


@dataclass(frozen=True, slots=True)
class StatementPoint:
    """One probe-able line of a function.

    :param address: the first (lowest) ELF address of the line in the function; `addresses`
        all of them.
    :param variables: available at `address`, innermost scope first.
    :param unavailable: in scope at `address` but without a location there (optimized out).
    :param frame_base: ``DW_AT_frame_base`` of the subprogram holding the code (for
        ``DW_OP_fbreg`` locations).
    :param entry_pc: that subprogram's entry (where entry values are the registers).
    """

    function: str
    file: str
    line: int
    address: int
    addresses: tuple[int, ...]
    variables: tuple[Variable, ...]
    unavailable: tuple[Variable, ...]
    frame_base: Location | None
    entry_pc: int | None = None


def variables_at(chain: tuple[Scope, ...], elf_addr: int,
                 ) -> tuple[tuple[Variable, ...], tuple[Variable, ...]]:
    """(available, unavailable): the variables in scope at `elf_addr` in the scopes of `chain`
    (outermost first), innermost scope first, split by whether they have a location (or a
    constant value) there. A name declared in an inner scope hides outer ones, even when the
    inner one has no location."""
    seen: set[str] = set()
    available: list[Variable] = []
    unavailable: list[Variable] = []
    for scope in reversed(chain):
        for var in scope.variables:
            if var.name not in seen:
                seen.add(var.name)
                (available if var.available_at(elf_addr) else unavailable).append(var)
    return tuple(available), tuple(unavailable)


class LineChooser:
    """Chooses probe-able lines in one unit.

    :param rows: the unit's line rows (every row, with is_stmt).
    :param real_functions: the unit's subprograms with code, for the reversibility check,
        and `decl_of` to read the declaration of one of them.
    """

    def __init__(self, rows: LineRows, real_functions: list[RealFunction],
                 decl_of: DeclOf) -> None:
        self._rows = rows
        self._real = real_functions
        self._decl_of = decl_of

    def points(self, name: str, decl_file: str, decl_line: int,
               instances: list[tuple[Scope, Scope]]) -> list[StatementPoint]:
        """The probe-able lines of the function `name` declared at `decl_file:decl_line`, from
        its instances given as (instance scope, subprogram scope holding it)."""
        by_line: dict[int, dict[int, tuple[Scope, Scope]]] = {}
        for instance, holder in instances:
            for file, line, addr in self._candidates(instance):
                if (line >= decl_line and tail_match(file, decl_file)
                        and self._reversible(addr, file, line)):
                    by_line.setdefault(line, {}).setdefault(addr, (instance, holder))
        points = []
        for line in sorted(by_line):
            addrs = by_line[line]
            address = min(addrs)
            instance, holder = addrs[address]
            points.append(StatementPoint(
                name, decl_file, line, address, tuple(sorted(addrs)),
                *variables_at(instance.chain_at(address), address), holder.frame_base,
                holder.entry_pc))
        return points

    def _candidates(self, instance: Scope) -> list[tuple[str, int, int]]:
        """(file, line, address) of the rows and call sites perf walks for one instance."""
        rows = self._rows
        out: list[tuple[str, int, int]] = []
        for start, end in instance.ranges:
            i = bisect.bisect_left(rows.addrs, start)
            while i < len(rows.addrs) and rows.addrs[i] < end:
                f = rows.file_idx[i]
                if f != NO_FILE and rows.is_stmt[i]:
                    addr, line = rows.addrs[i], rows.lines[i]
                    file = rows.files[f] if f < len(rows.files) else None
                    if file is not None and self._own_row(instance, addr, file, line):
                        out.append((file, line, addr))
                i += 1
        if instance.decl_file and instance.decl_line and instance.entry_pc is not None:
            out.append((instance.decl_file, instance.decl_line, instance.entry_pc))
        out.extend((s.call_file, s.call_line, s.entry_pc) for s in _callees(instance)
                   if s.call_file and s.call_line and s.entry_pc is not None)
        return out

    @staticmethod
    def _own_row(instance: Scope, addr: int, file: str, line: int) -> bool:
        """A row inside an inlined callee belongs to the instance only at the callee's call
        line, or when the callee is the function itself (declared at the same place)."""
        inner = [s for s in instance.chain_at(addr)[1:] if s.kind is ScopeKind.INLINED]
        if not inner:
            return True
        callee = inner[-1]
        if callee.call_file == instance.decl_file and callee.call_line == line:
            return True
        return callee.decl_line == instance.decl_line and callee.decl_file == instance.decl_file

    def _reversible(self, addr: int, file: str, line: int) -> bool:
        """perf's ``cu_find_lineinfo`` check: does `addr` map back to `file:line`?"""
        for entry, ranges, offset in self._real:
            if entry == addr and any(s <= addr < e for s, e in ranges):
                return self._decl_of(offset) == (file, line)
        row = self._first_stmt_row(addr)
        if row is None:
            return True
        return row == (file, line)

    def _first_stmt_row(self, addr: int) -> tuple[str | None, int] | None:
        """The first is_stmt row among the rows at the last address <= `addr`, None when there
        is none at or before `addr` (perf's ``cu_getsrc_die``)."""
        rows = self._rows
        i = bisect.bisect_right(rows.addrs, addr) - 1
        if i < 0:
            return None
        i = bisect.bisect_left(rows.addrs, rows.addrs[i])
        while i < len(rows.addrs) and rows.addrs[i] <= addr:
            f = rows.file_idx[i]
            if rows.is_stmt[i] and f != NO_FILE:
                return (rows.files[f] if f < len(rows.files) else None), rows.lines[i]
            i += 1
        return None


def _callees(scope: Scope) -> list[Scope]:
    """Inlined instances directly in `scope` (through lexical blocks, not through callees)."""
    out = []
    for child in scope.children:
        if child.kind is ScopeKind.INLINED:
            out.append(child)
        else:
            out.extend(_callees(child))
    return out
