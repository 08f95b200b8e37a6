"""From a DWARF location at one pc to the reads that fetch the value at a probe hit.

Values must be read *at the moment of the hit*: a heap string or a struct behind a pointer may
change a microsecond later. So, as ``perf probe`` does, a location expression is translated
ahead of time into a fixed formula the BPF program evaluates at the hit (`Fetch`): a base (a
register, or an ELF address of the probed module plus its load bias), an offset, then a chain
of dereferences (``*(u64 *)v + d`` per step), and finally a copy of N bytes there, or of a
string there, or of the formula's value itself. Translation is symbolic evaluation of the
expression (`locate`):

- ``DW_OP_regN``: the register's value; ``DW_OP_bregN off``, ``DW_OP_fbreg off`` (through the
  function's frame base, ``DW_OP_call_frame_cfa`` taken from the CFI row at that pc, which is
  register + offset, known before the hit), ``DW_OP_addr``, ``plus_uconst``, constants: a
  memory address, or with ``DW_OP_stack_value`` the value itself;
- ``DW_OP_implicit_value`` and constant ``stack_value`` expressions: bytes known now;
- ``DW_OP_piece``: each piece on its own (a struct split over registers);
- ``DW_OP_entry_value(DW_OP_regN)``: the register itself when the probe is at the function's
  entry (where the entry value is the current value); elsewhere an `EntryValue`: the value the
  caller passed, from the call site frame 1 returns to (`symbolizer.dwarf_call_sites`),
  evaluated in user space; unavailable when no call site of the function passes it;
- any other ``stack_value`` expression over registers (and stack memory) is kept as
  `Computed`: evaluated in user space from the hit's registers and captured stack;
- anything else (implicit pointers, typed operations, TLS) is unavailable: printed ``?``,
  never guessed.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace

from unwind.leb128 import read_sleb, read_uleb

#: `Address.base` values that are not registers.
MODULE = -1         # an ELF address of the probed module: the load bias is added at the hit
ABSOLUTE = -2       # a plain number

_OP_ADDR, _OP_DEREF, _OP_CONST1U, _OP_CONST8S = 0x03, 0x06, 0x08, 0x0F
_OP_CONSTU, _OP_CONSTS, _OP_MINUS, _OP_PLUS, _OP_PLUS_UCONST = 0x10, 0x11, 0x1C, 0x22, 0x23
_OP_LIT0, _OP_LIT31, _OP_REG0, _OP_REG31, _OP_BREG0, _OP_BREG31 = 0x30, 0x4F, 0x50, 0x6F, 0x70, 0x8F
_OP_REGX, _OP_FBREG, _OP_BREGX, _OP_PIECE, _OP_NOP = 0x90, 0x91, 0x92, 0x93, 0x96
_OP_CALL_FRAME_CFA, _OP_IMPLICIT_VALUE, _OP_STACK_VALUE = 0x9C, 0x9E, 0x9F
_OP_ENTRY_VALUE, _OP_GNU_ENTRY_VALUE = 0xA3, 0xF3
_CONST_SIZES = {0x08: (1, False), 0x09: (1, True), 0x0A: (2, False), 0x0B: (2, True),
                0x0C: (4, False), 0x0D: (4, True), 0x0E: (8, False), 0x0F: (8, True)}
#: Operations `unwind.expr` evaluates from registers and memory alone (for `Computed`).
_USER_SPACE_OPS = frozenset([*range(0x06, 0x50), *range(0x70, 0x90), 0x92, 0x94, 0x96, 0x9C,
                             0x9F])
_MASK = (1 << 64) - 1
#: DWARF registers (x86-64) a uprobe sees: the general-purpose ones and the return address.
#: A value in another (xmm, x87, ...) is unavailable.
GENERAL_REGISTERS = range(17)


class Unavailable(Exception):
    """The value cannot be known at this pc (no location, or one ubt cannot read exactly)."""


@dataclass(frozen=True, slots=True)
class Address:
    """A value formed at the hit: `base` (a DWARF register number, `MODULE` or `ABSOLUTE`)
    plus `offset`, then for each `d` of `derefs`: the 8 bytes at that address, plus `d`."""

    base: int
    offset: int
    derefs: tuple[int, ...] = ()

    def plus(self, n: int) -> Address:
        """The formula `n` bytes further."""
        if self.derefs:
            return replace(self, derefs=self.derefs[:-1] + ((self.derefs[-1] + n) & _MASK,))
        return replace(self, offset=(self.offset + n) & _MASK)

    def load(self) -> Address:
        """The 8-byte word stored at this address (a pointer followed)."""
        return replace(self, derefs=self.derefs + (0,))


class FetchMode(enum.Enum):
    """What a `Fetch` copies into the record."""

    MEMORY = "memory"       # `size` bytes at the address
    VALUE = "value"         # the formula's value itself (a register, reg + offset)
    STRING = "string"       # a NUL-terminated string at the address, at most `size` bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """One read the BPF program makes at the hit."""

    address: Address
    size: int
    mode: FetchMode


@dataclass(frozen=True, slots=True)
class Computed:
    """A value computed in user space from the hit's registers and captured stack bytes.

    :param cfa: (register, offset) of the CFA at the pc, for ``DW_OP_call_frame_cfa``.
    """

    expr: bytes
    cfa: tuple[int, int] | None
    size: int


@dataclass(frozen=True, slots=True)
class EntryValue:
    """Register `reg` at the function's entry, recovered in user space from the caller: for
    each direct call site (by return ELF address), the call value of that register
    (`symbolizer.dwarf_call_sites.call_value`); a hit whose frame 1 returns elsewhere: `?`."""

    reg: int
    sites: tuple[tuple[int, bytes], ...]
    size: int


#: Where one piece of a value comes from: a read at the hit, bytes known now, a user-space
#: computation, or nothing (unavailable).
Source = Fetch | bytes | Computed | EntryValue | None


@dataclass(frozen=True, slots=True)
class PcContext:
    """What a location needs to know about the pc it is evaluated at.

    :param frame_base: the subprogram's ``DW_AT_frame_base`` expression there (None: none).
    :param cfa: the CFA as (register, offset) from the CFI row there; None when CFI gives an
        expression or nothing.
    :param at_entry: the pc is the function's entry (entry values are the registers).
    :param call_sites: elsewhere, the function's direct call sites (return ELF address →
        register → call value) for entry values; None: entry values are unavailable.
    """

    frame_base: bytes | None
    cfa: tuple[int, int] | None
    at_entry: bool
    call_sites: Mapping[int, Mapping[int, bytes]] | None = None


@dataclass(frozen=True, slots=True)
class Located:
    """Where the bytes of one object are at the hit.

    :param pieces: (size, source) pairs whose bytes, concatenated, hold the object.
    :param memory: the object's address when it lies in memory whole (so members are
        addressed and pointers inside it followed by the BPF program).
    :param window: (start, size) of the object within the concatenated pieces.
    """

    pieces: tuple[tuple[int, Source], ...]
    memory: Address | None
    window: tuple[int, int]


def locate(expr: bytes, size: int, ctx: PcContext) -> Located:
    """The object `expr` describes, `size` bytes long.

    :raises Unavailable: an empty location, or operations that cannot be translated.
    """
    if not expr:
        raise Unavailable("no location here")
    try:
        return _locate(expr, size, ctx)
    except IndexError:
        raise Unavailable("a truncated location expression") from None


def _locate(expr: bytes, size: int, ctx: PcContext) -> Located:
    parts = _split_pieces(expr)
    if parts is None:
        return Located(((size, _piece(expr, size, ctx)),), _memory_address(expr, ctx),
                       (0, size))
    pieces = tuple((n, _piece(e, n, ctx, optional=True)) for e, n in parts)
    return Located(pieces, None, (0, min(size, sum(n for _, n in parts))))


def member(loc: Located, offset: int, size: int) -> Located:
    """The part of `loc` at `offset` (a struct member, an array element)."""
    if loc.memory is not None:
        return Located(((size, Fetch(loc.memory.plus(offset), size, FetchMode.MEMORY)),),
                       loc.memory.plus(offset), (0, size))
    start, whole = loc.window
    if offset + size > whole:
        raise Unavailable("outside the object")
    return Located(loc.pieces, None, (start + offset, size))


def pointer_value(loc: Located) -> Address:
    """The pointer held in `loc` as a formula the BPF program can follow.

    :raises Unavailable: the pointer is not a register, memory word or constant.
    """
    if loc.memory is not None:
        return loc.memory.load()
    if len(loc.pieces) == 1 and loc.window[0] == 0:
        src = loc.pieces[0][1]
        if isinstance(src, Fetch) and src.mode is FetchMode.VALUE:
            return src.address
        if isinstance(src, Fetch) and src.mode is FetchMode.MEMORY:
            return src.address.load()
        if isinstance(src, bytes):
            return Address(ABSOLUTE, int.from_bytes(src[:8], "little"))
    raise Unavailable("a pointer the probe cannot follow")


def _split_pieces(expr: bytes) -> list[tuple[bytes, int]] | None:
    """(expression, size) per ``DW_OP_piece``; None when `expr` has no pieces."""
    out: list[tuple[bytes, int]] = []
    start = pos = 0
    while pos < len(expr):
        op = expr[pos]
        end = _skip(expr, pos)
        if op == _OP_PIECE:
            size, after = read_uleb(expr, pos + 1)
            out.append((expr[start:pos], size))
            start = pos = after
            continue
        pos = end
    if not out:
        return None
    if start < len(expr):
        raise Unavailable("a location with trailing operations after its pieces")
    return out


def _piece(expr: bytes, size: int, ctx: PcContext, optional: bool = False) -> Source:
    """The source of one piece (or of a whole value without pieces)."""
    try:
        return _translate(expr, size, ctx)
    except Unavailable:
        if optional:
            return None
        raise


def _memory_address(expr: bytes, ctx: PcContext) -> Address | None:
    """The address of an object `expr` places in memory, None for a value location."""
    src = _translate(expr, 8, ctx)
    return src.address if isinstance(src, Fetch) and src.mode is FetchMode.MEMORY else None


def _translate(expr: bytes, size: int, ctx: PcContext) -> Source:
    src = _translate_any(expr, size, ctx)
    if isinstance(src, Fetch):
        if src.address.base >= 0 and src.address.base not in GENERAL_REGISTERS:
            raise Unavailable(f"a value in DWARF register {src.address.base} (not a "
                              "general-purpose register)")
        if src.mode is FetchMode.VALUE and src.size > 8:
            raise Unavailable("a register value larger than 8 bytes")
    return src


def _translate_any(expr: bytes, size: int, ctx: PcContext) -> Source:
    if not expr:
        raise Unavailable("optimized out")
    op = expr[0]
    if _OP_REG0 <= op <= _OP_REG31 and len(expr) == 1:
        return Fetch(Address(op - _OP_REG0, 0), size, FetchMode.VALUE)
    if op == _OP_REGX and _skip(expr, 0) == len(expr):
        return Fetch(Address(read_uleb(expr, 1)[0], 0), size, FetchMode.VALUE)
    if op == _OP_IMPLICIT_VALUE:
        if _skip(expr, 0) != len(expr):
            raise Unavailable("a location ubt cannot translate")
        length, pos = read_uleb(expr, 1)
        return expr[pos:pos + length]
    if op in (_OP_ENTRY_VALUE, _OP_GNU_ENTRY_VALUE):
        return _entry_value(expr, size, ctx)
    linear = _linear(expr, ctx)
    if linear is not None:
        address, is_value = linear
        if not is_value:
            return Fetch(address, size, FetchMode.MEMORY)
        if address.base == ABSOLUTE:
            return (address.offset & _MASK).to_bytes(8, "little")[:size].ljust(size, b"\0")
        return Fetch(address, size, FetchMode.VALUE)
    if expr[-1] == _OP_STACK_VALUE and _user_space_ok(expr):
        return Computed(expr, ctx.cfa, size)
    raise Unavailable("a location ubt cannot translate")


def _entry_value(expr: bytes, size: int, ctx: PcContext) -> Source:
    """``DW_OP_entry_value(DW_OP_regN) DW_OP_stack_value``: the register at the entry, else
    the caller's call value of it (`EntryValue`)."""
    length, pos = read_uleb(expr, 1)
    inner, rest = expr[pos:pos + length], expr[pos + length:]
    if rest != bytes([_OP_STACK_VALUE]) or len(inner) != 1 \
            or not _OP_REG0 <= inner[0] <= _OP_REG31 or size > 8:
        raise Unavailable("an entry value ubt cannot translate")
    reg = inner[0] - _OP_REG0
    if ctx.at_entry:
        return Fetch(Address(reg, 0), size, FetchMode.VALUE)
    sites = tuple((pc, params[reg]) for pc, params in sorted((ctx.call_sites or {}).items())
                  if reg in params)
    if not sites:
        raise Unavailable("an entry value (the caller's register at the call) no call site "
                          "gives")
    return EntryValue(reg, sites, size)


