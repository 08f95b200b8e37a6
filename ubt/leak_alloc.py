"""Which functions `ubt leak` probes, and where.

Three sets: the allocators of libc (or of the library `-O LIB` names: jemalloc, tcmalloc export
the same names), the file-descriptor functions (`--fd`), or pairs the user names (`--alloc
LIB:FUNC[:SIZEARG] --free LIB:FUNC[:ADDRARG]`, argument numbers from 1). The library must be
one the target loads: mapped by the `-p` process, or needed (DT_NEEDED, recursively) by the
program `-c` runs. Default names are looked up among exported symbols only: an allocator
library with hidden or renamed functions is said to be one, with `--alloc` as the way out.
Aliases at one address (memalign/aligned_alloc, open/open64) become one probe, named by the
first of them here.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from bpf_progs.leak_capture import LeakProbe, alloc_cookie, free_cookie, maps_cookie
from bpf_progs.trap_cost import cheap_entries
from symbolizer.elf import ElfFormatError, ElfImage
from symbolizer.symtab import RawSymbol

from .errors import UbtError, UsageError
from .probes import libraries, not_found, resolve_binary, symbols_matching

_STB_LOCAL = 0


@dataclass(frozen=True, slots=True)
class AllocFunc:
    """How one function allocates or frees (0-based argument numbers).

    :param size: the size argument (None: each call counts 1, as for fds).
    :param size2: a multiplier of the size (calloc's count).
    :param old: realloc's old pointer, dropped when the call succeeds; for an fd, the
        descriptor copied (dup2, dup3): a call returning it made no new one.
    :param out: a pointer the address (or an fd pair) is written through; the call returns 0.
    :param frees: the function frees its argument `size`.
    :param region: mmap, munmap, mremap (with `mremap`): kept by ranges in user space
        (`leak_regions`), not by address in the kernel.
    :param fcntl: fcntl: a new fd only for F_DUPFD and F_DUPFD_CLOEXEC.
    :param fd_range: close_range(first, last, flags): frees every fd in the range.
    """

    name: str
    size: int | None = 0
    size2: int | None = None
    old: int | None = None
    out: int | None = None
    pages: bool = False
    frees: bool = False
    region: bool = False
    mremap: bool = False
    fcntl: bool = False
    fd_range: bool = False
    required: bool = False

    def cookie(self, index: int, fd: bool) -> int:
        if self.frees:
            return free_cookie(self.size or 0, fd=fd, region=self.region,
                               fd_range=self.fd_range)
        return alloc_cookie(index, self.size, self.size2, self.old, self.out, fd=fd,
                            pages=self.pages, region=self.region, mremap=self.mremap,
                            fcntl=self.fcntl)


MEMORY = (AllocFunc("malloc", required=True), AllocFunc("calloc", 1, 0),
          AllocFunc("realloc", 1, old=0), AllocFunc("reallocarray", 1, 2, old=0),
          AllocFunc("posix_memalign", 2, out=0), AllocFunc("aligned_alloc", 1),
          AllocFunc("memalign", 1), AllocFunc("valloc", 0), AllocFunc("pvalloc", 0, pages=True),
          AllocFunc("mmap", 1, pages=True, region=True),
          AllocFunc("mremap", 2, region=True, mremap=True),
          AllocFunc("free", 0, frees=True, required=True),
          AllocFunc("munmap", 0, frees=True, region=True))
FDS = (AllocFunc("open", None, required=True), AllocFunc("openat", None),
       AllocFunc("socket", None), AllocFunc("accept", None), AllocFunc("accept4", None),
       AllocFunc("dup", None), AllocFunc("dup2", None, old=0), AllocFunc("dup3", None, old=0),
       AllocFunc("pipe", None, out=0), AllocFunc("pipe2", None, out=0),
       AllocFunc("fcntl", None, fcntl=True), AllocFunc("fcntl64", None, fcntl=True),
       AllocFunc("close", 0, frees=True, required=True),
       AllocFunc("close_range", 0, frees=True, fd_range=True))


@dataclass(frozen=True, slots=True)
class Allocator:
    """One probed function: `label` is the allocation frame shown at the top of its stacks."""

    label: str
    path: str
    elf_addr: int
    func: AllocFunc


@dataclass(frozen=True, slots=True)
class Target:
    """What is traced: its program and the files it loads (to find allocator libraries in)."""

    description: str
    program: str
    files: tuple[str, ...]


def command_target(command: str) -> Target:
    """The program a `-c` command runs (its first word that is not a variable assignment) and
    the libraries it needs."""
    words = [w for w in shlex.split(command) if "=" not in w.split("/")[0]]
    if words and words[0] == "exec":
        words = words[1:]
    if not words:
        raise UsageError(f"no program in {command!r}")
    program = resolve_binary(words[0])
    return Target(repr(command), program, (program, *libraries(program)))


def pid_target(pid: int) -> Target:
    """A running process and the files it maps."""
    try:
        program = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/maps") as f:
            text = f.read()
    except OSError:
        raise UbtError(f"process {pid} does not exist") from None
    files = {line.split(None, 5)[5].strip() for line in text.splitlines()
             if len(line.split(None, 5)) == 6 and line.split(None, 5)[5].startswith("/")}
    return Target(f"pid {pid}", program, (program, *sorted(files - {program})))


def find_library(name: str, target: Target) -> str:
    """The file of `target` that `name` means: a path, or a file name with or without its
    version suffix (``libc.so.6``, ``libjemalloc.so``)."""
    real = os.path.realpath(name) if "/" in name else None
    for path in target.files:
        base = os.path.basename(path)
        if path == real or base == name or base.startswith(name + "."):
            return path
    loaded = ", ".join(sorted({os.path.basename(p) for p in target.files[1:]})) or "none"
    raise UbtError(f"{name} is not loaded by {target.description} "
                   f"(its libraries: {loaded}); name the allocator library with -O LIB")


def library_allocators(lib: str, funcs: tuple[AllocFunc, ...]) -> list[Allocator]:
    """The exported functions of `funcs` in `lib`; a required one missing is an error that
    says whether the library has it unexported, and suggests --alloc."""
    exported: dict[str, int] = {}
    hidden: set[str] = set()
    for sym in _symbols(lib):
        if sym.bind == _STB_LOCAL:
            hidden.add(sym.name)
        else:
            exported.setdefault(sym.name, sym.addr)
    found = []
    for func in funcs:
        if func.name in exported:
            found.append(Allocator(func.name, lib, exported[func.name], func))
        elif func.required:
            how = "has but does not export" if func.name in hidden else "does not export"
            raise UbtError(f"{os.path.basename(lib)} {how} {func.name}: trace its allocator "
                           f"with --alloc LIB:FUNC[:SIZEARG] --free LIB:FUNC[:ADDRARG]")
    return found


def named_allocators(allocs: list[str], frees: list[str], target: Target) -> list[Allocator]:
    """`--alloc LIB:FUNC[:SIZEARG]` and `--free LIB:FUNC[:ADDRARG]` (arguments from 1; the
    first by default); the functions may be unexported."""
    if not allocs or not frees:
        raise UsageError("--alloc and --free go together (an allocator and its free)")
    out = []
    for spec, frees_it in [(a, False) for a in allocs] + [(f, True) for f in frees]:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise UsageError(f"{spec!r}: expected LIB:FUNC[:ARG]")
        try:
            arg = int(parts[2]) - 1 if len(parts) == 3 else 0
        except ValueError:
            arg = -1
        if not 0 <= arg < 6:
            raise UsageError(f"{spec!r}: the argument number must be 1 to 6")
        lib = find_library(parts[0], target)
        syms = symbols_matching(lib, parts[1])
        if not syms:
            raise UbtError(not_found(lib, parts[1]))
        func = AllocFunc(parts[1], arg, frees=frees_it)
        out.append(Allocator(parts[1], lib, syms[0].addr, func))
    return out


def probes_for(allocators: list[Allocator], fd: bool) -> list[LeakProbe]:
    """One probe per address (aliases collapsed), cookies indexed by position in
    `allocators` (the label of a stack's first frame). An entry that starts with a flags-only
    compare is probed at the branch after it, where the kernel emulates the trap instead of
    single-stepping it (`trap_cost`; libc's free: ~0.8 µs instead of ~20 µs per call)."""
    seen: set[tuple[str, int]] = set()
    chosen = []
    for index, a in enumerate(allocators):
        if (a.path, a.elf_addr) not in seen:
            seen.add((a.path, a.elf_addr))
            chosen.append((index, a))
    places: dict[tuple[str, int], int] = {}
    for path in {a.path for _, a in chosen}:
        addrs = [a.elf_addr for _, a in chosen if a.path == path]
        places.update(((path, addr), place)
                      for addr, place in zip(addrs, cheap_entries(path, addrs)))
    return [LeakProbe(a.path, places[a.path, a.elf_addr], a.func.cookie(index, fd))
            for index, a in chosen]


def generation_probes(target: Target) -> list[LeakProbe]:
    """The probes that move the map generation on (see leak.c): the dynamic loader's
    `_dl_debug_state`, the hook debuggers break on, called before and after every dlopen and
    dlclose changes what is mapped (1 step); and its entry point, the first instruction of a
    program after an exec (3 steps: all code replaced). Empty without a loader."""
    loader = next((f for f in target.files if os.path.basename(f).startswith("ld-linux")), None)
    if loader is None:
        return []
    try:
        with open(loader, "rb") as f:
            entry = int.from_bytes(f.read(32)[24:32], "little")   # ELF64 e_entry
    except OSError as e:
        raise UbtError(f"{loader}: {e.strerror}") from None
    probes = [LeakProbe(loader, entry, maps_cookie(3))]
    found = symbols_matching(loader, "_dl_debug_state")
    if found:
        probes.append(LeakProbe(loader, found[0].addr, maps_cookie(1)))
    return probes


def _symbols(path: str) -> list[RawSymbol]:
    try:
        return list(ElfImage(path).code_symbols())
    except (ElfFormatError, OSError) as e:
        raise UbtError(f"{path}: {e}") from None
