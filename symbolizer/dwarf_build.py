"""Builds a `CuIndex` from one unit's DIEs and line program.

`CuBuilder.build` scans the unit (and the partial units it imports through
``DW_TAG_imported_unit``, as dwz produces), resolves every name, decodes the line program, then
cuts each subprogram range into segments at every boundary of the inlined instances inside it
and records the chain of scopes covering each segment.
"""
from __future__ import annotations

import sys
from array import array

from symbolizer.dwarf_cu import NO_CHAIN, Chain, CuIndex, Scope
from symbolizer.dwarf_dies import UnitScan, scan_unit
from symbolizer.dwarf_lines import LineTable, read_file_table, read_line_table
from symbolizer.dwarf_names import NameResolver
from symbolizer.dwarf_units import ALT_REF, DwarfFile, UnitHeader

_MAX_IMPORT_DEPTH = 8
# An inline tree item: (scope index, flattened ranges (start, end, start, end...), position in
# the owner's item list just past this item's subtree).
_Item = tuple[int, tuple[int, ...], int]


class CuBuilder:
    """Builds `CuIndex`es for the units of one debug file, sharing what units have in common:
    resolved names, and the scans and file tables of imported (partial) units."""

    def __init__(self, main: DwarfFile) -> None:
        self.main = main
        self._names = NameResolver(main)
        self._scans: dict[tuple[int, int], UnitScan] = {}
        self._files: dict[tuple[int, int], tuple[str | None, ...]] = {}

    def build(self, unit: UnitHeader) -> CuIndex:
        """Index `unit` of the main file; DwarfError when its DWARF cannot be decoded."""
        root = self.main.root(unit)
        if root.stmt_list is not None:
            lines = read_line_table(self.main.sections, root.stmt_list, root.comp_dir, root.name)
            files = tuple(_intern(f) for f in lines.files)
            lines = LineTable(lines.addrs, lines.file_idx, lines.lines, lines.columns, files)
        else:
            lines = LineTable(array("Q"), array("I"), array("I"), array("I"), ())
        key = (id(self.main), unit.offset)
        self._files[key] = lines.files
        scopes: list[Scope] = []
        parents: list[int] = []
        flats: list[tuple[int, ...]] = []
        try:
            self._collect(self.main, unit, scopes, parents, flats, set(), 0)
        finally:
            del self._files[key]
        starts, chain_ids, chains = _segments(scopes, parents, flats)
        return CuIndex(starts, chain_ids, chains, tuple(scopes), lines)

    def _collect(self, dfile: DwarfFile, unit: UnitHeader, scopes: list[Scope],
                 parents: list[int], flats: list[tuple[int, ...]], seen: set[tuple[int, int]],
                 depth: int) -> None:
        """Add the scopes of `unit` (and, recursively, of the units it imports) to the lists."""
        key = (id(dfile), unit.offset)
        seen.add(key)
        scan = self._scans.get(key)
        if scan is None:
            scan = scan_unit(dfile, unit)
            if depth > 0:                   # imported units are shared by many units
                self._scans[key] = scan
        base = len(scopes)
        for die in scan.scopes:
            call_file = None
            if die.inlined and die.call_file is not None:
                files = self._file_table(dfile, unit)
                if die.call_file < len(files):
                    call_file = files[die.call_file]
            scopes.append((self._names.name_of(die, dfile), die.inlined, call_file,
                           die.call_line, die.call_column))
            parents.append(-1 if die.parent < 0 else base + die.parent)
            flats.append(tuple(x for r in die.ranges for x in r))
        for ref in scan.imports:
            target = dfile.alt if ref & ALT_REF else dfile
            if target is None or depth >= _MAX_IMPORT_DEPTH:
                continue
            imported = target.unit_for(ref & ~ALT_REF)
            if (id(target), imported.offset) not in seen:
                self._collect(target, imported, scopes, parents, flats, seen, depth + 1)

    def _file_table(self, dfile: DwarfFile, unit: UnitHeader) -> tuple[str | None, ...]:
        key = (id(dfile), unit.offset)
        files = self._files.get(key)
        if files is None:
            root = dfile.root(unit)
            files = ()
            if root.stmt_list is not None:
                files = tuple(_intern(f) for f in read_file_table(
                    dfile.sections, root.stmt_list, root.comp_dir, root.name))
            self._files[key] = files
        return files


