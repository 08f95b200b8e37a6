"""Text and JSON renderings of backtraces and symbolized addresses.

The formats are an interface (other tools parse them), so they are fixed here in one place:
- text frame: ``#N 0xPC func+0xOFF/0xSIZE (file:line) [module]``, ``(inlined)`` after inlined
  frames, and a last line ``stopped: REASON`` when the walk did not reach the outermost frame;
- JSON: one object per line, frames innermost first, with the fields of `Frame`.
"""
from __future__ import annotations

import json
import os
from typing import Any

from unwind.unwinder import StopReason

from symbolizer.frames import SymbolReason, SymFrame

from .trace import Frame, StackTrace, ThreadTrace


def frame_label(frame: Frame) -> str:
    """``func+0xOFF/0xSIZE`` (or just ``func`` for an inlined frame); ``??`` when unknown."""
    if frame.function is None:
        return "??"
    if frame.inlined or frame.func_offset is None:
        return frame.function
    size = f"/{frame.func_size:#x}" if frame.func_size else ""
    return f"{frame.function}+{frame.func_offset:#x}{size}"


def source_label(file: str | None, line: int | None, column: int | None = None) -> str:
    """``(file:line)`` or ``(file:line:column)``; empty when the file is unknown."""
    if not file:
        return ""
    where = f"{file}:{line or 0}" + (f":{column}" if column else "")
    return f" ({where})"


def module_label(module: str | None) -> str:
    """``[name]``: the module's file name, or ``[unknown]`` outside every module."""
    return f" [{os.path.basename(module)}]" if module else " [unknown]"


def text_frames(trace: StackTrace) -> list[str]:
    """The numbered frame lines of one trace, plus the stop line when it ended early."""
    lines = [f"#{n:<2} {f.pc:#018x} {frame_label(f)}{source_label(f.file, f.line)}"
             f"{module_label(f.module)}{' (inlined)' if f.inlined else ''}"
             for n, f in enumerate(trace.frames)]
    if trace.stop_reason is not StopReason.END_OF_STACK:
        lines.append(f"stopped: {describe_stop(trace.stop_reason)}")
    return lines


def describe_stop(reason: StopReason) -> str:
    """A short human phrase for why a walk ended before the outermost frame."""
    return {
        StopReason.NO_UNWIND_INFO: "no unwind information for the next frame",
        StopReason.MEMORY_FAULT: "stack truncated (memory beyond the copied stack was needed)",
        StopReason.MAX_DEPTH: "maximum depth reached",
        StopReason.PC_ZERO: "return address is zero",
        StopReason.SP_NOT_INCREASING: "stack pointer did not increase (corrupt stack?)",
        StopReason.BAD_CFI: "unwind information could not be evaluated",
    }.get(reason, reason.name.lower())


def thread_text(t: ThreadTrace) -> str:
    """One thread of `ubt stack` as text: a header line and its frames."""
    return "\n".join([f"TID {t.tid} ({t.comm}):", *text_frames(t.trace)])


def frame_json(f: Frame) -> dict[str, Any]:
    """A frame as the JSON object documented in the README."""
    return {"pc": f.pc, "module": f.module, "build_id": f.build_id, "offset": f.offset,
            "function": f.function, "func_offset": f.func_offset, "file": f.file,
            "line": f.line, "column": f.column, "inlined": f.inlined, "method": f.method,
            "reason": f.reason}


def thread_json(t: ThreadTrace) -> str:
    """One thread of `ubt stack` as one JSON line."""
    return json.dumps({"pid": t.pid, "tid": t.tid, "comm": t.comm,
                       "frames": [frame_json(f) for f in t.trace.frames],
                       "stop_reason": t.trace.stop_reason.name.lower()})


def _sym_label(s: SymFrame) -> str:
    label = s.function or "??"
    if s.function and not s.inlined and s.func_offset is not None:
        label += f"+{s.func_offset:#x}" + (f"/{s.func_size:#x}" if s.func_size else "")
    return label


def address_text(addr: int, module: str | None, syms: tuple[SymFrame, ...]) -> str:
    """`ubt symbolize` text: one line per frame, innermost first, all with the address.

    A reason worse than "no debug info" (which stripped code always has) is shown in angle
    brackets, e.g. ``<corrupt debug info>``.
    """
    mod = module_label(module)
    if not syms:
        return f"{addr:#x} ??{mod}"
    return "\n".join(
        f"{addr:#x} {_sym_label(s)}{source_label(s.file, s.line, s.column)}{mod}"
        f"{' (inlined)' if s.inlined else ''}"
        f"{f' <{s.reason.value}>' if s.reason not in (None, SymbolReason.NO_DEBUG_INFO) else ''}"
        for s in syms)


def address_json(addr: int, module: str | None, elf_addr: int | None,
                 syms: tuple[SymFrame, ...]) -> str:
    """`ubt symbolize` JSON: one object per address, frames innermost first."""
    return json.dumps({
        "address": addr, "module": module, "offset": elf_addr,
        "frames": [{"function": s.function, "file": s.file, "line": s.line, "column": s.column,
                    "inlined": s.inlined, "reason": s.reason and s.reason.name.lower()}
                   for s in syms]})
