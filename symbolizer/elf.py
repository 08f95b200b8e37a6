"""One ELF file's identity, links to its debug files, load segments and symbol tables.

`ElfImage` reads the headers once (pyelftools) and the symbol tables lazily (raw bytes, see
`symbolizer.symtab`). It answers what the rest of the symbolizer needs to find debug info
(`build_id`, `debuglink`, `altlink`, `has_dwarf`), to compute load biases (`load_segments`) and to
name addresses without DWARF (`symbols`, `minidebuginfo`). Anything that is not a well-formed ELF
file becomes an `ElfFormatError` whose message is one line naming the file.
"""
from __future__ import annotations

import io
import lzma
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile
from lru import LRU

from .symtab import CodeSection, RawSymbol, SymbolTable, decode_symbols

SHF_EXECINSTR = 0x4
NT_GNU_BUILD_ID = 3
_DWARF_SECTIONS = frozenset((".debug_info", ".zdebug_info"))

_T = TypeVar("_T")


class ElfFormatError(ValueError):
    """The file is not a readable, well-formed ELF file (not ELF, truncated, corrupt)."""


@dataclass(frozen=True, slots=True)
class DebugLink:
    """`.gnu_debuglink`: the separate debug file's base name and the CRC32 of its contents."""

    name: str
    crc: int


@dataclass(frozen=True, slots=True)
class AltLink:
    """`.gnu_debugaltlink`: the dwz supplementary file's path and its build-id (hex)."""

    name: str
    build_id: str


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """A PT_LOAD program header: file bytes [offset, offset+filesz) load at `vaddr`.

    :param flags: ``PF_X | PF_W | PF_R`` bits, to tell apart segments sharing a file page.
    """

    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True, slots=True)
class _Section:
    index: int
    name: str
    type: str
    flags: int
    addr: int
    offset: int
    size: int
    link: int


_ELF_ERRORS = (ELFError, ConstructError, struct.error, ValueError, IndexError, KeyError,
               EOFError, AssertionError, AttributeError, TypeError, lzma.LZMAError)


