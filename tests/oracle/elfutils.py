"""Address oracles: eu-addr2line (elfutils) and llvm-symbolizer, each run once over many
addresses fed on stdin, and the ELF symbol table as the fallback oracle.

Both return, per address, the inline chain innermost first as `OracleFrame`s, with ``None`` for
what the tool prints as ``??`` / ``""`` / line 0, so they compare directly with ubt's JSON.
"""
from __future__ import annotations

import bisect
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TIMEOUT = 600.0
LLVM_SYMBOLIZERS = ("llvm-symbolizer", "llvm-symbolizer-14")


@dataclass(frozen=True)
class OracleFrame:
    function: str | None
    file: str | None
    line: int | None
    column: int | None = None


Chain = tuple[OracleFrame, ...]


def _none_if(value: str | None, *unknown: str) -> str | None:
    return None if value is None or value in unknown else value


def _split_location(loc: str) -> tuple[str | None, int | None, int | None]:
    """``file:line[:col]`` → parts; ``??:0`` → (None, None, None)."""
    parts = loc.rsplit(":", 2)
    nums: list[int] = []
    while len(parts) > 1 and parts[-1].isdigit() and len(nums) < 2:
        nums.insert(0, int(parts.pop()))
    file = _none_if(":".join(parts), "??", "")
    line = nums[0] if nums else None
    col = nums[1] if len(nums) > 1 else None
    return file, (line or None), (col or None)


_INLINED_AT = re.compile(r"^(?P<name>.*) inlined at (?P<site>\S+) in (?P<caller>.*)$")
_ADDR_LINE = re.compile(r"^0x[0-9a-f]{16}$")


def parse_eu_addr2line(text: str) -> list[Chain]:
    """Parse ``eu-addr2line -a -f -i [-C]`` output (an address line, then name/location pairs)."""
    chains: list[Chain] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not _ADDR_LINE.match(lines[i]):
            raise ValueError(f"eu-addr2line output line {i + 1}: expected an address: "
                             f"{lines[i]!r}")
        i += 1
        frames = []
        while i < len(lines) and not _ADDR_LINE.match(lines[i]):
            name = lines[i]
            loc = lines[i + 1] if i + 1 < len(lines) else "??:0"
            i += 2
            m = _INLINED_AT.match(name)
            if m:
                name = m.group("name")
            file, line, col = _split_location(loc)
            frames.append(OracleFrame(_none_if(name, "??"), file, line, col))
        chains.append(tuple(frames))
    return chains


def eu_addr2line(elf: str, addresses: Sequence[int],
                 debug_dirs: Sequence[str] = ()) -> list[Chain]:
    """``eu-addr2line -a -f -i -C -e ELF`` over all addresses in one run (stdin); -C
    demangles C++ names (``fx::Worker::run(int)``), as ubt and gdb print them. `debug_dirs`
    are searched for debug files by build-id before ``/usr/lib/debug``."""
    path = ["--debuginfo-path=" + ":".join(["+", ".debug", *debug_dirs, "/usr/lib/debug"])] \
        if debug_dirs else []
    proc = subprocess.run(["eu-addr2line", *path, "-a", "-f", "-i", "-C", "-e", elf],
                          input="".join(f"{a:#x}\n" for a in addresses),
                          capture_output=True, text=True, timeout=TIMEOUT, check=True)
    chains = parse_eu_addr2line(proc.stdout)
    if len(chains) != len(addresses):
        raise ValueError(f"eu-addr2line answered {len(chains)} of {len(addresses)} addresses")
    return chains


