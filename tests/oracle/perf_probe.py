"""`perf probe` as an oracle for `ubt list`: the lines of a function (``-L``) and the variables
available at one of its lines (``-V FUNC:N``).

Line numbers: ``perf probe -L FUNC`` numbers lines relative to the function's declaration line
(0 is the ``DW_AT_decl_line``) and needs the source file to print anything. So the oracle hands
perf (``--source DIR``) a stand-in source whose line N reads ``L<N>``: perf finds it by the
file's base name (it strips leading directories of the DWARF path until a file exists under
DIR), and each listed line then carries its absolute number in its text. ``-V FUNC:N`` takes the
same relative N and prints one block per address of that line: ``@<symbol+offset>`` then
``type<TAB>name`` per variable (sorted, deduplicated).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

_LISTED = re.compile(r"^\s+(\d+)\s+L(\d+)\s*$")
_AT = re.compile(r"^\s+@<(?P<sym>[^+>]+)\+(?P<off>\d+)>\s*$")
_VAR = re.compile(r"^\t\t(?P<type>[^\t]+)\t(?P<name>\S+)\s*$")
STANDIN_LINES = 20000


@dataclass(frozen=True)
class PerfLines:
    """``perf probe -L`` of one function: absolute line → perf's relative number."""

    relative: dict[int, int]


@dataclass(frozen=True)
class PerfVars:
    """``perf probe -V FUNC:N``: variables by ELF address; `refused` holds perf's message when
    it would not place the probe (e.g. "This line is sharing the address with other lines")."""

    by_address: dict[int, frozenset[tuple[str, str]]]
    refused: str | None


def perf_lines(binary: str, function: str, source_name: str) -> PerfLines:
    """Run ``perf probe -x BINARY -L FUNCTION`` against a stand-in source named `source_name`."""
    with tempfile.TemporaryDirectory(prefix="ubt-perf-src-") as tmp:
        with open(os.path.join(tmp, source_name), "w") as f:
            f.write("".join(f"L{n}\n" for n in range(1, STANDIN_LINES)))
        proc = subprocess.run(["perf", "probe", "-x", binary, "--source", tmp, "-L", function],
                              capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"perf probe -L {function} failed: {proc.stderr.strip()}")
    relative = {}
    for line in proc.stdout.splitlines():
        m = _LISTED.match(line)
        if m:
            relative[int(m[2])] = int(m[1])
    return PerfLines(relative)


def perf_vars(binary: str, function: str, relative: int,
              symbols: dict[str, int]) -> PerfVars:
    """Run ``perf probe -x BINARY -V FUNCTION:RELATIVE``; `symbols` (name → ELF address)
    turns perf's ``@<sym+off>`` into addresses."""
    spec = f"{function}:{relative}" if relative else function
    proc = subprocess.run(["perf", "probe", "-x", binary, "-V", spec], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        return PerfVars({}, (proc.stderr.strip() or proc.stdout.strip()).splitlines()[0])
    blocks: dict[int, set[tuple[str, str]]] = {}
    current: set[tuple[str, str]] | None = None
    for line in proc.stdout.splitlines():
        m = _AT.match(line)
        if m:
            current = blocks.setdefault(symbols[m["sym"]] + int(m["off"]), set())
            continue
        m = _VAR.match(line)
        if m and current is not None:
            current.add((m["type"], m["name"]))
    return PerfVars({a: frozenset(v) for a, v in blocks.items()}, None)


def elf_symbols(*paths: str) -> dict[str, int]:
    """Function symbols (name → address) of the files, from ``nm`` (binutils)."""
    out: dict[str, int] = {}
    for path in paths:
        text = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True,
                              timeout=60).stdout
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwWiI":
                out.setdefault(parts[2], int(parts[0], 16))
    return out


def has_cfi(path: str) -> bool:
    """Whether `path` has call frame information perf can read (``.eh_frame`` with contents,
    or ``.debug_frame``): without it perf cannot resolve ``DW_OP_call_frame_cfa``."""
    text = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True,
                          timeout=60).stdout
    return any((".eh_frame " in line and "PROGBITS" in line) or ".debug_frame" in line
               for line in text.splitlines())