class ElfImage:
    """An ELF file on disk, or an in-memory image (the vdso, a MiniDebugInfo payload).

    :param path: the file to read; for an in-memory image only a label used in messages.
    :param data: the image's bytes when it is not read from `path`.
    :raises ElfFormatError: unreadable, not ELF, truncated or corrupt.
    """

    def __init__(self, path: str, data: bytes | None = None) -> None:
        self.path = path
        self._data = data
        with self._stream() as f:
            self._size = f.seek(0, io.SEEK_END)
            self._parse_headers(f)
        self._symbols: SymbolTable | None = None

    # -- reading ---------------------------------------------------------------------------

    @contextmanager
    def _stream(self) -> Iterator[BinaryIO]:
        if self._data is not None:
            yield io.BytesIO(self._data)
            return
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise ElfFormatError(f"{self.path}: cannot read: {e.strerror or e}") from None
        with f:
            yield f

    def _guard(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run `fn`, turning any parse failure into a one-line `ElfFormatError`."""
        try:
            return fn()
        except ElfFormatError:
            raise
        except OSError as e:
            raise ElfFormatError(f"{self.path}: cannot read {what}: {e.strerror or e}") from None
        except _ELF_ERRORS as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ElfFormatError(f"{self.path}: corrupt ELF ({what}): {detail}") from None

    def _read(self, f: BinaryIO, offset: int, size: int) -> bytes:
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise ElfFormatError(f"{self.path}: truncated ELF file ({size} bytes at {offset:#x} "
                                 f"past the end)")
        return data

    def _parse_headers(self, f: BinaryIO) -> None:
        f.seek(0)
        if f.read(4) != b"\x7fELF":
            raise ElfFormatError(f"{self.path}: not an ELF file")

        def parse() -> tuple[ELFFile, list[_Section], list[LoadSegment]]:
            elf = ELFFile(f)
            sections = [
                _Section(i, s.name, str(s["sh_type"]), s["sh_flags"], s["sh_addr"],
                         s["sh_offset"], s["sh_size"], s["sh_link"])
                for i, s in enumerate(elf.iter_sections())]
            segments = [LoadSegment(p["p_vaddr"], p["p_offset"], p["p_filesz"], p["p_memsz"],
                                    p["p_flags"])
                        for p in elf.iter_segments() if p["p_type"] == "PT_LOAD"]
            return elf, sections, segments

        elf, self._sections, self.load_segments = self._guard("headers", parse)
        self.is64 = elf.elfclass == 64
        self.little_endian = elf.little_endian
        self.elf_type: str = str(elf.header["e_type"])
        for s in self._sections:
            if s.type != "SHT_NOBITS" and s.offset + s.size > self._size:
                raise ElfFormatError(f"{self.path}: truncated ELF file (section {s.name or s.index}"
                                     f" ends at {s.offset + s.size:#x}, file is {self._size:#x})")
        self._by_name = {s.name: s for s in self._sections}
        self.build_id = self._guard("build-id note", lambda: self._find_build_id(f, elf))
        self.debuglink = self._guard(".gnu_debuglink", lambda: self._parse_debuglink(f))
        self.altlink = self._guard(".gnu_debugaltlink", lambda: self._parse_altlink(f))

    def section_type(self, name: str) -> str | None:
        """The ``sh_type`` of section `name` (``SHT_PROGBITS``, ``SHT_NOBITS``...), None when
        the file has no such section: a stripped file keeps its sections' headers as NOBITS,
        which is not the same as not having them."""
        s = self._by_name.get(name)
        return None if s is None else s.type

    def section_data(self, name: str) -> bytes | None:
        """The raw bytes of section `name`, None when absent or without file contents."""
        s = self._by_name.get(name)
        if s is None or s.type == "SHT_NOBITS":
            return None
        with self._stream() as f:
            return self._read(f, s.offset, s.size)

    # -- identity and links ----------------------------------------------------------------

    def _find_build_id(self, f: BinaryIO, elf: ELFFile) -> str | None:
        blobs = [self._read(f, s.offset, s.size) for s in self._sections
                 if s.type == "SHT_NOTE"]
        if not blobs:  # no section headers (e.g. a stripped memory image): use PT_NOTE
            blobs = [self._read(f, p["p_offset"], p["p_filesz"]) for p in elf.iter_segments()
                     if p["p_type"] == "PT_NOTE" and p["p_offset"] + p["p_filesz"] <= self._size]
        for blob in blobs:
            for name, note_type, desc in _notes(blob, self.little_endian):
                if name == b"GNU" and note_type == NT_GNU_BUILD_ID and desc:
                    return desc.hex()
        return None

    def _link_section(self, f: BinaryIO, name: str) -> tuple[bytes, int] | None:
        """A `.gnu_debuglink`/`.gnu_debugaltlink` section: its bytes and where the file name's
        NUL is; None when absent or the name is empty."""
        s = self._by_name.get(name)
        if s is None or s.type == "SHT_NOBITS":
            return None
        data = self._read(f, s.offset, s.size)
        end = data.find(b"\0")
        return (data, end) if end > 0 else None

    def _parse_debuglink(self, f: BinaryIO) -> DebugLink | None:
        link = self._link_section(f, ".gnu_debuglink")
        if link is None:
            return None
        data, end = link
        crc_at = (end + 4) & ~3
        (crc,) = struct.unpack_from("<I" if self.little_endian else ">I", data, crc_at)
        return DebugLink(data[:end].decode("utf-8", "replace"), crc)

    def _parse_altlink(self, f: BinaryIO) -> AltLink | None:
        link = self._link_section(f, ".gnu_debugaltlink")
        if link is None:
            return None
        data, end = link
        return AltLink(data[:end].decode("utf-8", "replace"), data[end + 1:].hex())

    @property
    def has_dwarf(self) -> bool:
        """True when the file itself carries `.debug_info` (plain, SHF_COMPRESSED or .zdebug)."""
        return any(s.name in _DWARF_SECTIONS and s.type != "SHT_NOBITS" and s.size > 0
                   for s in self._sections)

    # -- symbols ---------------------------------------------------------------------------

    @property
    def symbols(self) -> SymbolTable:
        """The code symbols of `.symtab` and `.dynsym` together (decoded once)."""
        if self._symbols is None:
            self._symbols = SymbolTable(self.code_symbols())
        return self._symbols

    def code_symbols(self) -> list[RawSymbol]:
        """Every code symbol of `.symtab` and `.dynsym`, aliases included: what a probe may
        name (``opendir`` and ``__opendir`` both), where `symbols` keeps one name per address."""
        return self._guard("symbol table", self._load_code_symbols)

    def _load_code_symbols(self) -> list[RawSymbol]:
        code = [CodeSection(s.index, s.addr, s.size) for s in self._sections
                if s.flags & SHF_EXECINSTR]
        tables = [s for s in self._sections if s.name in (".symtab", ".dynsym")
                  and s.type != "SHT_NOBITS" and 0 < s.link < len(self._sections)]
        raw = []
        with self._stream() as f:
            for table in tables:
                strtab = self._sections[table.link]
                raw.extend(decode_symbols(self._read(f, table.offset, table.size),
                                          self._read(f, strtab.offset, strtab.size),
                                          self.is64, self.little_endian, code))
        return raw

    def minidebuginfo(self) -> ElfImage | None:
        """The MiniDebugInfo image (`.gnu_debugdata`: an xz-compressed ELF holding a `.symtab`
        of the local functions `.dynsym` lacks), or None when the file has none.

        :raises ElfFormatError: the section does not decompress to an ELF image.
        """
        packed = self.section_data(".gnu_debugdata")
        if not packed:
            return None
        data = self._guard(".gnu_debugdata", lambda: lzma.decompress(packed))
        return ElfImage(f"{self.path}[.gnu_debugdata]", data)

    def __repr__(self) -> str:
        return f"ElfImage({self.path!r}, build_id={self.build_id!r})"


_IMAGES: LRU[tuple[str, int, int, int, int], ElfImage] = LRU(256)


def open_image(path: str) -> ElfImage:
    """`ElfImage(path)`, parsed once while the file stays the same (same device, inode, size
    and modification time): every process map, symbolizer lookup and debug-file search reads
    the headers of the same few files, and pyelftools takes ~5-10 ms per parse of a library.

    :raises ElfFormatError: as `ElfImage`.
    """
    try:
        st = os.stat(path)
    except OSError:
        return ElfImage(path)  # raises its usual error
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    image = _IMAGES.get(key)
    if image is None:
        image = _IMAGES[key] = ElfImage(path)
    return image


def _notes(blob: bytes, little: bool) -> Iterator[tuple[bytes, int, bytes]]:
    """(name, type, desc) of each ELF note in a note section or segment (4-byte aligned)."""
    fmt = "<III" if little else ">III"
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, note_type = struct.unpack_from(fmt, blob, pos)
        pos += 12
        name = blob[pos:pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = blob[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        yield name, note_type, desc
