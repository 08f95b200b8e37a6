"""How `ubt process` prints hits: text like SystemTap's `print_ubacktrace()`, JSON, folded.

- text: a header line per hit (with the ``--print`` values as ``name=value``, as stap prints
  ``$$vars``), then one line per frame,
  `` 0xPC : func+0xOFF/0xSIZE [module] (file:line)`` and ``(inlined)`` for inlined frames,
  as `print_ubacktrace()` prints them plus the source position;
- JSON: one object per hit, `{"pid", "tid", "comm", "time", "probe", "frames", "stop_reason"}`
  with frames as in `ubt stack`, and `"vars": {label: value as printed}` with ``--print``;
- folded: `comm;outer;...;inner COUNT`, the input of flame-graph tools (aggregated).
"""
from __future__ import annotations

import json
import os
from typing import Any

from unwind.unwinder import StopReason

from .render import describe_stop, frame_json, frame_label, source_label
from .trace import Frame, Hit, StackTrace


def hit_text(hit: Hit) -> str:
    """One hit as text: header, frames, and a stop line when the walk ended early."""
    head = (f"{hit.probe} pid {hit.pid} tid {hit.tid} ({hit.comm}) "
            f"at {hit.time_ns / 1e9:.6f}" + "".join(f" {k}={v}" for k, v in hit.vars))
    return "\n".join([head, *trace_lines(hit.trace, hit.truncated)])


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
