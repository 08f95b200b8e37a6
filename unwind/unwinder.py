"""The frame-by-frame walk: registers + memory → the chain of return addresses.

For each frame the unwinder finds the module's `UnwindTable` row for the pc (``pc - 1`` for
return addresses, see `RawFrame.lookup_pc`), computes the CFA and the caller's registers from
it, and repeats until a rule says the return address is undefined (the outermost frame) or
something stops it; every trace ends with a `StopReason`. Where no CFI covers a pc it falls
back to the frame-pointer chain (CFA = rbp + 16, return address at rbp + 8, saved rbp at rbp).

The loop is written for throughput (hundreds of thousands of frames per second in pure Python):
tables hand out pre-built rule tuples through an LRU, the common row (CFA = register + offset,
registers saved at CFA - n) takes a special path, and reads from captured stack bytes are
inlined.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from .expr import ExprError, evaluate
from .memory import MemoryFault, MemoryReader, StackBytes
from .regs import RA, RBP, RSP
from .sp_walk import reduce_rule, sp_walk
from .table import RawRule, RuleKind, UnwindTable

_unpack_u64 = struct.Struct("<Q").unpack_from
_new_frame = tuple.__new__  # RawFrame without NamedTuple's Python-level __new__ (per frame)
_MASK = (1 << 64) - 1
#: The frame-pointer fallback trusts rbp only this far above the stack pointer.
_FP_MAX_DISTANCE = 64 << 20
#: rsp and the callee-saved registers (rbx, rbp, r12–r15): the ones `Unwinder.caller` knows.
_KEPT_REGISTERS = frozenset((3, 6, 7, 12, 13, 14, 15))
_RULE_MEMO = 1 << 16  # addresses remembered per Unwinder before the memo starts over
_MISSING: Any = object()  # "not looked up yet" in the memo, where None means "no rule"

_OFFSET = int(RuleKind.OFFSET)
_VAL_OFFSET = int(RuleKind.VAL_OFFSET)
_REGISTER = int(RuleKind.REGISTER)
_EXPRESSION = int(RuleKind.EXPRESSION)
_VAL_EXPRESSION = int(RuleKind.VAL_EXPRESSION)
_UNDEFINED = int(RuleKind.UNDEFINED)


class Method(Enum):
    """How a frame was found."""

    INITIAL = "initial"  #: the captured registers themselves
    CFI = "cfi"          #: from its callee's CFI row
    FP = "fp"            #: from its callee's frame pointer (no CFI covered the callee's pc)

    # Members are singletons: identity hashing is exact, and C-level (Enum's own hashes the
    # name in Python, and a frame's method is part of the per-stack cache key of every hit).
    __hash__ = object.__hash__


class StopReason(Enum):
    """Why a trace ends where it does."""

    END_OF_STACK = "end of stack"            #: the return address is undefined: outermost frame
    NO_UNWIND_INFO = "no unwind info"        #: no CFI and no usable frame pointer for the pc
    MEMORY_FAULT = "memory fault"            #: a read fell outside the captured stack
    MAX_DEPTH = "max depth"                  #: max_frames reached with frames left
    PC_ZERO = "pc zero"                      #: the return address is 0
    SP_NOT_INCREASING = "sp not increasing"  #: the caller's sp is not above the callee's
    BAD_CFI = "bad cfi"                      #: a rule could not be evaluated


#: Methods of sp_walk's frames, by is_activation (only the first frame is one there).
_SP_METHODS = (Method.CFI, Method.INITIAL)
#: How `sp_walk` ended, as the general walk reports it.
_SP_STOPS = {"end": StopReason.END_OF_STACK, "depth": StopReason.MAX_DEPTH,
             "zero": StopReason.PC_ZERO}


class RawFrame(NamedTuple):
    """One unwound frame, absolute addresses only (a NamedTuple: built once per frame, cheaply).

    :param sp: the frame's stack pointer.
    :param cfa: the frame's canonical frame address (its caller's sp); None for the frame
        where the walk stopped because its caller could not be recovered.
    :param is_activation: the pc was interrupted rather than returned to (innermost frame, or
        the frame under a signal trampoline), so it is looked up as is, not as ``pc - 1``.
    """

    pc: int
    sp: int
    cfa: int | None
    is_activation: bool
    method: Method

    @property
    def lookup_pc(self) -> int:
        """The pc to look up rows and symbols with: ``pc - 1`` for return addresses."""
        return self.pc if self.is_activation or self.pc == 0 else self.pc - 1


@dataclass(frozen=True, slots=True)
class UnwindResult:
    """The frames, innermost first, and why the walk stopped (`detail` says more, if anything)."""

    frames: tuple[RawFrame, ...]
    stop_reason: StopReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CallerFrame:
    """Frame 1 as the general walk recovers it from the innermost frame's CFI row.

    :param pc: its pc (the return address).
    :param regs: its registers: rsp and rip exact; the callee-saved ones (rbx, rbp, r12–r15)
        restored or kept as CFI says; the others are the innermost frame's, not the caller's.
    :param cfa: its CFA (from its own row), None when not known.
    """

    pc: int
    regs: dict[int, int]
    cfa: int | None


#: Finds the unwind table and load bias of the module containing an absolute pc.
Lookup = Callable[[int], "tuple[UnwindTable, int] | None"]


class _Stop(Exception):
    """Ends the walk from inside a helper with a reason."""

    def __init__(self, reason: StopReason, detail: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _read_u64(memory: MemoryReader, addr: int) -> int:
    return int.from_bytes(memory.read(addr & _MASK, 8), "little")


def _apply_general(rule: RawRule, regs: dict[int, int], memory: MemoryReader) -> int:
    """Apply any row to `regs` in place (caller registers); return the CFA."""
    cfa_reg, cfa_off, cfa_expr, rules, _, _ = rule
    if cfa_expr is None:
        cfa = (regs[cfa_reg] + cfa_off) & _MASK
    else:
        cfa = evaluate(cfa_expr, regs, memory)
    new: dict[int, int | None] = {}
    for reg, kind, val in rules:
        if kind == _OFFSET:
            new[reg] = _read_u64(memory, cfa + val)  # type: ignore[operator]
        elif kind == _VAL_OFFSET:
            new[reg] = (cfa + val) & _MASK  # type: ignore[operator]
        elif kind == _REGISTER:
            new[reg] = regs[val]  # type: ignore[index]
        elif kind == _EXPRESSION:
            new[reg] = _read_u64(memory, evaluate(val, regs, memory, cfa, cfa))  # type: ignore
        elif kind == _VAL_EXPRESSION:
            new[reg] = evaluate(val, regs, memory, cfa, cfa)  # type: ignore[arg-type]
        elif kind == _UNDEFINED:
            new[reg] = None
    if RA not in new:
        raise _Stop(StopReason.BAD_CFI, "no rule for the return address")
    if RSP not in new:
        regs[RSP] = cfa
    for reg, value in new.items():
        if value is None:
            regs.pop(reg, None)
        else:
            regs[reg] = value
    return cfa


def _frame_pointer(regs: dict[int, int], memory: MemoryReader, sp: int) -> int:
    """Unwind by the rbp chain in place; return the CFA (rbp + 16)."""
    rbp = regs.get(RBP)
    if rbp is None or rbp < sp or rbp - sp > _FP_MAX_DISTANCE or rbp & 7:
        raise _Stop(StopReason.NO_UNWIND_INFO)
    try:
        saved_rbp = _read_u64(memory, rbp)
        ra = _read_u64(memory, rbp + 8)
    except MemoryFault:
        raise _Stop(StopReason.NO_UNWIND_INFO, "no CFI and no readable frame pointer") from None
    regs[RBP] = saved_rbp
    regs[RA] = ra
    regs[RSP] = rbp + 16
    return rbp + 16


class Unwinder:
    """Walks stacks; `lookup` maps an absolute pc to its module's table and load bias."""

    def __init__(self, lookup: Lookup, max_frames: int = 256, sp_walk: bool = True) -> None:
        """:param sp_walk: try `unwind.sp_walk` first on captured stacks (same results,
        faster); off only to compare the two."""
        self.lookup = lookup
        self.max_frames = max_frames
        self.sp_walk = sp_walk
        # lookup address (pc, or pc - 1 for a return address) → its rule, or None: one dict
        # probe per frame where hits walk the same paths (`lookup` must be stable: the caller
        # makes one Unwinder per memory map)
        self._rules: dict[int, RawRule | None] = {}
        self._sp_rules: dict[int, Any] = {}  # the same, reduced for `sp_walk` (or NOT_SP)
        self._sp_misses: dict[int, int] = {}  # starting pc → sp walks given up in a row

    def _rule_at(self, pc: int, at: int) -> RawRule | None:
        """The CFI rule covering absolute address `at` (found through `pc`'s module)."""
        got = self.lookup(pc)
        rule = None
        if got is not None:
            table, bias = got
            rule = table.raw_for(at - bias)
        if len(self._rules) >= _RULE_MEMO:
            self._rules.clear()
        self._rules[at] = rule
        return rule

    def _sp_rule(self, pc: int, at: int) -> Any:
        """The row at `at` reduced for `sp_walk` (memoized like `_rule_at`)."""
        rule = self._rules.get(at, _MISSING)
        if rule is _MISSING:
            rule = self._rule_at(pc, at)
        if len(self._sp_rules) >= _RULE_MEMO:
            self._sp_rules.clear()
        reduced = self._sp_rules[at] = reduce_rule(rule)
        return reduced

    def _try_sp_walk(self, pc: int, sp: int, memory: StackBytes) -> UnwindResult | None:
        """`sp_walk` when the stack allows it (its result is the general walk's); a start
        whose walks keep needing the general one is retried only now and then."""
        misses = self._sp_misses.get(pc, 0)
        if misses >= 2 and misses & 63:
            self._sp_misses[pc] = misses + 1
            return None
        got = sp_walk(pc, sp, memory.data, memory.base, self.max_frames, self._sp_rules,
                      self._sp_rule, RawFrame, _SP_METHODS)
        if got is None:
            if len(self._sp_misses) >= _RULE_MEMO:
                self._sp_misses.clear()
            self._sp_misses[pc] = misses + 1
            return None
        if misses:
            del self._sp_misses[pc]
        frames, how = got
        return UnwindResult(tuple(frames), _SP_STOPS[how])

    def caller(self, regs: Mapping[int, int], memory: MemoryReader) -> CallerFrame | None:
        """Frame 1 with its registers, by one step of the general walk (`unwind` keeps no
        registers). None when the innermost frame has no CFI (the frame-pointer guess restores
        rbp only), is a signal frame, or the step fails."""
        pc, sp = regs.get(RA), regs.get(RSP)
        if pc is None or sp is None:
            return None
        rule = self._rules.get(pc, _MISSING)
        if rule is _MISSING:
            rule = self._rule_at(pc, pc)
        if rule is None or rule[4]:
            return None
        caller = dict(regs)
        try:
            _apply_general(rule, caller, memory)
            ret, caller_sp = caller.get(RA), caller.get(RSP)
            if not ret or caller_sp is None or caller_sp <= sp:
                return None
            row = self._rules.get(ret - 1, _MISSING)
            if row is _MISSING:
                row = self._rule_at(ret, ret - 1)
            cfa = None
            if row is not None and row[2] is None and row[0] in _KEPT_REGISTERS:
                cfa = (caller[row[0]] + row[1]) & _MASK
        except (_Stop, MemoryFault, ExprError, KeyError):
            return None
        return CallerFrame(ret, caller, cfa)

    def unwind(self, regs: Mapping[int, int], memory: MemoryReader) -> UnwindResult:
        """Unwind from `regs` (DWARF number → value) reading saved values from `memory`."""
        pc = regs.get(RA)
        sp = regs.get(RSP)
        if pc is None or sp is None:
            return UnwindResult((), StopReason.BAD_CFI, "registers lack rip or rsp")
        if self.sp_walk and isinstance(memory, StackBytes):
            quick = self._try_sp_walk(pc, sp, memory)
            if quick is not None:
                return quick
        regs = dict(regs)
        rules = self._rules
        max_frames = self.max_frames
        frames: list[RawFrame] = []
        append = frames.append
        if isinstance(memory, StackBytes):
            data, base, limit = memory.data, memory.base, len(memory.data) - 8
        else:
            data, base, limit = b"", 0, -1
        fast_memory = limit >= 0
        cfi, fp = Method.CFI, Method.FP
        method = Method.INITIAL
        activation = True
        reason = StopReason.MAX_DEPTH
        detail = ""
        while True:
            if pc == 0:
                reason = StopReason.PC_ZERO
                break
            try:
                at = pc if activation else pc - 1
                rule: RawRule | None = rules.get(at, _MISSING)
                if rule is _MISSING:
                    rule = self._rule_at(pc, at)
                if rule is None:
                    next_method = fp
                    signal = False
                    cfa = _frame_pointer(regs, memory, sp)
                else:
                    next_method = cfi
                    signal = rule[4]
                    if rule[5] and fast_memory:
                        # The common row: CFA = reg + off; registers saved at CFA + n (read
                        # from the captured bytes; the reads use the CFA only, so each saved
                        # value can go straight into regs).
                        cfa = regs[rule[0]] + rule[1]
                        for reg, _, off in rule[3]:
                            off = cfa + off - base  # type: ignore[operator]
                            if off < 0 or off > limit:
                                raise MemoryFault(off + base)
                            regs[reg] = _unpack_u64(data, off)[0]
                        regs[RSP] = cfa
                    else:
                        cfa = _apply_general(rule, regs, memory)
            except _Stop as stop:
                reason, detail = stop.reason, stop.detail
                append(RawFrame(pc, sp, None, activation, method))
                break
            except MemoryFault as fault:
                reason, detail = StopReason.MEMORY_FAULT, str(fault)
                append(RawFrame(pc, sp, None, activation, method))
                break
            except (ExprError, KeyError) as err:
                reason, detail = StopReason.BAD_CFI, str(err)
                append(RawFrame(pc, sp, None, activation, method))
                break
            append(_new_frame(RawFrame, (pc, sp, cfa, activation, method)))
            new_pc = regs.get(RA)
            if new_pc is None:
                reason = StopReason.END_OF_STACK
                break
            if len(frames) >= max_frames:
                break
            new_sp = regs.get(RSP)
            if new_sp is None:
                reason, detail = StopReason.BAD_CFI, "the caller's rsp is undefined"
                break
            if new_sp <= sp and not signal:
                reason = StopReason.SP_NOT_INCREASING
                break
            pc, sp, activation, method = new_pc, new_sp, signal, next_method
        return UnwindResult(tuple(frames), reason, detail)
