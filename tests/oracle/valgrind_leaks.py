"""valgrind --leak-check=full as an oracle: its leak records, read from its XML output.

`run_memcheck` runs a program under memcheck with `--xml=yes` and returns every loss record
(`LeakRecord`: kind, bytes, blocks, frames innermost first). `compare_stacks` puts a ubt stack
and a valgrind stack side by side under explicit normalisation rules; each rule that changes
something is counted, so a test can assert how often each was needed (no silent fudging).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VgFrame:
    """One valgrind frame: function, source file (base name) and line, object file."""

    fn: str | None
    file: str | None
    line: int | None
    obj: str | None


@dataclass(frozen=True)
class LeakRecord:
    """One loss record: `kind` is e.g. ``Leak_DefinitelyLost``."""

    kind: str
    bytes: int
    blocks: int
    frames: tuple[VgFrame, ...]


def parse_xml(text: str) -> list[LeakRecord]:
    """The leak records (errors whose kind starts with ``Leak_``) of memcheck's XML output."""
    root = ET.fromstring(text)
    records = []
    for err in root.iter("error"):
        kind = err.findtext("kind") or ""
        if not kind.startswith("Leak_"):
            continue
        what = err.find("xwhat")
        assert what is not None, "a leak record without <xwhat>"
        frames = tuple(
            VgFrame(f.findtext("fn"), f.findtext("file"),
                    int(f.findtext("line") or 0) or None, f.findtext("obj"))
            for f in err.iter("frame"))
        records.append(LeakRecord(kind, int(what.findtext("leakedbytes") or 0),
                                  int(what.findtext("leakedblocks") or 0), frames))
    return records


def run_memcheck(argv: Sequence[str], timeout: float = 300) -> list[LeakRecord]:
    """Run `argv` under memcheck (full leak check, 64 callers) and return its leak records."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "memcheck.xml")
        subprocess.run(["valgrind", "--tool=memcheck", "--leak-check=full", "--num-callers=64",
                        "--xml=yes", f"--xml-file={xml}", *argv], check=True,
                       capture_output=True, timeout=timeout)
        with open(xml) as f:
            return parse_xml(f.read())


# ---- normalisation ------------------------------------------------------------------------

#: Rule names, counted in `compare_stacks`' Counter each time one changes a stack.
VG_ALLOCATOR_CHAIN = "valgrind's replacement frames collapsed to the one the program called"
BELOW_MAIN = "ubt's frames below main dropped (valgrind stops at main)"
CLONE = "thread bottom: glibc's __clone3 (ubt) is clone under valgrind (it has no clone3)"

Frame = tuple[str | None, str | None, int | None]


def ubt_frames(stack: list[dict[str, object]], rules: Counter[str]) -> list[Frame]:
    """A ubt JSON stack as (function, file base name, line); frame 0 (the allocator) by name."""
    out: list[Frame] = []
    for n, f in enumerate(stack):
        fn = f["function"]
        assert fn is None or isinstance(fn, str)
        if fn == "__clone3":
            fn = "clone"
            rules[CLONE] += 1
        file, line = f["file"], f["line"]
        assert (file is None or isinstance(file, str)) and (line is None or isinstance(line, int))
        out.append((fn, None, None) if n == 0 or fn == "clone"
                   else (fn, os.path.basename(file) if file else None, line))
        if fn == "main":
            if n + 1 < len(stack):
                rules[BELOW_MAIN] += 1
            break
    return out


def valgrind_frames(record: LeakRecord, rules: Counter[str]) -> list[Frame]:
    """A valgrind stack in the same shape; its replacement frames (vgpreload) collapse into
    the outermost, the allocator the program called (posix_memalign, not its memalign)."""
    frames = list(record.frames)
    replaced = [f for f in frames if f.obj and "vgpreload" in f.obj]
    if len(replaced) > 1:
        rules[VG_ALLOCATOR_CHAIN] += 1
        frames = frames[len(replaced) - 1:]
    return [(f.fn, None, None) if n == 0 or f.fn == "clone" else
            (f.fn, os.path.basename(f.file) if f.file else None, f.line)
            for n, f in enumerate(frames)]