def _linear(expr: bytes, ctx: PcContext) -> tuple[Address, bool] | None:
    """`expr` as base + offset (and whether it ends with ``DW_OP_stack_value``), None when it
    is not of that form."""
    stack: list[Address] = []
    pos = 0
    while pos < len(expr):
        op = expr[pos]
        nxt = _skip(expr, pos)
        if _OP_LIT0 <= op <= _OP_LIT31:
            stack.append(Address(ABSOLUTE, op - _OP_LIT0))
        elif op in _CONST_SIZES:
            n, signed = _CONST_SIZES[op]
            stack.append(Address(ABSOLUTE, int.from_bytes(expr[pos + 1:pos + 1 + n], "little",
                                                          signed=signed) & _MASK))
        elif op in (_OP_CONSTU, _OP_CONSTS):
            value = (read_uleb if op == _OP_CONSTU else read_sleb)(expr, pos + 1)[0]
            stack.append(Address(ABSOLUTE, value & _MASK))
        elif op == _OP_ADDR:
            stack.append(Address(MODULE, int.from_bytes(expr[pos + 1:pos + 9], "little")))
        elif _OP_BREG0 <= op <= _OP_BREG31:
            stack.append(Address(op - _OP_BREG0, read_sleb(expr, pos + 1)[0] & _MASK))
        elif op == _OP_BREGX:
            reg, at = read_uleb(expr, pos + 1)
            stack.append(Address(reg, read_sleb(expr, at)[0] & _MASK))
        elif op == _OP_FBREG:
            base = _frame_base(ctx)
            stack.append(base.plus(read_sleb(expr, pos + 1)[0]))
        elif op == _OP_CALL_FRAME_CFA:
            if ctx.cfa is None:
                return None
            stack.append(Address(ctx.cfa[0], ctx.cfa[1] & _MASK))
        elif op == _OP_PLUS_UCONST and stack:
            stack.append(stack.pop().plus(read_uleb(expr, pos + 1)[0]))
        elif op in (_OP_PLUS, _OP_MINUS) and len(stack) >= 2:
            b, a = stack.pop(), stack.pop()
            if b.base != ABSOLUTE:
                if op == _OP_MINUS or a.base != ABSOLUTE:
                    return None
                a, b = b, a
            stack.append(a.plus(b.offset if op == _OP_PLUS else -b.offset))
        elif op == _OP_STACK_VALUE:
            return (stack[-1], True) if len(stack) == 1 and nxt == len(expr) else None
        elif op != _OP_NOP:
            return None
        pos = nxt
    return (stack[-1], False) if len(stack) == 1 else None


