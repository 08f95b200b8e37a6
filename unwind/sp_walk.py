"""The walk most stacks need: only rsp and the return addresses, from captured stack bytes.

In code built without frame pointers nearly every CFI row says "CFA = rsp + N, return address
at CFA - 8" (plus where callee-saved registers were stored). Along a chain of such rows the
frames depend on nothing but the starting pc and sp and the return-address words: the saved
callee-saved registers are restored by the full unwinder but never consulted again, since no
later CFA is computed from them. So such a stack can be walked reading one word per frame and
keeping two numbers, about three times faster than the general walk, which matters when
thousands of hits a second are unwound.

The result must be the general walk's, frame for frame and stop reason for stop reason. Rows
are used here only when that is certain: CFA from rsp with a positive offset, no expression,
not a signal frame, rsp not restored from memory, the return address saved in memory (or
undefined: the outermost frame), every saved-register slot inside the captured bytes (the
general walk reads them all and stops with a memory fault when one is outside). At the first
frame that does not qualify the walk gives up (None) and the caller does the general walk.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .regs import RA, RSP
from .table import RawRule, RuleKind

_unpack_u64 = struct.Struct("<Q").unpack_from
_OFFSET = int(RuleKind.OFFSET)
_UNDEFINED = int(RuleKind.UNDEFINED)

#: A row reduced for this walk: (cfa offset from rsp, return address offset from the CFA or
#: None when undefined, lowest and highest saved-slot offset from the CFA).
SpRule = tuple[int, "int | None", int, int]
#: "Not usable here" in the memo, where a missing key means "not looked at yet".
NOT_SP: Any = ()


def reduce_rule(rule: RawRule | None) -> SpRule | Any:
    """The row in this walk's terms, or `NOT_SP` when the general walk must do it."""
    if rule is None:
        return NOT_SP  # no CFI: the general walk tries the frame pointer
    cfa_reg, cfa_off, cfa_expr, regs, signal, _ = rule
    if cfa_expr is not None or cfa_reg != RSP or cfa_off <= 0 or signal:
        return NOT_SP
    ra_off = None
    slots = []
    for reg, kind, val in regs:
        if reg == RSP or kind not in (_OFFSET, _UNDEFINED):
            return NOT_SP
        if kind == _OFFSET:
            slots.append(val)
            if reg == RA:
                ra_off = val
    if ra_off is None and not any(reg == RA and kind == _UNDEFINED for reg, kind, _ in regs):
        return NOT_SP  # no rule for the return address: the general walk's BAD_CFI
    return (cfa_off, ra_off, min(slots, default=0), max(slots, default=0))


#: The frames and how the walk ended: "end" (return address undefined), "depth" (max frames),
#: "zero" (a return address of 0).
SpWalk = tuple[list[Any], str]
_new = tuple.__new__


def sp_walk(pc: int, sp: int, data: bytes, base: int, max_frames: int,
            rules: dict[int, Any], fill: Callable[[int, int], SpRule | Any],
            frame_type: type, methods: tuple[Any, Any]) -> SpWalk | None:
    """Walk from `pc`/`sp` over `data` (the stack bytes from address `base`); None when a
    frame needs the general walk or a read falls outside the bytes.

    :param rules: lookup address (pc, or pc - 1 for a return address) → reduced row, as far as
        known; `fill(pc, lookup_address)` finds, stores and returns a missing one.
    :param frame_type: the frames are ``frame_type(pc, sp, cfa, is_activation, method)``
        tuples (the unwinder's RawFrame, built here directly: this runs for every frame),
        `method` ``methods[0]`` for returned-to frames and ``methods[1]`` for the first.
    """
    frames: list[Any] = []
    limit = len(data) - 8
    activation = True
    while True:
        if pc == 0:
            return frames, "zero"
        at = pc if activation else pc - 1
        rule = rules.get(at)
        if rule is None:
            rule = fill(pc, at)
        if rule is NOT_SP:
            return None
        cfa_off, ra_off, low, high = rule
        cfa = sp + cfa_off
        if cfa + low - base < 0 or cfa + high - base > limit:
            return None  # the general walk stops there with a memory fault
        frames.append(_new(frame_type, (pc, sp, cfa, activation, methods[activation])))
        if ra_off is None:
            return frames, "end"
        if len(frames) >= max_frames:
            return frames, "depth"
        pc = _unpack_u64(data, cfa + ra_off - base)[0]
        sp = cfa
        activation = False
