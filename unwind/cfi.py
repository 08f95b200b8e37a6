"""Compile a module's CFI into an `UnwindTable`, and cache compiled tables by build-id.

``.eh_frame`` (loaded with the program, and present in nearly every x86-64 binary) is compiled
first; the ``.debug_frame`` of the file or of its separate debug file then fills the addresses
``.eh_frame`` does not cover (code built with ``-fno-asynchronous-unwind-tables``).
Compiling libc takes tens of milliseconds; the cache makes every later run load the table from
``<cache root>/unwind/<build-id>.v1`` in about a millisecond.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from lru import LRU

from .cfi_parse import Cie, CfiError, RowSink, SectionInfo, parse_cie, parse_fde
from .table import TableFormatError, UnwindTable

__all__ = ["CfiError", "UnwindTableCache", "cache_root", "compile_table", "parse_section"]

_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_MAGIC = b"UBTUNW1"
_VERSION_SUFFIX = ".v1"


def _sections(path: str, want_eh: bool) -> tuple[SectionInfo | None, SectionInfo | None]:
    """The file's ``.eh_frame`` (when `want_eh`) and ``.debug_frame``, if it has them."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
                raise CfiError(f"{path}: not an x86-64 ELF file")
            text = elf.get_section_by_name(".text")
            got = elf.get_section_by_name(".got")
            text_base = text["sh_addr"] if text is not None else 0
            data_base = got["sh_addr"] if got is not None else 0
            found: list[SectionInfo | None] = []
            for name, wanted in ((".eh_frame", want_eh), (".debug_frame", True)):
                sec = elf.get_section_by_name(name) if wanted else None
                if sec is None or sec["sh_type"] == "SHT_NOBITS":
                    found.append(None)
                    continue
                found.append(SectionInfo(sec.data(), sec["sh_addr"], name == ".eh_frame",
                                         text_base, data_base))
            return found[0], found[1]
    except (ELFError, zlib.error) as e:
        raise CfiError(f"{path}: {e}") from None


def parse_section(sec: SectionInfo, sink: RowSink) -> list[tuple[int, int]]:
    """Run every FDE of the section into `sink`; return the FDEs' ``(pc_begin, pc_end)``.

    A malformed CIE or FDE is skipped (``sink.skipped`` counts them); a broken length field,
    after which entries cannot be found, ends the walk with what was decoded so far.
    """
    data = sec.data
    size = len(data)
    cies: dict[int, Cie | None] = {}
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos + 4 <= size:
        entry = pos
        length = _U32(data, pos)[0]
        pos += 4
        if length == 0:
            if sec.is_eh:
                break  # the .eh_frame terminator
            continue
        offset_size = 4
        if length == 0xFFFFFFFF:
            if pos + 8 > size:
                break
            length = _U64(data, pos)[0]
            pos += 8
            offset_size = 8
        end = pos + length
        if end > size or length < offset_size:
            sink.skipped += 1
            break
        id_pos = pos
        id_size = 4 if sec.is_eh else offset_size
        cie_id = int.from_bytes(data[pos:pos + id_size], "little")
        pos += id_size
        try:
            if (cie_id == 0) if sec.is_eh else (cie_id == (1 << (8 * id_size)) - 1):
                cies[entry] = parse_cie(sec, pos, end, sink)
            else:
                cie_at = id_pos - cie_id if sec.is_eh else cie_id
                if cie_at not in cies:
                    cies[cie_at] = _cie_at(sec, cie_at, sink)
                cie = cies[cie_at]
                if cie is None:
                    raise CfiError(f"FDE at {entry:#x} refers to a bad CIE")
                span = parse_fde(sec, cie, pos, end, sink)
                if span is not None:
                    ranges.append(span)
        except (CfiError, IndexError, ValueError, struct.error):
            if (cie_id == 0) if sec.is_eh else (cie_id == (1 << (8 * id_size)) - 1):
                cies[entry] = None
            sink.skipped += 1
        pos = end
    return ranges


def _cie_at(sec: SectionInfo, at: int, sink: RowSink) -> Cie | None:
    """Parse the CIE at section offset `at` (an FDE may point at one not yet seen)."""
    data = sec.data
    try:
        length = _U32(data, at)[0]
        pos = at + 4
        offset_size = 4
        if length == 0xFFFFFFFF:
            length, pos, offset_size = _U64(data, pos)[0], pos + 8, 8
        id_size = 4 if sec.is_eh else offset_size
        cie_id = int.from_bytes(data[pos:pos + id_size], "little")
        if cie_id != (0 if sec.is_eh else (1 << (8 * id_size)) - 1):
            return None
        end = pos + length
        if end > len(data):
            return None
        return parse_cie(sec, pos + id_size, end, sink)
    except (CfiError, IndexError, ValueError, struct.error):
        return None


