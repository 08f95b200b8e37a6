"""The unwinder's rules and stop reasons on synthetic tables and stacks, where every outcome
is known exactly (the real-process checks against gdb are in test_unwind_live)."""
from __future__ import annotations

import ctypes
import os
import struct
from array import array

import pytest

from unwind.memory import LayeredMemory, MemoryFault, ProcMemory, StackBytes
from unwind.regs import NAMES, RA, RBP, RBX, RSP, from_user_regs
from unwind.table import RawRule, RuleKind, UnwindTable, make_rule
from unwind.unwinder import Method, RawFrame, StopReason, Unwinder

BIAS = 0x10000
SP = 0x7000
O, VO, RG, EX, VX, UN = (RuleKind.OFFSET, RuleKind.VAL_OFFSET, RuleKind.REGISTER,
                         RuleKind.EXPRESSION, RuleKind.VAL_EXPRESSION, RuleKind.UNDEFINED)


def table(*rows: tuple[int, int, RawRule]) -> UnwindTable:
    rules = tuple(r for _, _, r in rows)
    return UnwindTable(array("Q", [s for s, _, _ in rows]), array("Q", [e for _, e, _ in rows]),
                       array("I", range(len(rows))), rules)


def words(*values: int) -> StackBytes:
    return StackBytes(SP, struct.pack(f"<{len(values)}Q", *values))


def unwind(t: UnwindTable, regs: dict[int, int], mem: StackBytes | LayeredMemory,
           max_frames: int = 256) -> tuple[list[RawFrame], StopReason]:
    res = Unwinder(lambda pc: (t, BIAS) if BIAS <= pc < BIAS + 0x10000 else None,
                   max_frames).unwind(regs, mem)
    return list(res.frames), res.stop_reason


# Rows (elf addresses): f1 pushed rbx (CFA = rsp+16); f2 plain; outer: CFA from rbx, RA undefined.
F1 = (0x100, 0x200, make_rule(RSP, 16, None, ((RBX, O, -16), (RA, O, -8)), False))
F2 = (0x200, 0x300, make_rule(RSP, 8, None, ((RA, O, -8),), False))
OUTER = (0x300, 0x400, make_rule(RBX, 0, None, ((RA, UN, 0),), False))


def chain_stack() -> StackBytes:
    # f1 frame: [saved rbx, ra into f2]; f2 frame: [ra into outer]
    return words(0x7100, BIAS + 0x250, BIAS + 0x350)


@pytest.mark.parametrize("layered", [False, True])
def test_cfi_chain_to_undefined_return_address(layered: bool) -> None:
    mem = chain_stack()
    frames, stop = unwind(table(F1, F2, OUTER), {RA: BIAS + 0x150, RSP: SP, RBX: 1},
                          LayeredMemory(mem) if layered else mem)
    assert stop is StopReason.END_OF_STACK
    assert frames == [
        RawFrame(BIAS + 0x150, SP, SP + 16, True, Method.INITIAL),
        RawFrame(BIAS + 0x250, SP + 16, SP + 24, False, Method.CFI),
        RawFrame(BIAS + 0x350, SP + 24, 0x7100, False, Method.CFI),  # CFA = restored rbx
    ]
    assert frames[1].lookup_pc == BIAS + 0x24F and frames[0].lookup_pc == BIAS + 0x150


def test_return_address_lookup_uses_pc_minus_one() -> None:
    # The caller's pc is the first byte after f1: pc - 1 is inside f1's row, pc is not covered.
    t = table(F1, (0x200, 0x300, make_rule(RSP, 8, None, ((RA, UN, 0),), False)))
    mem = words(0, BIAS + 0x200)
    frames, stop = unwind(t, {RA: BIAS + 0x150, RSP: SP, RBX: 0}, mem)
    # 0x200 - 1 = 0x1ff is f1 again: CFA = rsp + 16, RA at cfa - 8 beyond the stack.
    assert stop is StopReason.MEMORY_FAULT and len(frames) == 2
    assert frames[1].cfa is None


