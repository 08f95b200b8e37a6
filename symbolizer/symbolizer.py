"""The `Symbolizer` facade: (module, ELF address) → source frames, innermost first.

It combines the DWARF index (functions, inline chains, file:line) with ELF symbol tables, which
fill the gaps DWARF leaves: binaries without debug info, addresses DWARF does not cover
(hand-written assembly, where addr2line prints ``??``), and corrupt debug info. Everything costly
is built once per file and kept in LRU caches keyed by build-id, so one `Symbolizer` serves every
process mapping the same libraries.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

from lru import LRU

from unwind.cfi import cache_root

from .demangle import function_name
from .elf import ElfFormatError, ElfImage, open_image
from .frames import SourceFrame, SymbolReason, SymFrame
from .locate import DebugFiles, DebugInfoLocator
from .module import Module
from .symtab import ElfSymbol, SymbolTable


class AddressIndex(Protocol):
    """What the symbolizer needs of a DWARF index (`symbolizer.dwarf_index.DwarfIndex`)."""

    def lookup(self, elf_addr: int) -> tuple[SourceFrame, ...]: ...


#: ``loader(debug_path, alt_path, build_id, cache_dir) -> index``
IndexLoader = Callable[[str, "str | None", "str | None", str], AddressIndex]


def default_cache_dir() -> str:
    """The ubt cache root (``$UBT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ubt``, else
    ``~/.cache/ubt``)."""
    return cache_root()


def _load_dwarf_index(debug_path: str, alt_path: str | None, build_id: str | None,
                      cache_dir: str) -> AddressIndex:
    from .dwarf_index import DwarfIndex
    return DwarfIndex.load_or_build(debug_path, alt_path, build_id, cache_dir)


class _FileInfo:
    """Everything known about one module file, each part computed on first use."""

    def __init__(self, image: ElfImage, origin: str) -> None:
        self.image = image
        self.origin = origin
        self.files: DebugFiles | None = None
        self.symbols: SymbolTable | None = None
        self.index: AddressIndex | None = None
        self.index_loaded = False
        self.index_broken = False


class _BrokenIndex(Exception):
    """The DWARF index of this file failed to load before."""


class Symbolizer:
    """Symbolizes ELF addresses of modules.

    :param cache_dir: root of the on-disk caches (the DWARF index); `default_cache_dir()` if None.
    :param locator: finds debug files; a default `DebugInfoLocator` if None (add debuginfod to
        its hooks).
    :param index_loader: builds or loads the DWARF index of a debug file.
    :param max_files: how many files' images, symbol tables and indexes are kept in memory.
    """

    def __init__(self, cache_dir: str | None = None, locator: DebugInfoLocator | None = None,
                 index_loader: IndexLoader = _load_dwarf_index, max_files: int = 128) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self.locator = locator or DebugInfoLocator()
        self._load_index = index_loader
        self._files: LRU[tuple[object, ...], _FileInfo] = LRU(max_files)
        self._last: tuple[Module | None, _FileInfo | None] = (None, None)

    # -- per-file state --------------------------------------------------------------------

    def _info(self, module: Module) -> _FileInfo:
        """The cached state of the module's file. :raises ElfFormatError: unreadable file."""
        last_module, last_info = self._last
        if module is last_module and last_info is not None:
            return last_info  # the common case: many addresses in one module in a row
        key = _file_key(module)
        info: _FileInfo | None = self._files.get(key)
        if info is None:
            info = _FileInfo(open_image(module.file), module.path)
            self._files[key] = info
        self._last = (module, info)
        return info

    def debug_files(self, module: Module) -> DebugFiles:
        """Where the module's DWARF is. :raises ElfFormatError: the module file is unreadable."""
        return self._debug_files(self._info(module))

    def _debug_files(self, info: _FileInfo) -> DebugFiles:
        if info.files is None:
            info.files = self.locator.find(info.image, origin=info.origin)
        return info.files

    def symbols(self, module: Module) -> SymbolTable:
        """The module's code symbols: the debug file's `.symtab`, the file's own `.symtab` and
        `.dynsym`, and its MiniDebugInfo, merged. Parts that fail to parse are left out.

        :raises ElfFormatError: the module file is unreadable.
        """
        info = self._info(module)
        if info.symbols is None:
            info.symbols = SymbolTable.merge(self._symbol_sources(info))
        return info.symbols

    def _symbol_sources(self, info: _FileInfo) -> list[SymbolTable]:
        debug_path = self._debug_files(info).debug_path
        images: list[Callable[[], ElfImage | None]] = [
            lambda: info.image,
            info.image.minidebuginfo,
            lambda: open_image(debug_path) if debug_path and debug_path != info.image.path
            else None,
        ]
        tables = []
        for get in images:
            try:
                image = get()
                if image is not None:
                    tables.append(image.symbols)
            except ElfFormatError:
                continue
        return tables

    def _sources(self, info: _FileInfo, elf_addr: int) -> tuple[SourceFrame, ...]:
        """The DWARF frames at `elf_addr`, () when the file has no DWARF.

        :raises Exception: whatever the index raises for corrupt DWARF; a failure to load the
            index is remembered, so it is not rebuilt for every address.
        """
        if info.index_broken:
            raise _BrokenIndex(info.image.path)
        if not info.index_loaded:
            info.index_broken = True  # stays set if loading raises
            info.index = self._build_index(info)
            info.index_broken, info.index_loaded = False, True
        return () if info.index is None else info.index.lookup(elf_addr)

    def _build_index(self, info: _FileInfo) -> AddressIndex | None:
        files = self._debug_files(info)
        if files.debug_path is None:
            return None
        debug = info.image if files.debug_path == info.image.path else open_image(files.debug_path)
        if not debug.has_dwarf:
            return None
        return self._load_index(files.debug_path, files.alt_path, info.image.build_id,
                                self.cache_dir)

    # -- symbolization ---------------------------------------------------------------------

    def symbolize(self, module: Module, elf_addr: int) -> tuple[SymFrame, ...]:
        """The frames at `elf_addr` in `module`, innermost first; never raises.

        DWARF frames when debug info covers the address; else the ELF symbol covering it
        (reason NO_DEBUG_INFO); else one frame with ``function=None`` (NO_SYMBOL). Corrupt
        debug info gives one frame with reason CORRUPT_DEBUG_INFO, named by the symbol if any.
        """
        try:
            info = self._info(module)
        except (ElfFormatError, OSError):
            return (_unknown(SymbolReason.UNREADABLE_FILE),)

        def symbol() -> ElfSymbol | None:  # only when DWARF leaves a gap: most lookups don't
            try:
                return self.symbols(module).lookup(elf_addr)
            except (ElfFormatError, OSError):
                return None

        try:
            sources = self._sources(info, elf_addr)
        except Exception:  # corrupt DWARF in any form must cost one frame's detail, not the trace
            return (_symbol_frame(symbol(), elf_addr, SymbolReason.CORRUPT_DEBUG_INFO),)
        if not sources:
            return (_symbol_frame(symbol(), elf_addr, SymbolReason.NO_DEBUG_INFO),)
        last = sources[-1]
        if last.function is None or (last.entry is None and not last.inlined):
            return _dwarf_frames(sources, symbol(), elf_addr)
        return _dwarf_frames(sources, None, elf_addr)