def _merge(rows: list[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    """Sort rows, clip overlaps (the earlier row wins) and join touching rows of equal rules."""
    rows.sort()
    cur_start = cur_end = cur_rid = -1
    for start, end, rid in rows:
        if start < cur_end:
            start = cur_end
            if start >= end:
                continue
        if start == cur_end and rid == cur_rid:
            cur_end = end
            continue
        if cur_rid >= 0:
            yield cur_start, cur_end, cur_rid
        cur_start, cur_end, cur_rid = start, end, rid
    if cur_rid >= 0:
        yield cur_start, cur_end, cur_rid


def _uncovered(rows: list[tuple[int, int, int]], covered: list[tuple[int, int]]
               ) -> Iterator[tuple[int, int, int]]:
    """The parts of `rows` outside the `covered` ranges (which are merged in place first)."""
    covered.sort()
    starts: list[int] = []
    ends: list[int] = []
    for s, e in covered:
        if ends and s <= ends[-1]:
            ends[-1] = max(ends[-1], e)
        else:
            starts.append(s)
            ends.append(e)
    for start, end, rid in rows:
        i = max(bisect_right(starts, start) - 1, 0)
        while start < end:
            if i >= len(starts) or end <= starts[i]:
                yield start, end, rid
                break
            if start < starts[i]:
                yield start, starts[i], rid
            start = max(start, ends[i])
            i += 1


def compile_table(elf_path: str, debug_path: str | None = None) -> UnwindTable:
    """Compile the CFI of `elf_path` (and the ``.debug_frame`` of `debug_path`, if given).

    Malformed FDEs are skipped, so one bad entry costs only its own function.

    :raises CfiError: the file is not a readable x86-64 ELF file.
    :raises OSError: the file cannot be opened.
    """
    eh, debug = _sections(elf_path, want_eh=True)
    if debug is None and debug_path is not None and debug_path != elf_path:
        _, debug = _sections(debug_path, want_eh=False)
    sink = RowSink()
    eh_ranges = parse_section(eh, sink) if eh is not None else []
    if debug is not None:
        eh_rows = sink.rows
        sink.rows = []
        parse_section(debug, sink)
        eh_rows.extend(_uncovered(sink.rows, eh_ranges))
        sink.rows = eh_rows
    starts, ends, index = array("Q"), array("Q"), array("I")
    for start, end, rid in _merge(sink.rows):
        starts.append(start)
        ends.append(end)
        index.append(rid)
    return UnwindTable(starts, ends, index, tuple(sink.rules))


def cache_root(cache_dir: str | None = None) -> str:
    """`cache_dir`, else ``$UBT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ubt``, else ``~/.cache/ubt``."""
    if cache_dir:
        return cache_dir
    if os.environ.get("UBT_CACHE_DIR"):
        return os.environ["UBT_CACHE_DIR"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "ubt")


class UnwindTableCache:
    """Compiled tables: in memory (LRU) and on disk per build-id, compiled on a miss.

    A cache file remembers whether a debug file's ``.debug_frame`` went into it, so a table built
    before the debug file was found is rebuilt once it is. Unreadable or corrupt cache files are
    rebuilt; an unwritable cache directory only costs the compile next time.
    """

    def __init__(self, cache_dir: str | None = None, memory_entries: int = 64) -> None:
        self.directory = os.path.join(cache_root(cache_dir), "unwind")
        self._memory: LRU[tuple[str | None, str], tuple[UnwindTable, bool]] = LRU(memory_entries)

    def path_for(self, build_id: str | None, elf_path: str) -> str:
        """The cache file of a module: by build-id, else by (path, size, mtime)."""
        if build_id:
            name = "".join(c for c in build_id.lower() if c in "0123456789abcdef")
        else:
            st = os.stat(elf_path)
            ident = f"{os.path.realpath(elf_path)}\0{st.st_size}\0{st.st_mtime_ns}"
            name = "path-" + hashlib.sha1(ident.encode()).hexdigest()
        return os.path.join(self.directory, name + _VERSION_SUFFIX)

    def get(self, build_id: str | None, elf_path: str,
            debug_path: str | None = None) -> UnwindTable:
        """The table of `elf_path`, from memory, disk, or compiled (and then stored).

        :raises CfiError, OSError: as `compile_table`, on a miss.
        """
        key = (build_id, elf_path)  # cheap to form: this runs for every unwound frame
        want_debug = debug_path is not None
        hit = self._memory.get(key)
        if hit is None or (want_debug and not hit[1]):
            path = self.path_for(build_id, elf_path)
            hit = self._load(path)
            if hit is None or (want_debug and not hit[1]):
                hit = (compile_table(elf_path, debug_path), want_debug)
                self._store(path, hit[0], want_debug)
            self._memory[key] = hit
        return hit[0]

    @staticmethod
    def _load(path: str) -> tuple[UnwindTable, bool] | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) <= len(_MAGIC) or not data.startswith(_MAGIC):
            return None
        try:
            table = UnwindTable.from_bytes(data[len(_MAGIC) + 1:])
        except TableFormatError:
            return None
        return table, data[len(_MAGIC)] == 1

    def _store(self, path: str, table: UnwindTable, with_debug: bool) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_MAGIC + bytes((int(with_debug),)) + table.to_bytes())
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass  # a read-only or full cache directory: the table is still returned
