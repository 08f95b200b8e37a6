"""Modules of a process: the ELF files it maps, where, and with which load bias.

A module spans every mapping of one file (its r--, r-x, rw- segments and PROT_NONE gaps). Its
`bias` converts between the process's absolute addresses and the file's ELF addresses
(``elf_addr = abs_addr - bias``), which is what unwind tables, symbol tables and the DWARF index
are keyed by. Anonymous memory (heap, stacks, JIT code) belongs to no module.

Two kinds of mappings need a stand-in for the file: a deleted file is read through
``/proc/PID/map_files/START-END``, and the vdso, which has no file at all, is copied out of the
process's memory into a private temporary file named by its contents.

When the build-ids of the modules are known (a saved snapshot carries them), they are checked:
a file that cannot be opened any more, or that now holds another build (a replay after an
upgrade, or on another machine), is replaced by a file with the recorded build-id from
`find_executable` (the locator: debuginfod's ``/executable``), so unwind tables and symbols
come from the code that ran; without one the module keeps its range and build-id but no file.
"""
from __future__ import annotations

import bisect
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from .elf import ElfFormatError, ElfImage, LoadSegment, open_image
from .maps import MapEntry, ProcessMaps

VDSO = "[vdso]"
PF_X, PF_W = 0x1, 0x2

#: ``find_executable(build_id) -> path | None``: a file with that build-id (checked by the caller).
ExecutableFinder = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class Module:
    """One mapped ELF file.

    :param path: what is reported (the mapped path without `` (deleted)``, or ``[vdso]``).
    :param file: a readable path with the same contents (``/proc/PID/map_files/...`` for a
        deleted file, a private copy for the vdso, a fetched executable for a file that is
        gone); ``""`` when there is none.
    :param build_id: hex NT_GNU_BUILD_ID, None when the file has none or cannot be read.
    :param bias: ``abs_addr - elf_addr``; 0 for a non-PIE executable.
    :param start, end: the absolute range covered by the module's mappings.
    """

    path: str
    file: str
    build_id: str | None
    bias: int
    start: int
    end: int

    def contains(self, abs_addr: int) -> bool:
        """Whether `abs_addr` lies within the module's mappings' overall range."""
        return self.start <= abs_addr < self.end


def segment_for(segments: Sequence[LoadSegment], entry: MapEntry,
                page_size: int) -> LoadSegment | None:
    """The PT_LOAD segment a mapping comes from: its page-aligned file range holds the
    mapping's offset; when two segments share that page, the one whose W/X flags match the
    mapping's permissions."""
    found = [s for s in segments
             if s.offset - s.offset % page_size <= entry.offset < s.offset + max(s.filesz, 1)]
    if len(found) > 1:
        want = (PF_X if "x" in entry.perms else 0) | (PF_W if "w" in entry.perms else 0)
        found = [s for s in found if s.flags & (PF_X | PF_W) == want] or found
    return found[0] if found else None


def load_bias(segments: Sequence[LoadSegment], entries: Sequence[MapEntry]) -> int | None:
    """``map.start - vaddr(map.offset)`` for the first mapping matching a segment, else None.

    The ELF address of file offset ``o`` inside segment ``s`` is ``s.vaddr - s.offset + o``;
    a mapping starting at ``map.offset`` therefore loads ELF address
    ``s.vaddr - s.offset + map.offset`` at ``map.start``.
    """
    page_size = os.sysconf("SC_PAGE_SIZE")
    for entry in entries:
        seg = segment_for(segments, entry, page_size)
        if seg is not None:
            return entry.start - (seg.vaddr - seg.offset + entry.offset)
    return None


class ModuleSet:
    """The modules of one process map, searchable by absolute address."""

    def __init__(self, modules: Sequence[Module]) -> None:
        self.modules = sorted(modules, key=lambda m: m.start)
        self._starts = [m.start for m in self.modules]

    @classmethod
    def from_maps(cls, maps: ProcessMaps, pid: int | None = None,
                  build_ids: Mapping[int, str] | None = None,
                  find_executable: ExecutableFinder | None = None) -> ModuleSet:
        """Group `maps` into modules, reading each file's program headers for its bias.

        :param pid: the process, to read deleted files and the vdso through /proc; without it
            (or when that fails) a deleted file's module has no readable file and the vdso is
            taken from this process, which runs on the same kernel.
        :param build_ids: module start → the build-id recorded when the maps were read; a file
            (or vdso) with another build-id is not used for that module.
        :param find_executable: where a module whose file is gone gets one by its build-id.
        """
        known = build_ids or {}
        modules = []
        for group in _group_file_mappings(maps):
            module = _file_module(group, pid, known.get(group[0].start), find_executable)
            if module is not None:
                modules.append(module)
        vdso = next((e for e in maps if e.path == VDSO), None)
        if vdso is not None:
            module = _vdso_module(vdso, pid)
            if module is not None and known.get(module.start, module.build_id) == \
                    module.build_id:
                modules.append(module)
        return cls(modules)

    def find(self, abs_addr: int) -> Module | None:
        """The module whose range holds `abs_addr`, or None (anonymous memory, JIT code)."""
        i = bisect.bisect_right(self._starts, abs_addr) - 1
        if i >= 0 and self.modules[i].contains(abs_addr):
            return self.modules[i]
        return None

    def __iter__(self) -> Iterator[Module]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)