def _frame_base(ctx: PcContext) -> Address:
    """The frame base as base + offset (``DW_OP_regN`` there means the register's value)."""
    fb = ctx.frame_base
    if not fb:
        raise Unavailable("no frame base here")
    if _OP_REG0 <= fb[0] <= _OP_REG31 and len(fb) == 1:
        return Address(fb[0] - _OP_REG0, 0)
    linear = _linear(fb, ctx)
    if linear is None or linear[1] or linear[0].base == ABSOLUTE:
        raise Unavailable("a frame base ubt cannot translate")
    return linear[0]


def _user_space_ok(expr: bytes) -> bool:
    """Whether every operation of `expr` is one `unwind.expr` evaluates from registers and
    memory (no module addresses: their bias is not known to the evaluator)."""
    pos = 0
    while pos < len(expr):
        if expr[pos] not in _USER_SPACE_OPS:
            return False
        pos = _skip(expr, pos)
    return True


# Operands of each operation (DWARF 5 table 7.9 and the GNU extensions), for skipping: "U"
# an unsigned LEB128, "S" a signed one, a digit that many bytes, "B" a block of ULEB length,
# "T" a typed constant (a byte of length, then that many bytes). Operations not listed (and
# operands whose size is not known here: call_ref, GNU_encoded_addr, GNU_variable_value) make
# the location unavailable.
_OPERANDS: dict[int, str] = {
    _OP_ADDR: "8", **{op: str(n) for op, (n, _) in _CONST_SIZES.items()},
    _OP_CONSTU: "U", _OP_CONSTS: "S", 0x15: "1", _OP_PLUS_UCONST: "U", 0x28: "2", 0x2F: "2",
    **{op: "" for op in (0x06, *range(0x12, 0x15), *range(0x16, 0x23), *range(0x24, 0x28),
                         *range(0x29, 0x2F), *range(_OP_LIT0, _OP_REG31 + 1))},
    **{op: "S" for op in range(_OP_BREG0, _OP_BREG31 + 1)},
    _OP_REGX: "U", _OP_FBREG: "S", _OP_BREGX: "US", _OP_PIECE: "U", 0x94: "1", 0x95: "1",
    _OP_NOP: "", 0x97: "", 0x98: "2", 0x99: "4", 0x9B: "", _OP_CALL_FRAME_CFA: "",
    0x9D: "UU", _OP_IMPLICIT_VALUE: "B", _OP_STACK_VALUE: "",
    0xA0: "4S", 0xA1: "U", 0xA2: "U", _OP_ENTRY_VALUE: "B", 0xA4: "UT", 0xA5: "UU",
    0xA6: "1U", 0xA7: "1U", 0xA8: "U", 0xA9: "U",
    0xE0: "", 0xF0: "", 0xF2: "4S", _OP_GNU_ENTRY_VALUE: "B", 0xF4: "UT", 0xF5: "UU",
    0xF6: "1U", 0xF7: "U", 0xF9: "U", 0xFA: "4", 0xFB: "U", 0xFC: "U",
}


def _skip(expr: bytes, pos: int) -> int:
    """The position after the operation at `pos` (with its operands).

    :raises Unavailable: an operation whose operands are not known, or operands running past
        the end of `expr`.
    """
    kinds = _OPERANDS.get(expr[pos])
    if kinds is None:
        raise Unavailable(f"a location with DWARF operation 0x{expr[pos]:02x}")
    pos += 1
    try:
        for kind in kinds:
            if kind == "U":
                pos = read_uleb(expr, pos)[1]
            elif kind == "S":
                pos = read_sleb(expr, pos)[1]
            elif kind == "B":
                length, pos = read_uleb(expr, pos)
                pos += length
            elif kind == "T":
                pos += 1 + expr[pos]
            else:
                pos += int(kind)
    except IndexError:
        pos = len(expr) + 1
    if pos > len(expr):
        raise Unavailable("a truncated location expression")
    return pos