def test_signal_frame_makes_the_caller_an_activation() -> None:
    # A trampoline whose CFA and registers come from a context block on the stack.
    ctx = SP + 0x28  # the trampoline frame's sp is SP + 8, after the handler returned
    tramp = make_rule(-1, 0, b"\x77\x20",  # CFA = rsp + 0x20 (the context)
                      ((RBX, EX, b"\x77\x20"), (RSP, EX, b"\x77\x28"), (RA, EX, b"\x77\x30")),
                      True)
    t = table((0x0FF, 0x110, tramp), F2,
              (0x500, 0x600, make_rule(RSP, 8, None, ((RA, UN, 0),), False)))
    # stack: handler frame: [ra = trampoline+0]; context at +0x28: rbx, rsp, rip
    interrupted_sp = SP + 0x100
    data = bytearray(0x120)
    struct.pack_into("<Q", data, 0, BIAS + 0x100)
    struct.pack_into("<3Q", data, 0x28, 0x77, interrupted_sp, BIAS + 0x200)
    struct.pack_into("<Q", data, 0x100, BIAS + 0x510)  # the interrupted frame's return address
    mem = StackBytes(SP, bytes(data))
    frames, stop = unwind(t, {RA: BIAS + 0x200 + 0x50, RSP: SP, RBX: 5}, mem)
    assert stop is StopReason.END_OF_STACK, frames
    assert [f.pc - BIAS for f in frames] == [0x250, 0x100, 0x200, 0x510]
    # The trampoline's pc is a return address (lookup pc - 1 = 0xff, covered on purpose);
    # the interrupted frame at 0x200 is an activation: looked up at 0x200, not 0x1ff.
    assert [f.is_activation for f in frames] == [True, False, True, False]
    assert frames[1].cfa == ctx and frames[2].sp == interrupted_sp


def test_pc_zero_ends_the_trace() -> None:
    frames, stop = unwind(table(F2), {RA: BIAS + 0x210, RSP: SP}, words(0))
    assert stop is StopReason.PC_ZERO and len(frames) == 1


def test_sp_not_increasing() -> None:
    back = (0x200, 0x300, make_rule(RSP, -8, None, ((RA, VO, 0),), False))  # CFA below sp
    frames, stop = unwind(table(back), {RA: BIAS + 0x210, RSP: SP}, words(0))
    assert stop is StopReason.SP_NOT_INCREASING and len(frames) == 1


def test_memory_fault_on_truncated_stack() -> None:
    frames, stop = unwind(table(F1, F2, OUTER), {RA: BIAS + 0x150, RSP: SP, RBX: 1},
                          words(0x7100, BIAS + 0x250))
    assert stop is StopReason.MEMORY_FAULT
    assert [f.pc - BIAS for f in frames] == [0x150, 0x250]


def test_bad_cfi_missing_register_and_bad_expression() -> None:
    frames, stop = unwind(table(OUTER), {RA: BIAS + 0x310, RSP: SP}, words(0))  # no rbx
    assert stop is StopReason.BAD_CFI and len(frames) == 1
    bad = (0x200, 0x300, make_rule(-1, 0, b"\xe0", ((RA, O, -8),), False))
    frames, stop = unwind(table(bad), {RA: BIAS + 0x210, RSP: SP}, words(0))
    assert stop is StopReason.BAD_CFI
    norule = (0x200, 0x300, make_rule(RSP, 8, None, ((RBX, O, -8),), False))
    assert unwind(table(norule), {RA: BIAS + 0x210, RSP: SP}, words(0))[1] is StopReason.BAD_CFI
    assert Unwinder(lambda pc: None).unwind({RSP: SP}, words(0)).stop_reason \
        is StopReason.BAD_CFI


def test_register_val_offset_and_undefined_rules() -> None:
    rule = make_rule(RSP, 8, None, ((RBX, RG, RBP), (RBP, VO, 0x40), (12, UN, 0), (RA, O, -8)),
                     False)
    # The caller's CFA uses rbx (copied from rbp) then one using r12 (undefined) fails.
    t = table((0x200, 0x300, rule), (0x300, 0x400, make_rule(RBX, 8, None, ((RA, O, -8),),
                                                             False)),
              (0x400, 0x500, make_rule(12, 0, None, ((RA, UN, 0),), False)))
    mem = words(BIAS + 0x310, BIAS + 0x410)
    frames, stop = unwind(t, {RA: BIAS + 0x210, RSP: SP, RBP: SP + 8, 12: 1}, mem)
    assert [f.pc - BIAS for f in frames] == [0x210, 0x310, 0x410]
    assert frames[1].cfa == SP + 16 and frames[2].sp == SP + 16
    assert stop is StopReason.BAD_CFI


