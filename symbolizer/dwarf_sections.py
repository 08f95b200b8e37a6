"""Raw DWARF section bytes of one ELF file, decompressed, and the `DwarfError` every reader raises.

The DWARF readers work on plain `bytes`, so this module only has to find the `.debug_*` sections
and undo compression: `SHF_COMPRESSED` sections (zlib, as `objcopy --compress-debug-sections` and
Debian's libc6-dbg produce) and the older `.zdebug_*` sections (``"ZLIB"`` + 8-byte big-endian
size). It parses the section header table itself: pyelftools would also work, but this is all we
need from it and it keeps a cold start free of its import and object overhead.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

SHF_COMPRESSED = 0x800
SHT_NOBITS = 8
ELFCOMPRESS_ZLIB = 1
_MAX_SECTIONS = 1 << 20

# The sections the index reads; absent ones come back as b"".
DEBUG_SECTIONS = (
    "info", "abbrev", "str", "line_str", "line", "aranges", "ranges", "rnglists", "addr",
    "str_offsets",
)
#: Location lists (DWARF 2-4 `.debug_loc`, DWARF 5 `.debug_loclists`): only the variable
#: listing reads them, so the address index does not pay for decompressing them.
LOCATION_SECTIONS = ("loc", "loclists")


class DwarfError(ValueError):
    """DWARF data that cannot be decoded: truncated sections, unknown abbrev codes or forms."""


@dataclass(frozen=True, slots=True)
class DwarfSections:
    """The decompressed `.debug_*` sections of one file, by name without the ``.debug_`` prefix.

    :param path: the file they came from, for error messages.
    """

    path: str
    info: bytes
    abbrev: bytes
    str: bytes
    line_str: bytes
    line: bytes
    aranges: bytes
    ranges: bytes
    rnglists: bytes
    addr: bytes
    str_offsets: bytes
    loc: bytes = b""
    loclists: bytes = b""


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int


def load_sections(path: str, extra: tuple[str, ...] = ()) -> DwarfSections:
    """Read and decompress the DWARF sections of the ELF file at `path`.

    :param extra: more sections to read besides `DEBUG_SECTIONS` (`LOCATION_SECTIONS`).
    Raises `DwarfError` when the file is not a little-endian ELF file or a section cannot be
    decompressed, and `OSError` when it cannot be read.
    """
    with open(path, "rb") as f:
        data = _read_wanted(f, path, DEBUG_SECTIONS + extra)
    return DwarfSections(path=path, **data)


def _read_wanted(f: BinaryIO, path: str, names: tuple[str, ...]) -> dict[str, bytes]:
    ident = f.read(64)
    if len(ident) < 52 or ident[:4] != b"\x7fELF":
        raise DwarfError(f"{path}: not an ELF file")
    if ident[5] != 1:
        raise DwarfError(f"{path}: big-endian ELF is not supported")
    is64 = ident[4] == 2
    sections = _section_headers(f, ident, is64, path)
    wanted: dict[str, bytes] = {name: b"" for name in names}
    for sec in sections:
        if sec.name.startswith(".debug_"):
            key, zdebug = sec.name[7:], False
        elif sec.name.startswith(".zdebug_"):
            key, zdebug = sec.name[8:], True
        else:
            continue
        if key not in wanted or wanted[key] or sec.type == SHT_NOBITS:
            continue
        f.seek(sec.offset)
        raw = f.read(sec.size)
        if len(raw) != sec.size:
            raise DwarfError(f"{path}: section {sec.name} is truncated")
        if sec.flags & SHF_COMPRESSED:
            raw = _decompress_chdr(raw, is64, path, sec.name)
        elif zdebug:
            raw = _decompress_zdebug(raw, path, sec.name)
        wanted[key] = raw
    return wanted


def _section_headers(f: BinaryIO, ident: bytes, is64: bool, path: str) -> list[_Section]:
    if is64:
        shoff, = struct.unpack_from("<Q", ident, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
        shdr = struct.Struct("<IIQQQQIIQQ")
    else:
        shoff, = struct.unpack_from("<I", ident, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x2E)
        shdr = struct.Struct("<IIIIIIIIII")
    if shoff == 0 or shentsize < shdr.size:
        raise DwarfError(f"{path}: no section header table")
    f.seek(shoff)
    first = f.read(shentsize)
    if len(first) < shdr.size:
        raise DwarfError(f"{path}: truncated section header table")
    zeroth = shdr.unpack_from(first)
    if shnum == 0:                      # more than 0xff00 sections: the count is in sh_size
        shnum = zeroth[5]
    if shstrndx == 0xFFFF:              # SHN_XINDEX: the index is in sh_link
        shstrndx = zeroth[6]
    if shnum > _MAX_SECTIONS:
        raise DwarfError(f"{path}: {shnum} sections is not plausible")
    table = first + f.read(shentsize * (shnum - 1))
    if len(table) < shentsize * shnum or shstrndx >= shnum:
        raise DwarfError(f"{path}: truncated section header table")
    raw = [shdr.unpack_from(table, i * shentsize) for i in range(shnum)]
    names_hdr = raw[shstrndx]
    f.seek(names_hdr[4])
    names = f.read(names_hdr[5])
    out = []
    for name_off, sh_type, flags, _addr, offset, size, *_rest in raw:
        end = names.find(b"\0", name_off)
        name = names[name_off:end if end >= 0 else len(names)].decode("latin-1")
        out.append(_Section(name, sh_type, flags, offset, size))
    return out


def _decompress_chdr(raw: bytes, is64: bool, path: str, name: str) -> bytes:
    if is64:
        if len(raw) < 24:
            raise DwarfError(f"{path}: {name}: truncated compression header")
        ch_type, _reserved, ch_size = struct.unpack_from("<IIQ", raw)
        body = raw[24:]
    else:
        if len(raw) < 12:
            raise DwarfError(f"{path}: {name}: truncated compression header")
        ch_type, ch_size = struct.unpack_from("<II", raw)
        body = raw[12:]
    if ch_type != ELFCOMPRESS_ZLIB:
        raise DwarfError(f"{path}: {name}: unsupported compression type {ch_type}")
    return _inflate(body, ch_size, path, name)


def _decompress_zdebug(raw: bytes, path: str, name: str) -> bytes:
    if raw[:4] != b"ZLIB" or len(raw) < 12:
        return raw                      # .zdebug_ sections may be stored uncompressed
    size, = struct.unpack_from(">Q", raw, 4)
    return _inflate(raw[12:], size, path, name)


def _inflate(body: bytes, size: int, path: str, name: str) -> bytes:
    try:
        out = zlib.decompress(body)
    except zlib.error as exc:
        raise DwarfError(f"{path}: {name}: {exc}") from None
    if len(out) != size:
        raise DwarfError(f"{path}: {name}: decompressed to {len(out)} bytes, expected {size}")
    return out

