"""From what the user typed to uprobe attach points: the binary, its libraries, the symbols.

`ubt process /bin/ls opendir` must find `opendir` in libc, the way a user thinks of "a function
of ls". So a probe is looked up in the binary first, then in the shared libraries it needs
(`DT_NEEDED`, recursively, searched like the dynamic loader: `DT_RUNPATH`/`DT_RPATH` with
`$ORIGIN`, `LD_LIBRARY_PATH`, the ld.so cache, the default directories). An unknown name ends the
run with the nearest names and the library each lives in.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from symbolizer.elf import ElfFormatError, ElfImage
from symbolizer.locate import DebugInfoLocator
from symbolizer.demangle import function_name
from symbolizer.symtab import RawSymbol

from .errors import UbtError
from .probespec import ProbeSpec

_DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                 "/lib", "/usr/lib", "/usr/local/lib")
#: A glob matching more functions than this is almost certainly a typo (`*`), not a plan.
MAX_GLOB_PROBES = 1000


@dataclass(frozen=True, slots=True)
class AttachPoint:
    """One uprobe to place: `elf_addr` is the ELF virtual address in `path`."""

    path: str
    function: str
    elf_addr: int
    offset: int
    is_return: bool

    @property
    def label(self) -> str:
        """How hits of this probe are named in the output (``opendir``, ``f+0x4``, ``f%return``)."""
        text = self.function + (f"+{self.offset:#x}" if self.offset else "")
        return text + ("%return" if self.is_return else "")


def resolve_binary(name: str) -> str:
    """A path, a program on PATH, or a library name (``libc.so.6``) → an absolute ELF path."""
    candidates = [name] if "/" in name else [shutil.which(name) or "",
                                             *(os.path.join(d, name) for d in _DEFAULT_DIRS)]
    for path in candidates:
        if path and os.path.isfile(path):
            real = os.path.realpath(path)
            _image(real)  # not ELF → a clear error now, not at attach time
            return real
    raise UbtError(f"{name}: no such binary (not a file, not on PATH, not a library)")


@lru_cache(maxsize=64)
def _image(path: str) -> ElfImage:
    try:
        return ElfImage(path)
    except ElfFormatError as e:
        raise UbtError(str(e)) from None


@lru_cache(maxsize=64)
def _code_symbols(path: str) -> tuple[RawSymbol, ...]:
    """Every code symbol a probe may name in `path`: its own tables, its MiniDebugInfo and its
    separate debug file's `.symtab` (a stripped binary with a .gnu_debuglink or build-id file),
    addresses being the same in all of them."""
    image = _image(path)
    symbols = list(image.code_symbols())
    try:
        mini = image.minidebuginfo()
        if mini is not None:
            symbols += mini.code_symbols()
        debug = DebugInfoLocator().find(image).debug_path
        if debug and debug != path:
            symbols += ElfImage(debug).code_symbols()
    except (ElfFormatError, OSError):
        pass  # what the file itself has is still usable
    return tuple(symbols)


def libraries(binary: str) -> list[str]:
    """The shared libraries `binary` loads, breadth first, as the dynamic loader finds them."""
    seen: list[str] = []
    queue = [binary]
    while queue:
        for lib in _needed(queue.pop(0)):
            if lib not in seen:
                seen.append(lib)
                queue.append(lib)
    return seen


def _needed(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            dyn = elf.get_section_by_name(".dynamic")
            if not isinstance(dyn, DynamicSection):
                return []
            tags = list(dyn.iter_tags())
    except (OSError, ELFError):
        return []
    # pyelftools sets these attributes per tag kind: needed, runpath, rpath
    names = [str(getattr(t, "needed")) for t in tags if t.entry.d_tag == "DT_NEEDED"]
    paths = [p for t in tags if t.entry.d_tag in ("DT_RUNPATH", "DT_RPATH")
             for p in str(getattr(t, t.entry.d_tag[3:].lower())).split(":")]
    origin = os.path.dirname(path)
    dirs = [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in paths]
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found = []
    for name in names:
        for d in (*dirs, *_DEFAULT_DIRS):
            candidate = os.path.join(d, name)
            if os.path.isfile(candidate):
                found.append(os.path.realpath(candidate))
                break
        else:
            cached = _ld_cache().get(name)
            if cached:
                found.append(os.path.realpath(cached))
    return found


@lru_cache(maxsize=1)
def _ld_cache() -> dict[str, str]:
    """The ld.so cache (`ldconfig -p`): library name → path, for libraries outside the defaults."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    cache: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        name, _, path = line.strip().partition(" => ")
        if path and "x86-64" in name:
            cache.setdefault(name.split(" ", 1)[0], path)
    return cache


def resolve_probes(binary: str, specs: list[ProbeSpec]) -> list[AttachPoint]:
    """Attach points for every spec: in the spec's own binary or `binary`, else its libraries.

    :raises UbtError: a spec matches nothing (with the nearest names and where they live).
    """
    points: list[AttachPoint] = []
    for spec in specs:
        own = resolve_binary(spec.binary) if spec.binary else binary
        found = _match_in(own, spec) or next(
            (m for lib in libraries(own) if (m := _match_in(lib, spec))), [])
        if not found:
            raise UbtError(not_found(own, spec.pattern))
        if len(found) > MAX_GLOB_PROBES:
            raise UbtError(f"{spec} matches {len(found)} functions (more than "
                           f"{MAX_GLOB_PROBES}); narrow the pattern")
        points.extend(found)
    return points