def _segments(scopes: list[Scope], parents: list[int], flats: list[tuple[int, ...]],
              ) -> tuple[array[int], array[int], tuple[Chain, ...]]:
    """Cut the subprogram ranges into segments of constant scope chain (see `CuIndex`)."""
    trees = _inline_trees(scopes, parents, flats)
    ranges = sorted((flat[k], flat[k + 1], index) for index, flat in enumerate(flats)
                    if not scopes[index][1] for k in range(0, len(flat), 2))
    chain_ids: dict[Chain, int] = {}
    pieces: list[tuple[int, int, int]] = []
    previous: tuple[int, int] | None = None
    for start, end, owner in ranges:
        if (start, end) == previous:
            continue        # an alias (assembler ENTRY) sharing the range: the first DIE wins
        previous = (start, end)
        items = trees.get(owner, ())
        cuts = {start, end}
        for _, flat, _ in items:
            cuts.update(x for x in flat if start < x < end)
        bounds = sorted(cuts)
        for lo, hi in zip(bounds, bounds[1:]):
            chain = (_chain_at(items, owner, lo), start, end)
            cid = chain_ids.setdefault(chain, len(chain_ids))
            if pieces and pieces[-1][2] == cid and pieces[-1][1] == lo:
                pieces[-1] = (pieces[-1][0], hi, cid)
            else:
                pieces.append((lo, hi, cid))
    pieces.sort()
    starts, ids = array("Q"), array("I")
    ends_at = 0
    for lo, hi, cid in pieces:
        if starts:
            if hi <= ends_at:
                continue                    # inside an earlier function's range: keep that
            if lo > ends_at:
                starts.append(ends_at)      # a gap between functions
                ids.append(NO_CHAIN)
            lo = max(lo, ends_at)
        starts.append(lo)
        ids.append(cid)
        ends_at = hi
    if starts:
        starts.append(ends_at)
        ids.append(NO_CHAIN)
    chains = tuple(sorted(chain_ids, key=chain_ids.__getitem__))
    return starts, ids, chains


def _chain_at(items: tuple[_Item, ...], owner: int, elf_addr: int) -> tuple[int, ...]:
    """Scope indexes covering `elf_addr` innermost first, ending with `owner`."""
    chain = [owner]
    i, limit = 0, len(items)
    while i < limit:
        index, flat, after = items[i]
        if _covers(flat, elf_addr):         # descend: its subtree follows it
            chain.append(index)
            i, limit = i + 1, after
        else:
            i = after
    return tuple(reversed(chain))


def _covers(flat: tuple[int, ...], elf_addr: int) -> bool:
    for k in range(0, len(flat), 2):
        if flat[k] <= elf_addr < flat[k + 1]:
            return True
    return False


def _inline_trees(scopes: list[Scope], parents: list[int], flats: list[tuple[int, ...]],
                  ) -> dict[int, tuple[_Item, ...]]:
    """The inlined instances of each subprogram in DIE order (parents first) as `_Item`s."""
    depth: dict[int, int] = {}
    top: dict[int, int] = {}
    grouped: dict[int, list[int]] = {}
    for index, scope in enumerate(scopes):
        parent = parents[index]
        if not scope[1] or parent < 0:
            continue
        depth[index] = depth.get(parent, 0) + 1
        top[index] = top.get(parent, parent)
        grouped.setdefault(top[index], []).append(index)
    out = {}
    for owner, members in grouped.items():
        after = [len(members)] * len(members)
        open_items: list[int] = []          # positions whose subtree is still open
        for pos, index in enumerate(members):
            while open_items and depth[members[open_items[-1]]] >= depth[index]:
                after[open_items.pop()] = pos
            open_items.append(pos)
        out[owner] = tuple((index, flats[index], after[pos]) for pos, index in enumerate(members))
    return out


def _intern(value: str | None) -> str | None:
    return sys.intern(value) if value is not None else None