def llvm_symbolizer_path() -> str | None:
    for name in LLVM_SYMBOLIZERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def llvm_symbolizer(elf: str, addresses: Sequence[int]) -> list[Chain]:
    """``llvm-symbolizer --obj=ELF --output-style=JSON`` (inlining on) over all addresses."""
    tool = llvm_symbolizer_path()
    if tool is None:
        raise FileNotFoundError("llvm-symbolizer")
    proc = subprocess.run([tool, f"--obj={elf}", "--output-style=JSON", "--inlining"],
                          input="".join(f"{a:#x}\n" for a in addresses),
                          capture_output=True, text=True, timeout=TIMEOUT, check=True)
    chains: list[Chain] = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        frames = []
        for s in doc.get("Symbol", []):
            frames.append(OracleFrame(_none_if(s.get("FunctionName"), "", "??"),
                                      _none_if(s.get("FileName"), "", "??"),
                                      s.get("Line") or None, s.get("Column") or None))
        chains.append(tuple(frames))
    if len(chains) != len(addresses):
        raise ValueError(f"llvm-symbolizer answered {len(chains)} of {len(addresses)} addresses")
    return chains


# ---- symbol tables ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Symbol:
    name: str
    start: int
    size: int


class SymbolOracle:
    """FUNC symbols (``.symtab`` and ``.dynsym``) of one or more ELF files (e.g. libc.so.6 and
    its separate debug file), answering "which names cover this address"."""

    def __init__(self, paths: Iterable[str]) -> None:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        syms: set[Symbol] = set()
        for path in paths:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                for sec in elf.iter_sections():
                    if not isinstance(sec, SymbolTableSection):
                        continue
                    for s in sec.iter_symbols():
                        if s["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC"):
                            continue
                        if s["st_shndx"] == "SHN_UNDEF" or not s.name:
                            continue
                        name = s.name.split("@", 1)[0]
                        syms.add(Symbol(name, s["st_value"], s["st_size"]))
        self.symbols = sorted(syms, key=lambda s: (s.start, s.size, s.name))
        self._starts = [s.start for s in self.symbols]

    def covering(self, addr: int) -> set[str]:
        """Names of every sized symbol with start <= addr < start + size."""
        out = set()
        hi = bisect.bisect_right(self._starts, addr)
        # symbols are short; look back over a bounded window of candidates
        for s in reversed(self.symbols[max(0, hi - 4096):hi]):
            if s.start <= addr < s.start + s.size:
                out.add(s.name)
            if addr - s.start > 1 << 20:
                break
        return out

    def starts(self, name: str) -> set[int]:
        """Start addresses of the symbols called `name`."""
        return {s.start for s in self.symbols if s.name == name}

    def nearest_below(self, addr: int) -> set[str]:
        """Names of the closest symbol at or below `addr` (whatever its size)."""
        hi = bisect.bisect_right(self._starts, addr)
        if hi == 0:
            return set()
        start = self._starts[hi - 1]
        return {s.name for s in self.symbols if s.start == start}


def build_id(path: str) -> str | None:
    """The GNU build-id of an ELF file as hex, or None."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import NoteSection
    with open(path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if not isinstance(sec, NoteSection):
                continue
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return str(note["n_desc"])
    return None


def debug_files(path: str) -> list[str]:
    """The file plus the separate debug files the oracles would use: the build-id directory and
    ``X.debug`` next to the file (the fixtures' .gnu_debuglink)."""
    out = [path]
    bid = build_id(path)
    if bid:
        p = f"/usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug"
        if os.path.exists(p):
            out.append(p)
    if os.path.exists(path + ".debug"):
        out.append(path + ".debug")
    return out


@functools.lru_cache(maxsize=32)
def symbols_of(path: str) -> SymbolOracle:
    """The (cached) symbol oracle of an ELF file and its debug files."""
    return SymbolOracle(debug_files(path))


def is_return_type_prefix(oracle_name: str | None, ubt_name: str | None) -> bool:
    """``int fx::dispatch<fx::Worker>(fx::Worker&, int)`` (demangler: template functions carry
    their return type) vs ``fx::dispatch<fx::Worker>(fx::Worker&, int)`` (gdb's form)."""
    if not oracle_name or not ubt_name or len(oracle_name) <= len(ubt_name):
        return False
    prefix = oracle_name[:-len(ubt_name)]
    return (oracle_name.endswith(ubt_name) and prefix.endswith(" ") and "(" not in prefix
            and "<" in ubt_name and ubt_name.endswith(")"))
