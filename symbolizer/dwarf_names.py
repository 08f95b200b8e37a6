"""Function names through ``DW_AT_abstract_origin`` / ``DW_AT_specification`` chains.

A concrete subprogram or inlined instance often carries no name of its own: it points at an
abstract instance, which may point at a declaration inside a class, possibly in another unit
(``DW_FORM_ref_addr``) or in the dwz alt file (``DW_FORM_GNU_ref_alt``). The name shown is the
linkage name if any DIE of the chain has one (``DW_AT_linkage_name``, ``DW_AT_MIPS_linkage_name``),
else the first ``DW_AT_name`` — the rule of libdw's ``dwarf_attr_integrate`` as used by
``eu-addr2line -f`` and of llvm-symbolizer's linkage-name mode. C++ names thus come back mangled;
the symbolizer facade demangles them.
"""
from __future__ import annotations

import sys

from symbolizer.dwarf_dies import ScopeDie
from symbolizer.dwarf_forms import SLOT_LINKAGE, SLOT_NAME, SLOT_ORIGIN, SLOT_SPEC
from symbolizer.dwarf_sections import DwarfError
from symbolizer.dwarf_units import ALT_REF, DwarfFile

_MAX_CHAIN = 16     # longer chains are cycles in corrupt data


class NameResolver:
    """Resolves scope names, memoizing each referenced DIE's (linkage name, name)."""

    def __init__(self, main: DwarfFile) -> None:
        self._main = main
        self._memo: dict[tuple[int, int], tuple[str | None, str | None]] = {}

    def name_of(self, scope: ScopeDie, dfile: DwarfFile) -> str | None:
        """The name to show for `scope`, found in `dfile` (main or alt file)."""
        linkage, name = scope.linkage_name, scope.name
        if linkage is None and scope.origin is not None:
            chain_linkage, chain_name = self._follow(dfile, scope.origin, 0)
            linkage = chain_linkage
            name = name or chain_name
        result = linkage or name
        return sys.intern(result) if result is not None else None

    def _follow(self, dfile: DwarfFile, ref: int, depth: int) -> tuple[str | None, str | None]:
        """(linkage name, name) of the chain starting at reference `ref` made from `dfile`."""
        if ref & ALT_REF:
            if dfile.alt is None:           # the alt file is missing: the name is unknown
                return None, None
            return self._chain(dfile.alt, ref & ~ALT_REF, depth)
        return self._chain(dfile, ref, depth)

    def _chain(self, dfile: DwarfFile, offset: int, depth: int) -> tuple[str | None, str | None]:
        key = (id(dfile), offset)
        found = self._memo.get(key)
        if found is not None:
            return found
        if depth > _MAX_CHAIN:
            raise DwarfError(f"{dfile.sections.path}: DIE reference cycle at 0x{offset:x}")
        unit, abbrev, vals, _ = dfile.read_die(offset)
        root = dfile.root(unit)
        m = abbrev.meanings
        linkage = dfile.string(unit, root, m[SLOT_LINKAGE], vals[SLOT_LINKAGE])
        name = dfile.string(unit, root, m[SLOT_NAME], vals[SLOT_NAME])
        ref = vals[SLOT_ORIGIN]
        if ref is None:
            ref = vals[SLOT_SPEC]
        if linkage is None and isinstance(ref, int):
            chain_linkage, chain_name = self._follow(dfile, ref, depth + 1)
            linkage = chain_linkage
            name = name or chain_name
        result = (linkage, name)
        self._memo[key] = result
        return result