def test_frame_pointer_fallback_without_cfi() -> None:
    # No rows at all: follow rbp. Frame 1 at rbp0 = SP+16: [saved rbp, ra]
    data = words(0, 0, SP + 0x30, BIAS + 0x900, 0, 0, 0, BIAS + 0x950)
    t = table()
    frames, stop = unwind(t, {RA: BIAS + 0x800, RSP: SP, RBP: SP + 16}, data)
    assert [f.pc - BIAS for f in frames] == [0x800, 0x900, 0x950]
    assert [f.method for f in frames] == [Method.INITIAL, Method.FP, Method.FP]
    assert frames[0].cfa == SP + 32
    # The last frame's rbp (0) cannot be followed.
    assert stop is StopReason.NO_UNWIND_INFO


def test_no_unwind_info_when_rbp_is_not_a_frame_pointer() -> None:
    frames, stop = unwind(table(), {RA: BIAS + 0x800, RSP: SP, RBP: 3}, words(0, 0))
    assert stop is StopReason.NO_UNWIND_INFO and len(frames) == 1 and frames[0].cfa is None


def test_max_depth() -> None:
    loop = (0x200, 0x300, make_rule(RSP, 8, None, ((RA, O, -8),), False))
    mem = words(*[BIAS + 0x210] * 64)
    frames, stop = unwind(table(loop), {RA: BIAS + 0x210, RSP: SP}, mem, max_frames=10)
    assert stop is StopReason.MAX_DEPTH and len(frames) == 10


# ---- memory readers and registers ------------------------------------------------------------

def test_stack_bytes_bounds() -> None:
    mem = words(1, 2)
    assert mem.read_u64(SP + 8) == 2 and mem.read(SP + 4, 4) == b"\0\0\0\0" and mem.end == SP + 16
    for addr, size in ((SP - 1, 1), (SP + 9, 8), (SP + 16, 1)):
        with pytest.raises(MemoryFault):
            mem.read(addr, size)
    with pytest.raises(MemoryFault):
        mem.read_u64(SP + 9)


def test_proc_memory_and_layers() -> None:
    buf = ctypes.create_string_buffer(b"live bytes!", 16)
    with ProcMemory(os.getpid()) as live:
        assert live.read(ctypes.addressof(buf), 10) == b"live bytes"
        with pytest.raises(MemoryFault):
            live.read(0, 8)
        layered = LayeredMemory(words(7), live)
        assert layered.read(SP, 8) == struct.pack("<Q", 7)
        assert layered.read(ctypes.addressof(buf), 4) == b"live"
    with pytest.raises(MemoryFault):
        LayeredMemory(words(7)).read(0, 1)
    with pytest.raises(MemoryFault):
        ProcMemory(-5).read(0x1000, 8)


def test_from_user_regs() -> None:
    user = {"rax": 1, "rbx": 2, "rip": 3, "rsp": 4, "eflags": 5, "fs_base": 6, "gs_base": 7,
            "orig_rax": 9, "cs": 10, "r15": 15}
    assert from_user_regs(user) == {0: 1, 3: 2, 16: 3, 7: 4, 49: 5, 58: 6, 59: 7, 51: 10, 15: 15}
    assert NAMES[16] == "rip" and NAMES[17] == "xmm0" and NAMES[55] == "gs"


def test_caller_registers_come_from_the_cfi_row() -> None:
    """Frame 1 with its registers (for entry values): rbx restored, rsp = frame 0's CFA, its
    own CFA from its row."""
    t = table(F1, (0x200, 0x300, make_rule(RSP, 32, None, ((RA, O, -8),), False)))
    base = BIAS
    unwinder = Unwinder(lambda pc: (t, base) if base <= pc < base + 0x1000 else None)
    mem = StackBytes(SP, struct.pack("<2Q", 77, base + 0x250))
    got = unwinder.caller({RA: base + 0x150, RSP: SP, RBX: 1, 0: 5}, mem)
    assert got is not None
    assert (got.pc, got.regs[RBX], got.regs[RSP], got.cfa) == (base + 0x250, 77, SP + 16,
                                                               SP + 48)
    assert unwinder.caller({RA: base + 0x900, RSP: SP}, mem) is None     # no CFI: no guess
    assert unwinder.caller({RA: base + 0x150, RSP: SP}, StackBytes(SP, b"")) is None
