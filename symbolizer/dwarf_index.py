"""The DWARF address index: ELF address → source frames (inline chain, file:line:column).

`DwarfIndex` is built lazily, one compilation unit at a time: `.debug_aranges` says which unit
covers an address, and the first lookup into a unit scans its DIEs and decodes its line program
(`symbolizer.dwarf_build`). What has been built is persisted by build-id under the cache root
(`symbolizer.dwarf_store`), so a warm run answers from the cache without decoding DWARF at all;
units first touched in a run are added to the file by `save()`, which also runs when the index
is garbage-collected or the interpreter exits.

Function names follow ``eu-addr2line -f``: a linkage name (``DW_AT_linkage_name``, through
abstract-origin/specification chains and the dwz alt file) when there is one, else
``DW_AT_name``. So `SourceFrame.function` is the *mangled* name for C++; the facade demangles it
(``fx::Worker::run(int)`` as llvm-symbolizer prints it).

`SourceFrame.entry`/`size` of the subprogram frame describe the subprogram range containing the
address (a function split into hot and cold parts has two), so the offset stays within `size`.

Corrupt DWARF raises `DwarfError` for lookups into the unit that is corrupt; other units work.
"""
from __future__ import annotations

import weakref
from array import array
from dataclasses import dataclass

from symbolizer.dwarf_aranges import CuMap, build_cu_map
from symbolizer.dwarf_build import CuBuilder
from symbolizer.dwarf_cu import CuIndex
from symbolizer.dwarf_sections import DwarfError, load_sections
from symbolizer.dwarf_store import IndexStore, cache_file
from unwind.cfi import cache_root
from symbolizer.dwarf_units import DwarfFile
from symbolizer.frames import SourceFrame

__all__ = ["DwarfError", "DwarfIndex", "FunctionRange", "cache_root"]

# What undecodable data raises in the readers besides DwarfError: reads past the end of a
# section, values that do not fit an array column.
_DATA_ERRORS = (DwarfError, IndexError, ValueError, OverflowError)


@dataclass(frozen=True, slots=True)
class FunctionRange:
    """The subprogram range covering an address: `name` as in `SourceFrame.function`,
    `entry` the start of that range and `size` its length in bytes."""

    name: str | None
    entry: int
    size: int


class DwarfIndex:
    """Address index of one debug file (plus its dwz alt file)."""

    def __init__(self, debug_path: str, alt_path: str | None, store: IndexStore) -> None:
        self._debug_path = debug_path
        self._alt_path = alt_path
        self._store = store
        self._builder: CuBuilder | None = None
        weakref.finalize(self, store.save_quietly)

    @classmethod
    def load_or_build(cls, debug_path: str, alt_path: str | None, build_id: str | None,
                      cache_dir: str | None) -> DwarfIndex:
        """The index of `debug_path`, from the cache when it holds one, else built (lazily).

        :param cache_dir: the cache root (default `cache_root()`); the file is under ``dwarf/``.
        Raises OSError when the debug file cannot be read and DwarfError when it is not ELF or
        its DWARF cannot be decoded at all.
        """
        path = cache_file(debug_path, build_id, cache_dir)
        has_alt = alt_path is not None
        store = IndexStore.load(path, has_alt) if path else None
        if store is not None:
            return cls(debug_path, alt_path, store)
        empty = CuMap(array("Q"), array("Q"), array("Q"))
        index = cls(debug_path, alt_path, IndexStore(path, has_alt, empty, {}, {}))
        main = index._open().main
        try:
            index._store.cu_map = build_cu_map(main)
        except _DATA_ERRORS as exc:
            raise DwarfError(_describe(exc, f"{debug_path}: address ranges")) from None
        index._store.touch()
        return index

    def lookup(self, elf_addr: int) -> tuple[SourceFrame, ...]:
        """The frames at `elf_addr`, innermost first: the inlined instances covering it, then the
        subprogram; () when no unit covers it; one frame with `function=None` when a unit covers
        it but no subprogram does (e.g. assembly). DwarfError when that unit is corrupt."""
        cu = self._cu_for(elf_addr)
        return cu.lookup(elf_addr) if cu is not None else ()

    def function_at(self, elf_addr: int) -> FunctionRange | None:
        """The subprogram range covering `elf_addr` (for func+offset/size), None if none."""
        cu = self._cu_for(elf_addr)
        chain = cu.chain_at(elf_addr) if cu is not None else None
        if cu is None or chain is None:
            return None
        indexes, start, end = chain
        return FunctionRange(cu.scopes[indexes[-1]][0], start, end - start)

    def save(self) -> None:
        """Persist what has been built (merged with what the cache file holds now)."""
        self._store.save()

    def _cu_for(self, elf_addr: int) -> CuIndex | None:
        store = self._store
        offset = store.cu_map.unit_for(elf_addr)
        if offset is None:
            return None
        cu = store.cus.get(offset)
        if cu is None:
            cu = self._materialize(offset)
        return cu

    def _materialize(self, offset: int) -> CuIndex:
        store = self._store
        message = store.errors.get(offset)
        if message is not None:
            raise DwarfError(message)
        blob = store.blobs.get(offset)
        if blob:
            cu = store.cus[offset] = CuIndex.from_blob(blob)
            return cu
        builder = self._open()
        try:
            cu = builder.build(builder.main.unit_for(offset))
        except _DATA_ERRORS as exc:
            message = _describe(exc, f"{self._debug_path}: unit at 0x{offset:x}")
            store.add_error(offset, message)
            raise DwarfError(message) from None
        store.add(offset, cu)
        return cu

    def _open(self) -> CuBuilder:
        """The unit builder over the debug (and alt) file's sections, loaded on first use."""
        if self._builder is None:
            alt = None
            if self._alt_path:
                try:
                    alt = DwarfFile(load_sections(self._alt_path))
                except (OSError, DwarfError):
                    alt = None              # names defined in the alt file stay unknown
            self._builder = CuBuilder(DwarfFile(load_sections(self._debug_path), alt))
        return self._builder


def _describe(exc: Exception, where: str) -> str:
    """A DwarfError message for a data error, prefixed with where it happened."""
    if isinstance(exc, DwarfError):
        return str(exc)
    return f"{where}: corrupt DWARF ({type(exc).__name__}: {exc})"
