"""Probe specifications as users type them, in ubt's, SystemTap's and bpftrace's spellings.

`ubt process BINARY FUNC` takes FUNC as a name or glob, `func+OFF` or `func%return`. The same
probe can be written the way a SystemTap or bpftrace user already knows it:

    process("/bin/ls").function("opendir")          process("/bin/ls").function("f").return
    uprobe:/bin/ls:opendir   u:/bin/ls:opendir      uretprobe:/bin/ls:f   ur:/bin/ls:f

Parsing is pure text work; finding the symbols is `ubt.probes`'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

_STAP = re.compile(
    r'^process\("(?P<binary>[^"]+)"\)\.function\("(?P<func>[^"]+)"\)(?P<ret>\.return)?$')
_BPFTRACE = re.compile(r"^(?P<kind>uprobe|uretprobe|u|ur):(?P<binary>[^:]+):(?P<func>.+)$")
_FUNC = re.compile(r"^(?P<name>[^+%]+)(?:\+(?P<off>0[xX][0-9a-fA-F]+|\d+))?(?P<ret>%return)?$")


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One probe as written: which binary (None: the command's BINARY), which function(s).

    :param pattern: a symbol name or an fnmatch glob (`str*`).
    :param offset: bytes past the function's entry (`func+OFF`); 0 is the entry itself.
    :param is_return: a uretprobe (`func%return`, `.return`, `uretprobe:`).
    """

    binary: str | None
    pattern: str
    offset: int = 0
    is_return: bool = False

    @property
    def is_glob(self) -> bool:
        """True when the pattern may match several functions."""
        return any(c in self.pattern for c in "*?[")

    def __str__(self) -> str:
        text = self.pattern + (f"+{self.offset:#x}" if self.offset else "")
        return text + ("%return" if self.is_return else "")


def parse_probe(text: str) -> ProbeSpec:
    """Parse one FUNC argument in any accepted spelling; a malformed one is a `UsageError`."""
    text = text.strip()
    m = _STAP.match(text)
    if m:
        return _with_binary(parse_probe(m["func"]), m["binary"], bool(m["ret"]))
    m = _BPFTRACE.match(text)
    if m:
        return _with_binary(parse_probe(m["func"]), m["binary"], m["kind"] in ("uretprobe", "ur"))
    m = _FUNC.match(text)
    if not m or not m["name"].strip():
        raise UsageError(f"cannot parse probe {text!r}: expected FUNC, FUNC+OFF, FUNC%return, "
                         'process("BIN").function("FUNC") or uprobe:BIN:FUNC')
    offset = int(m["off"], 0) if m["off"] else 0
    spec = ProbeSpec(None, m["name"].strip(), offset, bool(m["ret"]))
    if spec.is_return and spec.offset:
        raise UsageError(f"{text!r}: a return probe cannot have an offset")
    return spec


def _with_binary(inner: ProbeSpec, binary: str, is_return: bool) -> ProbeSpec:
    if is_return and inner.offset:
        raise UsageError(f"{inner}: a return probe cannot have an offset")
    return ProbeSpec(binary, inner.pattern, inner.offset, inner.is_return or is_return)
