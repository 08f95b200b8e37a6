"""How `ubt process` prints hits: text like SystemTap's `print_ubacktrace()`, JSON, folded.

- text: a header line per hit (with the ``--print`` values as ``name=value``, as stap prints
  ``$$vars``), then one line per frame,
  `` 0xPC : func+0xOFF/0xSIZE [module] (file:line)`` and ``(inlined)`` for inlined frames,
  as `print_ubacktrace()` prints them plus the source position;
- JSON: one object per hit, `{"pid", "tid", "comm", "time", "probe", "frames", "stop_reason"}`
  with frames as in `ubt stack`, and `"vars": {label: value as printed}` with ``--print``;
- folded: `comm;outer;...;inner COUNT`, the input of flame-graph tools (aggregated).

`HitOutput` sends each resolved hit to one of them: written as it comes and flushed once per
batch of records (a quiet probe shows each hit at once, a busy one does not pay a write system
call per hit), or counted per distinct stack and printed at the end (`--aggregate`, folded).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, TextIO

from unwind.unwinder import StopReason

from .render import describe_stop, frame_json, frame_label, source_label
from .trace import Frame, Hit, StackTrace


class TextPrinter:
    """Hits as text: a header, the frames, and a stop line when the walk ended early.

    The pipeline hands out one frames tuple per distinct stack, so the frame lines are made once
    per stack and reused (keyed by the tuple's identity, checked): at thousands of hits per
    second of a few paths, formatting them again was a third of the walker's time."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[int, StopReason, bool], tuple[tuple[Frame, ...], str]] = {}

    def hit(self, hit: Hit) -> str:
        """One hit as text, ending in a newline."""
        head = (f"{hit.probe} pid {hit.pid} tid {hit.tid} ({hit.comm}) "
                f"at {hit.time_ns / 1e9:.6f}" + "".join(f" {k}={v}" for k, v in hit.vars))
        frames = hit.trace.frames
        memo = (id(frames), hit.trace.stop_reason, hit.truncated)
        known = self._bodies.get(memo)
        if known is None or known[0] is not frames:
            if len(self._bodies) >= 1 << 14:
                self._bodies.clear()
            body = "".join(f"\n{line}" for line in trace_lines(hit.trace, hit.truncated))
            known = self._bodies[memo] = (frames, body)
        return head + known[1] + "\n"


def trace_lines(trace: StackTrace, truncated: bool = False) -> list[str]:
    """The frame lines of a trace in `print_ubacktrace()` style."""
    lines = [f" {f.pc:#x} : {frame_label(f)} [{_module(f)}]"
             f"{source_label(f.file, f.line)}{' (inlined)' if f.inlined else ''}"
             for f in trace.frames]
    if trace.stop_reason is not StopReason.END_OF_STACK:
        why = describe_stop(trace.stop_reason)
        lines.append(f" stopped: {why}" + (" (stack copy cut at --stack-size)"
                                           if truncated else ""))
    return lines


def _module(f: Frame) -> str:
    return os.path.basename(f.module) if f.module else "unknown"


def hit_json(hit: Hit, count: int | None = None) -> str:
    """One hit as one JSON line (`time` in seconds, CLOCK_MONOTONIC); aggregated stacks add
    their `count`."""
    doc: dict[str, Any] = {
        "pid": hit.pid, "tid": hit.tid, "comm": hit.comm, "time": hit.time_ns / 1e9,
        "probe": hit.probe, "frames": [frame_json(f) for f in hit.trace.frames],
        "stop_reason": hit.trace.stop_reason.name.lower(), "truncated": hit.truncated}
    if hit.vars:
        doc["vars"] = dict(hit.vars)
    if count is not None:
        doc["count"] = count
    return json.dumps(doc)


def folded_key(hit: Hit) -> str:
    """`comm;outer;...;inner` for flame graphs: function names, `??` when unknown."""
    names = [f.function or f"?? [{_module(f)}]" for f in reversed(hit.trace.frames)]
    return ";".join([hit.comm, *names])


def aggregate_text(count: int, hit: Hit) -> str:
    """One aggregated stack: its count, then its frames (bpftrace's `@[ustack] = count()`)."""
    return "\n".join([f"{count} hits of {hit.probe} ({hit.comm}):", *trace_lines(hit.trace)])


def stack_key(hit: Hit) -> str:
    """Identical stacks: the same code positions (module + offset, so the same path in two
    processes of a command counts once whatever their load addresses), the same probe."""
    return "\n".join(f"{f.module}+{f.offset:x}:{int(f.inlined)}" if f.module is not None
                     and f.offset is not None else f"{f.pc:x}:{int(f.inlined)}"
                     for f in hit.trace.frames) + hit.probe


class Aggregate:
    """Counts per distinct stack (`--aggregate`, `--format folded`), one example hit each."""

    def __init__(self, folded: bool) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, Hit] = {}
        self._folded = folded
        # the pipeline hands out one frames tuple per distinct stack: its key is made once
        self._keys: dict[tuple[int, str, str], tuple[tuple[Frame, ...], str]] = {}

    def add(self, hit: Hit) -> None:
        frames = hit.trace.frames
        memo = (id(frames), hit.probe, hit.comm)
        known = self._keys.get(memo)
        if known is None or known[0] is not frames:
            if len(self._keys) >= 1 << 16:
                self._keys.clear()
            key = folded_key(hit) if self._folded else stack_key(hit)
            known = self._keys[memo] = (frames, key)
        key = known[1]
        self.counts[key] += 1
        self.examples.setdefault(key, hit)

    def print(self, fmt: str, out: TextIO) -> None:
        """The stacks, least frequent first (the most frequent ends next to the prompt)."""
        for key, n in sorted(self.counts.items(), key=lambda kv: kv[1]):
            if fmt == "folded":
                out.write(f"{key} {n}\n")
            elif fmt == "json":
                out.write(hit_json(self.examples[key], n) + "\n")
            else:
                out.write(aggregate_text(n, self.examples[key]) + "\n\n")
        out.flush()


class HitOutput:
    """One run's output in format `fmt` (text, json, folded) on `out`."""

    def __init__(self, fmt: str, aggregate: bool, out: TextIO) -> None:
        self._fmt = fmt
        self._out = out
        self._aggregate = Aggregate(fmt == "folded") if aggregate or fmt == "folded" else None
        self._text = TextPrinter()

    def add(self, hit: Hit) -> None:
        """Count the hit, or write it (visible at the next `flush`)."""
        if self._aggregate is not None:
            self._aggregate.add(hit)
        elif self._fmt == "json":
            self._out.write(hit_json(hit) + "\n")
        else:
            self._out.write(self._text.hit(hit) + "\n")

    def flush(self) -> None:
        """Push what was written to the terminal or pipe (after each batch of records)."""
        if self._aggregate is None:
            self._out.flush()

    def finish(self) -> None:
        """The end of the run: the counted stacks, or a last flush."""
        if self._aggregate is not None:
            self._aggregate.print(self._fmt, self._out)
        else:
            self._out.flush()