def _group_file_mappings(maps: ProcessMaps) -> list[list[MapEntry]]:
    """File-backed mappings grouped by file. A group continues across anonymous mappings
    (e.g. .bss) until another file appears."""
    groups: list[list[MapEntry]] = []
    current: list[MapEntry] = []
    for entry in maps:
        if not entry.is_file:
            continue
        if current:
            last = current[-1]
            if (entry.dev, entry.inode, entry.path) == (last.dev, last.inode, last.path):
                current.append(entry)
                continue
            groups.append(current)
        current = [entry]
    if current:
        groups.append(current)
    return groups


def _file_module(group: list[MapEntry], pid: int | None, build_id: str | None,
                 find_executable: ExecutableFinder | None) -> Module | None:
    first = group[0]
    start, end = first.start, max(e.end for e in group)
    file = first.file_path
    if first.is_deleted:
        file = f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}" if pid is not None else ""
    try:
        image: ElfImage | None = open_image(file)
    except ElfFormatError:
        image = None
    if build_id is not None and (image is None or image.build_id != build_id):
        return _gone_module(group, build_id, find_executable)
    if image is None:
        # Not ELF: a data file (locale archive, fonts) or JIT code in a memfd, not a module.
        # A deleted file we cannot open at all may still be code: keep its range so frames
        # name it.
        code = any("x" in e.perms for e in group) and not first.path.startswith("/memfd:")
        if not code or (bool(file) and os.access(file, os.R_OK)):
            return None
        return Module(first.file_path, file, None, _usual_bias(group), start, end)
    bias = load_bias(image.load_segments, group)
    if bias is None:
        return None
    return Module(first.file_path, file, image.build_id, bias, start, end)


def _usual_bias(group: list[MapEntry]) -> int:
    """The bias of a file whose headers cannot be read, assuming the usual layout where the
    mapping at offset 0 loads ELF address 0."""
    at_zero = next((e for e in group if e.offset == 0), group[0])
    return at_zero.start - at_zero.offset


def _gone_module(group: list[MapEntry], build_id: str,
                 find_executable: ExecutableFinder | None) -> Module:
    """The module of a file that is gone (or holds another build now): backed by the file
    `find_executable` gives for its build-id, else by none (its range and build-id remain)."""
    first = group[0]
    start, end = first.start, max(e.end for e in group)
    found = find_executable(build_id) if find_executable is not None else None
    if found is not None:
        try:
            image = ElfImage(found)
        except ElfFormatError:
            image = None
        bias = None if image is None else load_bias(image.load_segments, group)
        if image is not None and image.build_id == build_id and bias is not None:
            return Module(first.file_path, found, build_id, bias, start, end)
    return Module(first.file_path, "", build_id, _usual_bias(group), start, end)


def _vdso_module(entry: MapEntry, pid: int | None) -> Module | None:
    data = _read_memory(str(pid), entry) if pid is not None else None
    if data is None:
        data = _own_vdso()
    if data is None:
        return None
    try:
        file = _private_copy(data)
        image = ElfImage(file)
    except (OSError, ElfFormatError):
        return None
    at_zero = MapEntry(entry.start, entry.end, entry.perms, 0, entry.dev, entry.inode, VDSO)
    bias = load_bias(image.load_segments, [at_zero])
    return None if bias is None else Module(VDSO, file, image.build_id, bias, entry.start,
                                            entry.end)


def _read_memory(pid: str, entry: MapEntry) -> bytes | None:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(entry.start)
            data = mem.read(entry.end - entry.start)
    except (OSError, OverflowError):
        return None
    return data if data.startswith(b"\x7fELF") else None


def _own_vdso() -> bytes | None:
    own = next((e for e in ProcessMaps.from_pid(os.getpid()) if e.path == VDSO), None)
    return None if own is None else _read_memory("self", own)


def _private_copy(data: bytes) -> str:
    """Write `data` once to a file only this user can write, named by its SHA-256."""
    directory = os.path.join(tempfile.gettempdir(), f"ubt-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise OSError(f"{directory}: not a private directory")
    path = os.path.join(directory, f"vdso-{hashlib.sha256(data).hexdigest()[:32]}.so")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".vdso-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path