def _file_key(module: Module) -> tuple[object, ...]:
    """Build-id and file when there is a build-id, else the file's identity on disk."""
    if module.build_id:
        return (module.build_id, module.file)
    try:
        st = os.stat(module.file)
    except OSError:
        return (module.file,)
    return (module.file, st.st_size, st.st_mtime_ns)


def _unknown(reason: SymbolReason) -> SymFrame:
    return SymFrame(None, None, None, None, None, None, False, reason)


def _symbol_frame(symbol: ElfSymbol | None, elf_addr: int, reason: SymbolReason) -> SymFrame:
    """A frame named by the ELF symbol, or an anonymous NO_SYMBOL frame; CORRUPT_DEBUG_INFO
    is kept even when no symbol names the address."""
    if symbol is None:
        return _unknown(reason if reason is SymbolReason.CORRUPT_DEBUG_INFO
                        else SymbolReason.NO_SYMBOL)
    return SymFrame(function_name(symbol.name), elf_addr - symbol.addr, symbol.size or None,
                    None, None, None, False, reason)


def _dwarf_frames(sources: Sequence[SourceFrame], symbol: ElfSymbol | None,
                  elf_addr: int) -> tuple[SymFrame, ...]:
    """DWARF frames as `SymFrame`s; the outermost takes its name, entry and size from the ELF
    symbol where DWARF has none."""
    frames = []
    last = len(sources) - 1
    for i, src in enumerate(sources):
        name = function_name(src.function) if src.function else None
        entry, size = src.entry, src.size
        reason = None
        if i == last and symbol is not None:
            if name is None:
                name = function_name(symbol.name)
                reason = None if src.file else SymbolReason.NO_DEBUG_INFO
            if entry is None and not src.inlined:
                entry, size = symbol.addr, size or symbol.size or None
        if name is None and i == last:
            reason = SymbolReason.NO_SYMBOL
        offset = None if src.inlined or entry is None else elf_addr - entry
        frames.append(SymFrame(name, offset, None if src.inlined else size, src.file, src.line,
                               src.column, src.inlined, reason))
    return tuple(frames)
