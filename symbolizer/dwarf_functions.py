"""Finding a function's DWARF definition, and every instance of it, by name.

The cheap way in is an address: the ELF symbol of a function that has code says where it is,
`.debug_aranges` says which unit holds that code, and only that unit is read. Functions with no
symbol (static inline functions that exist only as inlined copies) and globs need a name index:
every unit is scanned once for the names of its subprograms and inlined instances, and the
result (name → units) is kept per build-id under the cache root (``funcs/<build-id>.v1``).

Inside a unit the definition is found as perf and SystemTap find it: the first top-level
``DW_TAG_subprogram`` with that ``DW_AT_name`` (through its abstract origin) that is not a
declaration and either has code or is an abstract inline function. A definition with code is
its own single instance; an abstract one has as instances the concrete out-of-line copies and
the inlined subroutines of the unit whose abstract origin it is.
"""
from __future__ import annotations

import fnmatch
import marshal
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from symbolizer.dwarf_aranges import CuMap
from symbolizer.dwarf_attrs import AT_DECLARATION, AT_INLINE, AT_NAME, Die, DieReader
from symbolizer.dwarf_dies import UnitScan, scan_unit
from symbolizer.dwarf_names import NameResolver
from symbolizer.dwarf_sections import DwarfError
from symbolizer.dwarf_store import write_atomic
from symbolizer.dwarf_units import ALT_REF, DwarfFile, UnitHeader

TAG_SUBPROGRAM = 0x2E
_MAGIC = "ubt-funcs-1"


@dataclass(frozen=True, slots=True)
class FunctionDef:
    """A function's definition DIE and the DIEs of its instances (all in `unit`)."""

    name: str
    unit: UnitHeader
    definition: Die
    instances: tuple[Die, ...]


class FunctionFinder:
    """Finds function definitions in one debug file.

    :param cache_path: where the name index is persisted (None: not persisted).
    """

    def __init__(self, main: DwarfFile, reader: DieReader, cu_map: CuMap,
                 cache_path: str | None) -> None:
        self.main = main
        self._reader = reader
        self._cu_map = cu_map
        self._cache_path = cache_path
        self._names: dict[str, tuple[int, ...]] | None = None
        self._scans: dict[int, UnitScan] = {}

    def find(self, pattern: str, hint_addrs: Sequence[int] = ()) -> list[FunctionDef]:
        """Definitions whose name matches `pattern` (a name or an fnmatch glob), one per name
        and unit, in unit order. `hint_addrs` (ELF addresses of matching symbols) name the units
        to read first; the name index is used only when they give nothing, or for a glob. A
        name that is only an alias symbol gives the function whose code the symbol starts."""
        is_glob = any(c in pattern for c in "*?[")
        match: Callable[[str], bool] = (lambda n: fnmatch.fnmatchcase(n, pattern)) if is_glob \
            else (lambda n: n == pattern)
        units: list[int] = []
        for addr in hint_addrs:
            unit = self._cu_map.unit_for(addr)
            if unit is not None and unit not in units:
                units.append(unit)
        found = [d for u in units for d in self._defs_in(u, match)]
        if not found and not is_glob:       # an alias symbol (opendir for __opendir)
            found = [d for u in units for d in self._defs_in(u, lambda n: True)
                     if any(s <= a < e for s, e in d.definition.ranges for a in hint_addrs)]
        if found and not is_glob:
            return found
        seen = set(units)
        index = self.name_index()
        more = sorted({u for name, us in index.items() if match(name) for u in us} - seen)
        found += [d for u in more for d in self._defs_in(u, match)]
        return sorted(found, key=lambda d: (d.unit.offset, d.name))

    def scan(self, unit_offset: int) -> UnitScan:
        """The fast scan of a unit: its subprograms with code and their inlined instances."""
        scan = self._scans.get(unit_offset)
        if scan is None:
            scan = self._scans[unit_offset] = scan_unit(self.main, self.main.unit_for(unit_offset))
        return scan

    def name_index(self) -> dict[str, tuple[int, ...]]:
        """Function name → offsets of the units defining or inlining it (loaded or built)."""
        if self._names is None:
            self._names = self._load_index()
            if self._names is None:
                self._names = self._build_index()
                if self._cache_path:
                    try:
                        write_atomic(self._cache_path, marshal.dumps((_MAGIC, self._names)))
                    except OSError:
                        pass            # a cache that cannot be written is only a lost speed-up
        return self._names

    def _load_index(self) -> dict[str, tuple[int, ...]] | None:
        if not self._cache_path or not os.path.exists(self._cache_path):
            return None
        try:
            with open(self._cache_path, "rb") as f:
                magic, names = marshal.loads(f.read())
        except (OSError, ValueError, EOFError, TypeError):
            return None
        return names if magic == _MAGIC and isinstance(names, dict) else None

    def _build_index(self) -> dict[str, tuple[int, ...]]:
        names: dict[str, list[int]] = {}
        resolver = NameResolver(self.main)
        for unit in self.main.units:
            try:
                scan = scan_unit(self.main, unit)
                for die in scan.scopes:
                    name = resolver.name_of(die, self.main)
                    if name is not None:
                        units = names.setdefault(name, [])
                        if not units or units[-1] != unit.offset:
                            units.append(unit.offset)
            except DwarfError:
                continue                # a corrupt unit: its functions cannot be listed anyway
        return {name: tuple(units) for name, units in names.items()}

    def _defs_in(self, unit_offset: int, match: Callable[[str], bool]) -> list[FunctionDef]:
        """The first definition of each matching name among the unit's top-level DIEs."""
        reader = self._reader
        unit = self.main.unit_for(unit_offset)
        root = reader.die(self.main, unit.die_offset)
        out: dict[str, FunctionDef] = {}
        for die in reader.children(root):
            if die.tag != TAG_SUBPROGRAM or die.attrs.get(AT_DECLARATION):
                continue
            name = reader.integrated(die, AT_NAME)
            if not isinstance(name, str) or name in out or not match(name):
                continue
            if die.ranges:
                out[name] = FunctionDef(name, unit, die, (die,))
            elif AT_INLINE in die.attrs:
                out[name] = FunctionDef(name, unit, die, self._instances(unit_offset, die))
        return list(out.values())

    def _instances(self, unit_offset: int, abstract: Die) -> tuple[Die, ...]:
        """The concrete DIEs with code whose abstract origin is `abstract`, in DIE order."""
        want = abstract.offset if abstract.dfile is self.main else abstract.offset | ALT_REF
        return tuple(self._reader.die(self.main, s.offset) for s in self.scan(unit_offset).scopes
                     if s.origin == want)
