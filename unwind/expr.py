"""DWARF expression evaluator for the expressions that CFI rules carry.

CFI uses expressions where a plain "register + offset" cannot describe a frame:
``DW_CFA_def_cfa_expression`` (PLT stubs compute the CFA from rsp and rip),
``DW_CFA_expression`` (glibc's ``__restore_rt`` finds every register of the interrupted code in
the ucontext on the stack) and ``DW_CFA_val_expression``. The table stores the expression bytes
and the unwinder evaluates them here, against the frame's registers and the memory reader.

Only the operations meaningful for unwinding are implemented (stack, arithmetic, logic, control
flow, registers, memory); anything else (pieces, TLS, frame base, typed ops) raises `ExprError`.
"""
from __future__ import annotations

from collections.abc import Mapping

from .leb128 import read_sleb, read_uleb
from .memory import MemoryReader

_MASK = (1 << 64) - 1
_SIGN = 1 << 63
#: Bound on executed operations, so a branch loop in corrupt CFI cannot hang the unwinder.
MAX_STEPS = 10_000


class ExprError(ValueError):
    """The expression is malformed, unsupported, or needs a register the frame does not have."""


def _signed(v: int) -> int:
    return v - (1 << 64) if v & _SIGN else v


class _Reader:
    """Cursor over the expression bytes; running off the end is an `ExprError`."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fixed(self, size: int, signed: bool) -> int:
        end = self.pos + size
        if end > len(self.data):
            raise ExprError("expression truncated")
        v = int.from_bytes(self.data[self.pos:end], "little", signed=signed)
        self.pos = end
        return v

    def uleb(self) -> int:
        try:
            value, self.pos = read_uleb(self.data, self.pos)
        except IndexError:
            raise ExprError("expression truncated") from None
        return value

    def sleb(self) -> int:
        try:
            value, self.pos = read_sleb(self.data, self.pos)
        except IndexError:
            raise ExprError("expression truncated") from None
        return value


def _binary(op: int, a: int, b: int) -> int:
    """Apply a two-operand operation: `a` is the second entry, `b` the top of the stack."""
    if op == 0x1A:
        return a & b
    if op == 0x1B:
        if b == 0:
            raise ExprError("DW_OP_div by zero")
        sa, sb = _signed(a), _signed(b)
        q = abs(sa) // abs(sb)
        return (-q if (sa < 0) != (sb < 0) else q) & _MASK
    if op == 0x1C:
        return (a - b) & _MASK
    if op == 0x1D:
        if b == 0:
            raise ExprError("DW_OP_mod by zero")
        return a % b
    if op == 0x1E:
        return (a * b) & _MASK
    if op == 0x21:
        return a | b
    if op == 0x22:
        return (a + b) & _MASK
    if op == 0x24:
        return (a << b) & _MASK if b < 64 else 0
    if op == 0x25:
        return a >> b if b < 64 else 0
    if op == 0x26:
        return (_signed(a) >> min(b, 63)) & _MASK
    if op == 0x27:
        return a ^ b
    sa, sb = _signed(a), _signed(b)
    if op == 0x29:
        return int(sa == sb)
    if op == 0x2A:
        return int(sa >= sb)
    if op == 0x2B:
        return int(sa > sb)
    if op == 0x2C:
        return int(sa <= sb)
    if op == 0x2D:
        return int(sa < sb)
    return int(sa != sb)  # 0x2e DW_OP_ne


_BINARY_OPS = frozenset((0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27,
                         0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x2E))
_CONSTS = {0x08: (1, False), 0x09: (1, True), 0x0A: (2, False), 0x0B: (2, True),
           0x0C: (4, False), 0x0D: (4, True), 0x0E: (8, False), 0x0F: (8, True)}


def _register(regs: Mapping[int, int], reg: int) -> int:
    try:
        return regs[reg]
    except KeyError:
        raise ExprError(f"expression needs register {reg}, which is not known") from None


def evaluate(expr: bytes, regs: Mapping[int, int], memory: MemoryReader,
             initial: int | None = None, cfa: int | None = None) -> int:
    """Run `expr` and return the value on top of the stack (64-bit unsigned).

    :param regs: the frame's registers, DWARF number → value.
    :param memory: where ``DW_OP_deref`` reads; its `MemoryFault` propagates unchanged.
    :param initial: pushed before the first operation (``DW_CFA_expression`` and
        ``DW_CFA_val_expression`` push the CFA).
    :param cfa: the value of ``DW_OP_call_frame_cfa``, when known.
    :raises ExprError: malformed or unsupported expression, empty result, unknown register.
    """
    stack: list[int] = [] if initial is None else [initial & _MASK]
    r = _Reader(expr)
    steps = 0
    try:
        while r.pos < len(expr):
            steps += 1
            if steps > MAX_STEPS:
                raise ExprError("expression does not terminate")
            op = expr[r.pos]
            r.pos += 1
            if 0x30 <= op <= 0x4F:  # DW_OP_lit0..31
                stack.append(op - 0x30)
            elif 0x70 <= op <= 0x8F:  # DW_OP_breg0..31
                stack.append((_register(regs, op - 0x70) + r.sleb()) & _MASK)
            elif 0x50 <= op <= 0x6F:  # DW_OP_reg0..31: the register's value itself
                stack.append(_register(regs, op - 0x50))
            elif op in _BINARY_OPS:
                b = stack.pop()
                a = stack.pop()
                stack.append(_binary(op, a, b))
            elif op in _CONSTS:
                size, signed = _CONSTS[op]
                stack.append(r.fixed(size, signed) & _MASK)
            elif op == 0x03:  # DW_OP_addr
                stack.append(r.fixed(8, False))
            elif op == 0x06:  # DW_OP_deref
                stack.append(int.from_bytes(memory.read(stack.pop(), 8), "little"))
            elif op == 0x94:  # DW_OP_deref_size
                size = r.fixed(1, False)
                if not 1 <= size <= 8:
                    raise ExprError(f"DW_OP_deref_size of {size} bytes")
                stack.append(int.from_bytes(memory.read(stack.pop(), size), "little"))
            elif op == 0x10:  # DW_OP_constu
                stack.append(r.uleb() & _MASK)
            elif op == 0x11:  # DW_OP_consts
                stack.append(r.sleb() & _MASK)
            elif op == 0x12:  # DW_OP_dup
                stack.append(stack[-1])
            elif op == 0x13:  # DW_OP_drop
                stack.pop()
            elif op == 0x14:  # DW_OP_over
                stack.append(stack[-2])
            elif op == 0x15:  # DW_OP_pick
                idx = r.fixed(1, False)
                if idx >= len(stack):
                    raise ExprError("DW_OP_pick beyond the stack")
                stack.append(stack[-1 - idx])
            elif op == 0x16:  # DW_OP_swap
                stack[-1], stack[-2] = stack[-2], stack[-1]
            elif op == 0x17:  # DW_OP_rot
                stack[-1], stack[-2], stack[-3] = stack[-2], stack[-3], stack[-1]
            elif op == 0x19:  # DW_OP_abs
                stack.append(abs(_signed(stack.pop())) & _MASK)
            elif op == 0x1F:  # DW_OP_neg
                stack.append(-stack.pop() & _MASK)
            elif op == 0x20:  # DW_OP_not
                stack.append(~stack.pop() & _MASK)
            elif op == 0x23:  # DW_OP_plus_uconst
                stack.append((stack.pop() + r.uleb()) & _MASK)
            elif op == 0x28:  # DW_OP_bra
                delta = r.fixed(2, True)
                if stack.pop() != 0:
                    r.pos += delta
            elif op == 0x2F:  # DW_OP_skip
                delta = r.fixed(2, True)
                r.pos += delta
            elif op == 0x90:  # DW_OP_regx
                stack.append(_register(regs, r.uleb()))
            elif op == 0x92:  # DW_OP_bregx
                reg = r.uleb()
                stack.append((_register(regs, reg) + r.sleb()) & _MASK)
            elif op == 0x96:  # DW_OP_nop
                pass
            elif op == 0x9C:  # DW_OP_call_frame_cfa
                if cfa is None:
                    raise ExprError("DW_OP_call_frame_cfa without a CFA")
                stack.append(cfa)
            elif op == 0x9F:  # DW_OP_stack_value: the value is the top of the stack
                break
            else:
                raise ExprError(f"unsupported DWARF operation {op:#x}")
            if r.pos < 0 or r.pos > len(expr):
                raise ExprError("branch outside the expression")
    except IndexError:
        raise ExprError("expression stack underflow") from None
    if not stack:
        raise ExprError("expression left an empty stack")
    return stack[-1]
