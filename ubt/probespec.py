"""Probe specifications as users type them, in ubt's, SystemTap's and bpftrace's spellings.

`ubt process BINARY FUNC` takes FUNC as a name or glob, `func+OFF` or `func%return`. The same
probe can be written the way a SystemTap or bpftrace user already knows it:

    process("/bin/ls").function("opendir")          process("/bin/ls").function("f").return
    uprobe:/bin/ls:opendir   u:/bin/ls:opendir      uretprobe:/bin/ls:f   ur:/bin/ls:f

`ubt list BINARY 'FUNC[@FILE][:LINE|:*|:N-M]'` takes a `ListSpec`, also in SystemTap's
spelling ``process("/bin/ls").statement("f@src/ls.c:*")`` (or ``.function("f*")``).

Parsing is pure text work; finding the symbols is `ubt.probes`'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

_STAP = re.compile(
    r'^process\("(?P<binary>[^"]+)"\)\.function\("(?P<func>[^"]+)"\)(?P<ret>\.return)?$')
_BPFTRACE = re.compile(r"^(?P<kind>uprobe|uretprobe|u|ur):(?P<binary>[^:]+):(?P<func>.+)$")
_STAP_LIST = re.compile(
    r'^process\("(?P<binary>[^"]+)"\)\.(?P<kind>statement|function)\("(?P<spec>[^"]+)"\)$')
_LIST = re.compile(r"^(?P<func>[^@:]+)(?:@(?P<file>[^:]+))?"
                   r"(?::(?P<lines>\*|\d+|\d+-\d+))?$")
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


@dataclass(frozen=True, slots=True)
class ListSpec:
    """What `ubt list` lists: functions matching `pattern` (a name or glob), optionally only
    those declared in a file ending with `file`; with `lines` None the functions themselves,
    else their probe-able lines from `lines[0]` to `lines[1]` (inclusive, absolute numbers).

    :param binary: from SystemTap's spelling; None when the command's BINARY applies.
    :param exact_line: a single ``:LINE`` was asked for (not a range or ``*``).
    """

    binary: str | None
    pattern: str
    file: str | None
    lines: tuple[int, int] | None
    exact_line: bool = False


def parse_list_spec(text: str) -> ListSpec:
    """Parse ``FUNC[@FILE][:LINE|:*|:N-M]`` or its SystemTap spelling; `UsageError` if
    malformed."""
    text = text.strip()
    binary = None
    m = _STAP_LIST.match(text)
    if m:
        binary, text = m["binary"], m["spec"]
        if m["kind"] == "statement" and ":" not in text:
            text += ":*"
    m = _LIST.match(text)
    if not m or not m["func"].strip():
        raise UsageError(f"cannot parse {text!r}: expected FUNC[@FILE][:LINE|:*|:N-M] or "
                         'process("BIN").statement("FUNC@FILE:*")')
    lines: tuple[int, int] | None = None
    spec = m["lines"]
    if spec == "*":
        lines = (0, 1 << 31)
    elif spec and "-" in spec:
        lo, hi = (int(x) for x in spec.split("-"))
        if lo > hi:
            raise UsageError(f"{text!r}: empty line range {lo}-{hi}")
        lines = (lo, hi)
    elif spec:
        lines = (int(spec), int(spec))
    return ListSpec(binary, m["func"].strip(), m["file"], lines,
                    bool(spec) and spec.isdigit())
