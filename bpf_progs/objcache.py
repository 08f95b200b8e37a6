"""Compile a bcc C program once, keep its bytecode on disk, and load it without clang.

bcc compiles C with clang on every run: ~0.4 s and ~100 MB of memory before the first probe is
live, for a program that never changes between runs. Here bcc compiles it once; the program's
instructions and the definitions of the maps it refers to are stored under the ubt cache,
keyed by everything that changes the bytecode (source text, -D settings, bcc's version, the
kernel release). Later runs create the maps afresh, patch their fds into the instructions and
load the program with bpf(2): the kernel's verifier checks it on every load, exactly as it
checks bcc's. Map sizes that do not change the code (ring buffer size, array lengths) are given
at load time, so they are not part of the key.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from unwind.cfi import cache_root

from .bpfsys import MapSpec, map_create, map_info, prog_load

_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_FORMAT = 1


class CompileError(Exception):
    """bcc could not compile the program, or produced something this loader cannot relocate."""


@dataclass(frozen=True, slots=True)
class CompiledProgram:
    """One function's bytecode and the maps it names.

    :param relocs: (instruction index, index into `maps`) for every map reference: the
        instruction's immediate gets that map's fd at load time.
    """

    insns: bytes
    license: str
    maps: tuple[MapSpec, ...]
    relocs: tuple[tuple[int, int], ...]

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "insns": self.insns.hex(), "license": self.license,
                           "maps": [list(_spec_fields(m)) for m in self.maps],
                           "relocs": [list(r) for r in self.relocs]})

    @classmethod
    def from_json(cls, text: str) -> CompiledProgram:
        d = json.loads(text)
        if d.get("format") != _FORMAT:
            raise ValueError("old format")
        return cls(bytes.fromhex(d["insns"]), d["license"],
                   tuple(MapSpec(*m) for m in d["maps"]),
                   tuple((int(i), int(m)) for i, m in d["relocs"]))


def _spec_fields(m: MapSpec) -> tuple[str, int, int, int, int, int]:
    return (m.name, m.map_type, m.key_size, m.value_size, m.max_entries, m.flags)


@dataclass(frozen=True, slots=True)
class LoadedProgram:
    """A verified program and its maps, by name; `close()` frees them (the kernel keeps them
    while a link uses the program)."""

    prog_fd: int
    map_fds: Mapping[str, int]
    maps: Mapping[str, MapSpec]

    def close(self) -> None:
        for fd in (self.prog_fd, *self.map_fds.values()):
            try:
                os.close(fd)
            except OSError:
                pass


def cache_key(source: str, defines: Sequence[str], function: str) -> str:
    """What the bytecode depends on, hashed."""
    ident = "\0".join([source, *defines, function, _bcc_identity(), os.uname().release])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _bcc_identity() -> str:
    """Which bcc would compile (its package file's path, size and time), found without
    importing it: Debian's python3-bpfcc carries no version metadata."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.origin:
        return "no bcc"
    st = os.stat(spec.origin)
    return f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}"


def compile_with_bcc(source: str, cflags: Sequence[str], function: str) -> CompiledProgram:
    """Compile `source` with bcc (clang) and take out `function`'s bytecode and its maps."""
    from bcc import BPF, lib  # imported here only: bcc's import alone costs ~40 ms
    try:
        bpf = BPF(text=source.encode(), cflags=list(cflags))
    except Exception as e:
        raise CompileError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    try:
        insns = bpf.dump_func(function.encode())
        license = (lib.bpf_module_license(bpf.module) or b"GPL").decode()
        fd_index: dict[int, int] = {}
        maps: list[MapSpec] = []
        relocs: list[tuple[int, int]] = []
        for i in range(len(insns) // 8):
            code, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * 8)
            if code != _LD_IMM64:
                continue
            if regs >> 4 == 0:
                continue
            if regs >> 4 != _PSEUDO_MAP_FD:
                raise CompileError(f"instruction {i}: unsupported relocation {regs >> 4}")
            if imm not in fd_index:
                fd_index[imm] = len(maps)
                maps.append(map_info(imm))
            relocs.append((i, fd_index[imm]))
        return CompiledProgram(insns, license, tuple(maps), tuple(relocs))
    finally:
        bpf.cleanup()


def get_program(source: str, defines: Sequence[str], cflags: Callable[[], Sequence[str]],
                function: str, cache_dir: str | None = None) -> tuple[CompiledProgram, bool]:
    """The compiled program from the cache, else compiled with bcc and stored.

    :param defines: -D settings that change the bytecode (part of the key).
    :param cflags: other flags (include paths; not part of the key), asked for only when
        compiling: finding kernel headers is needed only then.
    :returns: the program and whether it came from the cache.
    """
    directory = os.path.join(cache_root(cache_dir), "bpf")
    path = os.path.join(directory, cache_key(source, defines, function) + ".json")
    try:
        with open(path) as f:
            if _trusted(directory) and _trusted(f.fileno()):
                return CompiledProgram.from_json(f.read()), True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if sys.stderr.isatty():  # ~0.5 s of silence otherwise, once per program and machine
        print("ubt: compiling the BPF program (first run; cached for the next ones)...",
              end="\r", file=sys.stderr, flush=True)
    program = compile_with_bcc(source, [*defines, *cflags()], function)
    if sys.stderr.isatty():
        print(" " * 72, end="\r", file=sys.stderr, flush=True)
    tmp = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(program.to_json())
        os.replace(tmp, path)
    except OSError:  # read-only or full cache: the program still loads from memory
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return program, False


def _trusted(what: str | int) -> bool:
    """A cached program runs in the kernel as root's: only a file (and directory) of this
    user that nobody else may write is loaded (a shared or ``sudo -E`` cache could hold
    another user's program)."""
    st = os.stat(what)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def load(program: CompiledProgram, name: str, prog_type: int, expected_attach_type: int,
         max_entries: Mapping[str, int] | None = None, flags: int = 0) -> LoadedProgram:
    """Create the program's maps (`max_entries` overrides sizes by map name), patch their fds
    into the instructions and load it (with `flags`, e.g. `bpfsys.PROG_SLEEPABLE`)."""
    sizes = max_entries or {}
    specs = [replace(m, max_entries=sizes.get(m.name, m.max_entries)) for m in program.maps]
    fds: list[int] = []
    try:
        for spec in specs:
            fds.append(map_create(spec))
        code = bytearray(program.insns)
        for insn, map_index in program.relocs:
            struct.pack_into("<i", code, insn * 8 + 4, fds[map_index])
        prog_fd = prog_load(bytes(code), program.license, prog_type, expected_attach_type, name,
                            flags)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return LoadedProgram(prog_fd, {s.name: fd for s, fd in zip(specs, fds)},
                         {s.name: s for s in specs})
