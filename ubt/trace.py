"""Symbolized backtraces: the values the pipeline produces and the renderers print.

A `Frame` is one line of a backtrace. Inlined functions get frames of their own, placed before the
frame they were inlined into and sharing its pc, as gdb shows them, so frame numbers match gdb's.
"""
from __future__ import annotations

from dataclasses import dataclass

from unwind.unwinder import StopReason


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a symbolized backtrace.

    :param pc: absolute address (a return address for every frame but the innermost).
    :param offset: `pc` minus the module's load bias: the address in the ELF file.
    :param method: how the frame was found: ``initial`` (registers), ``cfi``, ``fp``
        (frame-pointer fallback) or ``inline`` (an inlined call at the same pc).
    :param reason: why the frame has no function name, when it has none.
    """

    pc: int
    module: str | None
    build_id: str | None
    offset: int | None
    function: str | None
    func_offset: int | None
    func_size: int | None
    file: str | None
    line: int | None
    column: int | None
    inlined: bool
    method: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StackTrace:
    """A whole backtrace, innermost frame first, and why the walk ended."""

    frames: tuple[Frame, ...]
    stop_reason: StopReason
    #: bytes above the initial stack pointer the walk needed (to size later stack copies)
    stack_used: int = 0
    #: some frame's pc is in no module of the memory map used (a dlopen since it was read?)
    unmapped: bool = False

    @property
    def complete(self) -> bool:
        """True when the walk reached the outermost frame (return address undefined)."""
        return self.stop_reason is StopReason.END_OF_STACK


@dataclass(frozen=True, slots=True)
class ThreadTrace:
    """The backtrace of one thread of one process (what `ubt stack` prints per thread)."""

    pid: int
    tid: int
    comm: str
    trace: StackTrace


@dataclass(frozen=True, slots=True)
class Hit:
    """One probe hit of `ubt process`: who, when, which probe, and the backtrace there.

    :param time_ns: BPF ktime (CLOCK_MONOTONIC) of the hit.
    :param truncated: the stack copy was cut by the size cap before the walk was done.
    :param vars: the probe's ``--print`` values as (label, printed value).
    """

    pid: int
    tid: int
    comm: str
    time_ns: int
    probe: str
    trace: StackTrace
    truncated: bool = False
    vars: tuple[tuple[str, str], ...] = ()
