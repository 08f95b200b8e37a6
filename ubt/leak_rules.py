"""The user-space half of `ubt leak`'s kernel stack walk.

leak.c walks an allocation's stack in the kernel with one compact rule per return address:
CFA = rsp + off or rbp + off, the return address at CFA - 8, the caller's rbp either unchanged
or saved at CFA + off, or "outermost frame". It learns those rules from here: a path it has no
rule for arrives as a snapshot (registers at the allocator's return, stack bytes), `walk`
unwinds it with the DWARF unwinder (`unwind/`) and reads back, for every frame it stepped
through, the CFI row it used, converted by `compact_rule` when it is exactly representable
(else marked so: the kernel keeps sending snapshots there rather than walk differently).
Rows come from the same tables the unwinder uses, so both walks give the same pcs, and
`stack_hash` (FNV-1a, as in leak.c) gives them the same stack id. Rules and stack ids belong to
the map generation of the snapshot (see leak.c): the same address may hold other code in the
next one.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from bpf_progs.leak_capture import MAX_FRAMES, PENDING, STACK_DEEP
from unwind.regs import RA, RBP, RSP
from unwind.table import RawRule, RuleKind, UnwindTable
from unwind.unwinder import Method, StopReason

from .pipeline import Pipeline
from .snapshot import Snapshot

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
# rule flags (leak.c)
R_RBP_CFA = 1
R_RBP_SAVED = 2
R_END = 4
R_UNREP = 8
_UNREP = (0, 0, R_UNREP)
#: Stops after which the kernel must not walk on from the last frame: it would not stop there.
_DEAD_ENDS = (StopReason.NO_UNWIND_INFO, StopReason.BAD_CFI, StopReason.SP_NOT_INCREASING)


class WalkedStack(NamedTuple):
    """A snapshot's stack: return addresses, innermost (the allocator's caller) first.

    :param rules: (return address, CFA offset, saved-rbp offset, flags) for the kernel.
    :param flags: `STACK_DEEP` when cut at MAX_FRAMES, as the kernel would cut it.
    """

    pcs: tuple[int, ...]
    flags: int
    stop: StopReason
    rules: tuple[tuple[int, int, int, int], ...]


def stack_hash(alloc: int, pcs: tuple[int, ...], flags: int, gen: int) -> int:
    """The stack id leak.c computes for these pcs in map generation `gen` (never 0, never
    PENDING)."""
    # the allocator and the generation are hashed in steps of their own: XORed together,
    # (alloc 0, gen 5) and (alloc 1, gen 4) would give one id to two stacks
    h = ((_FNV_OFFSET ^ alloc) * _FNV_PRIME) & _MASK
    h = ((h ^ gen) * _FNV_PRIME) & _MASK
    for pc in pcs:
        h = ((h ^ pc) * _FNV_PRIME) & _MASK
    h ^= flags
    return (h & ~PENDING) | 1


def compact_rule(raw: RawRule) -> tuple[int, int, int]:
    """(CFA offset, saved-rbp offset, flags) for one CFI row, `R_UNREP` when the kernel walk
    cannot follow it exactly: a CFA from another register or an expression, a return address
    not at CFA - 8, rbp restored any other way than from memory, rsp with a rule of its own,
    a signal frame. A row whose return address is undefined is the outermost frame."""
    cfa_reg, cfa_off, cfa_expr, rules, signal, _ = raw
    by_reg = {reg: (kind, value) for reg, kind, value in rules}
    ra = by_reg.get(RA)
    if ra is not None and ra[0] == RuleKind.UNDEFINED:
        return (0, 0, R_END)
    if signal or cfa_expr is not None or cfa_reg not in (RSP, RBP) or RSP in by_reg \
            or ra != (RuleKind.OFFSET, -8) or not -(1 << 31) <= cfa_off < 1 << 31:
        return _UNREP
    flags = R_RBP_CFA if cfa_reg == RBP else 0
    rbp = by_reg.get(RBP)
    if rbp is None or rbp[0] == RuleKind.SAME_VALUE:
        return (cfa_off, 0, flags)
    kind, value = rbp
    if kind != RuleKind.OFFSET or not isinstance(value, int) or not -32768 <= value < 32768:
        return _UNREP
    return (cfa_off, value, flags | R_RBP_SAVED)


def walk(pipeline: Pipeline, snap: Snapshot) -> WalkedStack:
    """Unwind a snapshot taken at an allocator's return and collect the kernel's rules.

    The registers are the caller's, its pc a return address: the walk starts at pc - 1 so
    the first row (and later the first symbol) is looked up as for any return address."""
    ra = snap.regs[RA]
    start = replace(snap, regs={**snap.regs, RA: ra - 1})
    unwinder = pipeline.unwinder(start)
    result = unwinder.unwind(start.regs, start.stack)
    frames = result.frames
    pcs = (ra, *(f.pc for f in frames[1:]))
    rules = []
    for i, frame in enumerate(frames):
        last = i + 1 == len(frames)
        if last and result.stop_reason is StopReason.END_OF_STACK:
            rule: tuple[int, int, int] | None = (0, 0, R_END)
        elif last and result.stop_reason in _DEAD_ENDS:
            rule = _UNREP
        elif last and result.stop_reason is not StopReason.PC_ZERO:
            rule = None  # cut short (stack copy, depth): nothing learnt about this frame
        elif not last and frames[i + 1].method is Method.FP:
            rule = _UNREP
        else:
            rule = _row(unwinder.lookup(frame.pc), frame.lookup_pc)
        if rule is not None:
            rules.append((pcs[i], *rule))
    flags = STACK_DEEP if len(pcs) > MAX_FRAMES else 0
    return WalkedStack(pcs[:MAX_FRAMES], flags, result.stop_reason, tuple(rules))


def _row(found: tuple[UnwindTable, int] | None, at: int) -> tuple[int, int, int]:
    """The compact rule of the row covering absolute address `at`, from the unwinder's
    (table, bias) for its module."""
    if found is None:
        return _UNREP
    table, bias = found
    raw = table.raw_for(at - bias)
    return _UNREP if raw is None else compact_rule(raw)