def symbols_matching(path: str, pattern: str) -> list[RawSymbol]:
    """The code symbols of `path` whose name is `pattern` (or matches it as a glob), one per
    address (aliases collapsed), by address.

    A pattern that matches no linkage name is tried against C++ names as people write them, as
    stap and gdb accept them: ``ns::Class::method`` (any overload), or with its parameter list,
    ``ns::Class::method(int)``, ABI tags optional (see `_cxx_names`)."""
    symbols = _code_symbols(path)
    globby = any(c in pattern for c in "*?[")
    # as written first: a name can hold glob characters (``Vec::operator*``, ``f[abi:cxx11]``)
    found = {s.addr: s for s in reversed(symbols) if s.name == pattern}
    if not found and globby:
        found = {s.addr: s for s in reversed(symbols) if fnmatch.fnmatchcase(s.name, pattern)}
    if not found:  # C++ names, demangled only now: a large C++ program has many
        cxx = [(s, _cxx_names(s.name)) for s in reversed(symbols) if s.name.startswith("_Z")]
        found = {s.addr: s for s, names in cxx if pattern in names}
        if not found and globby:
            found = {s.addr: s for s, names in cxx
                     if any(fnmatch.fnmatchcase(n, pattern) for n in names)}
    return [found[addr] for addr in sorted(found)]


def _cxx_names(linkage: str) -> tuple[str, ...]:
    """The spellings a C++ function is probed by: with and without its parameter list, with
    and without ABI tags (``f[abi:cxx11]()``: gdb drops them too); none for the `.cold` part
    GCC splits off a function (not an entry point; `.isra`, `.constprop` clones are)."""
    full = function_name(linkage)
    if "[clone .cold" in full:
        return ()
    untagged = _ABI_TAG.sub("", full)
    return tuple(dict.fromkeys((full, without_parameters(full), untagged,
                                without_parameters(untagged))))


def without_parameters(name: str) -> str:
    """``ns::f<int>(int, char) const`` → ``ns::f<int>``: cut at the parameter list, the
    bracket matching the last ``)`` (so ``operator()(int)`` keeps its ``operator()``)."""
    depth = 0
    for i in range(name.rfind(")"), -1, -1):
        if name[i] == ")":
            depth += 1
        elif name[i] == "(":
            depth -= 1
            if depth == 0:
                return name[:i]
    return name


_ABI_TAG = re.compile(r"\[abi:[^\]]*\]")


def display_name(sym: RawSymbol) -> str:
    """How a matched function is labelled: its C++ name when it has one."""
    return function_name(sym.name) if sym.name.startswith("_Z") else sym.name


def _match_in(path: str, spec: ProbeSpec) -> list[AttachPoint]:
    """Matching functions of one module, one attach point per address (aliases collapsed)."""
    points = []
    for sym in symbols_matching(path, spec.pattern):
        addr = sym.addr
        if spec.offset and sym.size and spec.offset >= sym.size:
            raise UbtError(f"{spec}: offset {spec.offset:#x} is past the end of {sym.name} "
                           f"({sym.size:#x} bytes)")
        if spec.offset:
            _check_boundary(path, sym, spec.offset)
        name = spec.pattern if not spec.is_glob else display_name(sym)
        points.append(AttachPoint(path, name, addr + spec.offset, spec.offset, spec.is_return))
    return points


def not_found(binary: str, pattern: str) -> str:
    """'no function X in BIN or its libraries; nearest: a (libc.so.6), b (ls)'."""
    where: dict[str, str] = {}
    for path in [binary, *libraries(binary)]:
        try:
            symbols = _code_symbols(path)
            names = {s.name for s in symbols} | {without_parameters(display_name(s))
                                                 for s in symbols if s.name.startswith("_Z")}
        except UbtError:
            continue
        for n in names:
            where.setdefault(n, os.path.basename(path))
    near = difflib.get_close_matches(pattern, list(where), n=5, cutoff=0.6)
    hint = "; nearest: " + ", ".join(f"{n} ({where[n]})" for n in near) if near else ""
    stripped = "" if _code_symbols(binary) else f" ({binary} has no symbol table)"
    return f"no function {pattern!r} in {binary} or its libraries{stripped}{hint}"


def _check_boundary(path: str, sym: RawSymbol, offset: int) -> None:
    """Refuse `func+OFF` inside an instruction: a breakpoint there would corrupt the code the
    target runs. Instruction starts come from objdump (binutils) over the function's bytes."""
    end = sym.addr + max(sym.size, offset + 16)
    try:
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn",
                              f"--start-address={sym.addr:#x}", f"--stop-address={end:#x}",
                              path], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise UbtError(f"cannot check {sym.name}+{offset:#x} is an instruction start "
                       f"(objdump: {e})") from None
    starts = []
    for line in out.splitlines():
        head, colon, _ = line.strip().partition(":")
        if colon and head and all(c in "0123456789abcdef" for c in head):
            starts.append(int(head, 16) - sym.addr)
    if offset not in starts:
        near = sorted(starts, key=lambda o: abs(o - offset))[:2]
        raise UbtError(f"{sym.name}+{offset:#x} is not the start of an instruction; nearest: "
                       + ", ".join(f"{sym.name}+{o:#x}" for o in sorted(near)))
