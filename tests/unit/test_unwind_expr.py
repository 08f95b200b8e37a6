"""The DWARF expression evaluator, operation by operation, and the shapes CFI really uses."""
from __future__ import annotations

import struct

import pytest

from unwind.expr import ExprError, evaluate
from unwind.memory import MemoryFault, StackBytes

MEM = StackBytes(0x1000, struct.pack("<4Q", 0x1111, 0x2222, 0x3333, 0xFFFFFFFFFFFFFFFF))
REGS = {7: 0x1000, 16: 0x5008, 6: 0x1010, 40: 7}
M64 = (1 << 64) - 1


def ev(code: bytes, initial: int | None = None, cfa: int | None = None) -> int:
    return evaluate(code, REGS, MEM, initial, cfa)


@pytest.mark.parametrize("code, value", [
    (b"\x30", 0), (b"\x4f", 31),                                 # lit0, lit31
    (b"\x08\xff", 0xFF), (b"\x09\xff", M64),                     # const1u, const1s -1
    (b"\x0a\x34\x12", 0x1234), (b"\x0b\xfe\xff", M64 - 1),       # const2u, const2s
    (b"\x0c\x78\x56\x34\x12", 0x12345678), (b"\x0d\xff\xff\xff\xff", M64),
    (b"\x0e" + struct.pack("<Q", 1 << 63), 1 << 63),             # const8u
    (b"\x0f" + struct.pack("<q", -5), M64 - 4),                  # const8s
    (b"\x10\xe5\x8e\x26", 624485), (b"\x11\x7f", M64),           # constu, consts -1
    (b"\x03" + struct.pack("<Q", 0xDEAD), 0xDEAD),               # addr
    (b"\x31\x12\x22", 2),                                        # dup, plus
    (b"\x31\x32\x13", 1),                                        # drop
    (b"\x31\x32\x14", 1),                                        # over
    (b"\x31\x32\x33\x15\x02", 1),                                # pick 2
    (b"\x31\x32\x16\x1c", 1),                                    # swap, minus: 2 - 1
    (b"\x31\x32\x33\x17", 2),                                    # rot: 1 2 3 -> 3 1 2
    (b"\x11\x7b\x19", 5),                                        # abs -5
    (b"\x3c\x3a\x1a", 8), (b"\x3c\x3a\x21", 14), (b"\x3c\x3a\x27", 6),  # and or xor
    (b"\x11\x79\x32\x1b", M64 - 2),                              # div -7 / 2 = -3
    (b"\x37\x33\x1d", 1), (b"\x37\x33\x1e", 21),                 # mod, mul
    (b"\x35\x1f", M64 - 4), (b"\x30\x20", M64),                  # neg, not
    (b"\x35\x23\x0a", 15),                                       # plus_uconst
    (b"\x31\x34\x24", 16), (b"\x40\x32\x25", 4),                 # shl, shr
    (b"\x11\x70\x32\x26", M64 - 3),                              # shra -16 >> 2
    (b"\x33\x33\x29", 1), (b"\x33\x34\x2a", 0), (b"\x34\x33\x2b", 1),   # eq ge gt
    (b"\x11\x7f\x30\x2c", 1), (b"\x11\x7f\x30\x2d", 1), (b"\x33\x34\x2e", 1),  # le lt ne
    (b"\x31\x31\x28\x01\x00\x30", 1),                            # bra taken over lit0
    (b"\x30\x28\x01\x00\x31", 1),                                # bra not taken
    (b"\x2f\x01\x00\x30\x35", 5),                                # skip over lit0
    (b"\x77\x08", 0x1008), (b"\x76\x70", 0x1000),                # breg7 8, breg6 -16
    (b"\x57", 0x1000), (b"\x90\x28", 7), (b"\x92\x28\x01", 8),   # reg7, regx 40, bregx 40 1
    (b"\x77\x08\x06", 0x2222),                                   # deref
    (b"\x77\x00\x94\x01", 0x11),                                 # deref_size 1
    (b"\x9c", 0x9999), (b"\x32\x9f", 2),                         # call_frame_cfa, stack_value
])
def test_operations(code: bytes, value: int) -> None:
    assert ev(code, cfa=0x9999) == value


def test_initial_value_is_pushed() -> None:
    assert ev(b"\x23\x08", initial=0x1000) == 0x1008  # plus_uconst on the pushed CFA


def test_plt_cfa_expression() -> None:
    """The CFA expression of a PLT: rsp + 8 + ((rip & 15) >= 11 ? 8 : 0)."""
    plt = b"\x77\x08\x80\x00\x3f\x1a\x3b\x2a\x33\x24\x22"
    assert evaluate(plt, {7: 0x1000, 16: 0x5006}, MEM) == 0x1008
    assert evaluate(plt, {7: 0x1000, 16: 0x500B}, MEM) == 0x1010


def test_restore_rt_register_expression() -> None:
    """__restore_rt finds a saved register at rsp + offset inside the ucontext."""
    assert evaluate(b"\x77\x10", {7: 0x1000}, MEM, initial=0x1234) == 0x1010


@pytest.mark.parametrize("code", [
    b"", b"\x13", b"\x22", b"\x31\x30\x1b", b"\x31\x30\x1d", b"\x08", b"\x10\x80",
    b"\x77", b"\x5a", b"\x93\x08", b"\xe0", b"\x9c", b"\x31\x15\x05",
    b"\x94\x09", b"\x2f\x00\x80", b"\x2f\xfd\xff",
])
def test_malformed_or_unsupported_raise_expr_error(code: bytes) -> None:
    with pytest.raises(ExprError):
        ev(code)


def test_infinite_loop_is_bounded() -> None:
    with pytest.raises(ExprError):
        ev(b"\x2f\xfd\xff\x96")  # skip -3: back onto itself forever


def test_memory_fault_propagates() -> None:
    with pytest.raises(MemoryFault):
        ev(b"\x08\x10\x06")  # deref 0x10, not captured
