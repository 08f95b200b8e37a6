"""Decode CFI entries (CIEs and FDEs of ``.eh_frame`` or ``.debug_frame``) and run their
instructions into rows.

Parsed by hand with `struct` rather than through pyelftools: it is several times faster on a
libc-sized section, and it handles every ``DW_CFA_*`` instruction (pyelftools 0.33 raises on
``DW_CFA_GNU_args_size``, which libc uses). Each FDE's instructions are executed once, and each
address advance emits a row ``(start, end, rule id)`` whose rule set is interned by `RowSink`.
A malformed FDE is skipped (and counted) without losing the rest of the section.
"""
from __future__ import annotations


import struct
from dataclasses import dataclass, field
from typing import Union

from .leb128 import read_sleb, read_uleb
from .table import RawRegRule, RawRule, RuleKind, make_rule

_U16 = struct.Struct("<H").unpack_from
_S16 = struct.Struct("<h").unpack_from
_U32 = struct.Struct("<I").unpack_from
_S32 = struct.Struct("<i").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_S64 = struct.Struct("<q").unpack_from
_MASK = (1 << 64) - 1

_OFFSET = int(RuleKind.OFFSET)
_VAL_OFFSET = int(RuleKind.VAL_OFFSET)
_UNDEFINED = int(RuleKind.UNDEFINED)
_SAME_VALUE = int(RuleKind.SAME_VALUE)
_REGISTER = int(RuleKind.REGISTER)
_EXPRESSION = int(RuleKind.EXPRESSION)
_VAL_EXPRESSION = int(RuleKind.VAL_EXPRESSION)

_DW_EH_PE_omit = 0xFF
#: Bound on remember_state nesting, against corrupt input.
_MAX_REMEMBER = 64


class CfiError(ValueError):
    """Malformed or unsupported call-frame information."""


@dataclass(frozen=True, slots=True)
class SectionInfo:
    """A CFI section's bytes and where it is loaded (pcrel pointers are relative to it)."""

    data: bytes
    addr: int
    is_eh: bool
    text_base: int = 0  #: base for DW_EH_PE_textrel (.text address)
    data_base: int = 0  #: base for DW_EH_PE_datarel (.got address)


# A CFA rule and register rules, as the interpreter keeps them while running.
_State = tuple[int, int, Union[bytes, None], dict[int, RawRegRule]]


@dataclass(slots=True)
class Cie:
    """What FDEs need from their CIE: factors, encodings, flags and the initial rules."""

    code_align: int
    data_align: int
    ra_reg: int
    fde_enc: int
    has_aug_data: bool
    signal: bool
    addr_size: int
    seg_size: int
    initial: _State


@dataclass(slots=True)
class RowSink:
    """Collects rows and interns rule sets shared by every section of one module."""

    rows: list[tuple[int, int, int]] = field(default_factory=list)
    rules: list[RawRule] = field(default_factory=list)
    ids: dict[tuple[object, ...], int] = field(default_factory=dict)
    skipped: int = 0  #: malformed FDEs/CIEs that were dropped

    def intern(self, cfa_reg: int, cfa_off: int, cfa_expr: bytes | None,
               rules: dict[int, RawRegRule], signal: bool) -> int:
        """The id of this rule set, adding it when new."""
        regs = tuple(sorted(rules.values()))
        key = (cfa_reg, cfa_off, cfa_expr, regs, signal)
        rid = self.ids.get(key)
        if rid is None:
            rid = len(self.rules)
            self.rules.append(make_rule(cfa_reg, cfa_off, cfa_expr, regs, signal))
            self.ids[key] = rid
        return rid


def read_encoded(sec: SectionInfo, pos: int, enc: int, *,
                 apply: bool = True) -> tuple[int, int]:
    """Decode a DW_EH_PE-encoded pointer at `pos`; `apply=False` ignores the base (for ranges)."""
    data = sec.data
    start = pos
    app = enc & 0x70
    if app == 0x50:  # DW_EH_PE_aligned: an absptr at the next 8-byte boundary
        pos += (-(sec.addr + pos)) % 8
        return _U64(data, pos)[0], pos + 8
    fmt = enc & 0x0F
    if fmt == 0x00 or fmt == 0x04:
        value, pos = _U64(data, pos)[0], pos + 8
    elif fmt == 0x0B:
        value, pos = _S32(data, pos)[0], pos + 4
    elif fmt == 0x03:
        value, pos = _U32(data, pos)[0], pos + 4
    elif fmt == 0x01:
        value, pos = read_uleb(data, pos)
    elif fmt == 0x09:
        value, pos = read_sleb(data, pos)
    elif fmt == 0x02:
        value, pos = _U16(data, pos)[0], pos + 2
    elif fmt == 0x0A:
        value, pos = _S16(data, pos)[0], pos + 2
    elif fmt == 0x0C:
        value, pos = _S64(data, pos)[0], pos + 8
    else:
        raise CfiError(f"unknown pointer encoding {enc:#x}")
    if apply and value:
        if app == 0x10:
            value += sec.addr + start
        elif app == 0x20:
            value += sec.text_base
        elif app == 0x30:
            value += sec.data_base
        elif app != 0x00:
            raise CfiError(f"unsupported pointer application {enc:#x}")
    return value & _MASK, pos


def parse_cie(sec: SectionInfo, pos: int, end: int, sink: RowSink) -> Cie:
    """Decode the CIE whose body (after its id) is ``data[pos:end]``, running its initial
    instructions."""
    data = sec.data
    version = data[pos]
    if version not in (1, 3, 4):
        raise CfiError(f"CIE version {version}")
    nul = data.index(b"\0", pos + 1, end)
    aug = data[pos + 1:nul].decode("ascii", "replace")
    pos = nul + 1
    addr_size, seg_size = 8, 0
    if aug == "eh":  # ancient GCC: an eh_ptr word follows
        pos += 8
    if version == 4:
        addr_size, seg_size = data[pos], data[pos + 1]
        pos += 2
    code_align, pos = read_uleb(data, pos)
    data_align, pos = read_sleb(data, pos)
    if version == 1:
        ra_reg, pos = data[pos], pos + 1
    else:
        ra_reg, pos = read_uleb(data, pos)
    fde_enc = 0x00 if sec.is_eh else _DW_EH_PE_omit
    signal = False
    has_aug_data = aug.startswith("z")
    if has_aug_data:
        aug_len, pos = read_uleb(data, pos)
        aug_end = pos + aug_len
        for ch in aug[1:]:
            if ch == "R":
                fde_enc, pos = data[pos], pos + 1
            elif ch == "P":
                penc, pos = data[pos], pos + 1
                _, pos = read_encoded(sec, pos, penc & 0x7F, apply=False)
            elif ch == "L":
                pos += 1
            elif ch == "S":
                signal = True
            else:
                break  # unknown letter: the augmentation length lets us skip the rest
        pos = aug_end
    elif aug not in ("", "eh"):
        raise CfiError(f"unknown CIE augmentation {aug!r}")
    cie = Cie(code_align, data_align, ra_reg, fde_enc, has_aug_data, signal, addr_size,
               seg_size, (7, 8, None, {}))
    cie.initial = execute(cie, sec, pos, end, 0, 0, None, sink)
    return cie


def execute(cie: Cie, sec: SectionInfo, pos: int, end: int, loc: int, pc_end: int,
            initial: _State | None, sink: RowSink) -> _State:
    """Run CFA instructions ``data[pos:end]``; return the final state.

    With `initial` (an FDE), rows for ``[loc, pc_end)`` go to `sink`; without (a CIE's initial
    instructions) nothing is emitted and the state starts empty.
    """
    data = sec.data
    code_align, data_align, signal = cie.code_align, cie.data_align, cie.signal
    emit = initial is not None
    if initial is None:
        cfa_reg, cfa_off, cfa_expr, rules = 7, 8, None, {}
        init_rules: dict[int, RawRegRule] = {}
    else:
        cfa_reg, cfa_off, cfa_expr, init_rules = initial
        rules = dict(init_rules)
    stack: list[_State] = []
    rows = sink.rows
    rid = -1  # -1: the state changed since the last interning
    while pos < end:
        op = data[pos]
        pos += 1
        hi = op & 0xC0
        new_loc = -1
        if hi == 0x80:  # DW_CFA_offset
            b = data[pos]
            if b < 0x80:
                off, pos = b, pos + 1
            else:
                off, pos = read_uleb(data, pos)
            reg = op & 0x3F
            rules[reg] = (reg, _OFFSET, off * data_align)
            rid = -1
            continue
        if hi == 0x40:  # DW_CFA_advance_loc
            new_loc = loc + (op & 0x3F) * code_align
        elif hi == 0xC0:  # DW_CFA_restore
            reg = op & 0x3F
            if reg in init_rules:
                rules[reg] = init_rules[reg]
            else:
                rules.pop(reg, None)
            rid = -1
            continue
        elif op == 0x0E:  # DW_CFA_def_cfa_offset
            cfa_off, pos = read_uleb(data, pos)
            rid = -1
            continue
        elif op == 0x02:  # DW_CFA_advance_loc1
            new_loc = loc + data[pos] * code_align
            pos += 1
        elif op == 0x03:  # DW_CFA_advance_loc2
            new_loc = loc + _U16(data, pos)[0] * code_align
            pos += 2
        elif op == 0x04:  # DW_CFA_advance_loc4
            new_loc = loc + _U32(data, pos)[0] * code_align
            pos += 4
        elif op == 0x0D:  # DW_CFA_def_cfa_register
            cfa_reg, pos = read_uleb(data, pos)
            cfa_expr = None
        elif op == 0x0C:  # DW_CFA_def_cfa
            cfa_reg, pos = read_uleb(data, pos)
            cfa_off, pos = read_uleb(data, pos)
            cfa_expr = None
        elif op == 0x0A:  # DW_CFA_remember_state
            if len(stack) >= _MAX_REMEMBER:
                raise CfiError("remember_state nested too deep")
            stack.append((cfa_reg, cfa_off, cfa_expr, dict(rules)))
            continue
        elif op == 0x0B:  # DW_CFA_restore_state
            if not stack:
                raise CfiError("restore_state without remember_state")
            cfa_reg, cfa_off, cfa_expr, rules = stack.pop()
        elif op == 0x2E:  # DW_CFA_GNU_args_size: only matters for exception landing pads
            _, pos = read_uleb(data, pos)
            continue
        elif op == 0x00:  # DW_CFA_nop
            continue
        elif op == 0x0F:  # DW_CFA_def_cfa_expression
            size, pos = read_uleb(data, pos)
            cfa_reg, cfa_off, cfa_expr = -1, 0, bytes(data[pos:pos + size])
            pos += size
        elif op == 0x10 or op == 0x16:  # DW_CFA_expression, DW_CFA_val_expression
            reg, pos = read_uleb(data, pos)
            size, pos = read_uleb(data, pos)
            rules[reg] = (reg, _EXPRESSION if op == 0x10 else _VAL_EXPRESSION,
                          bytes(data[pos:pos + size]))
            pos += size
        elif op == 0x05 or op == 0x11 or op == 0x14 or op == 0x15 or op == 0x2F:
            reg, pos = read_uleb(data, pos)
            if op == 0x05 or op == 0x14 or op == 0x2F:
                off, pos = read_uleb(data, pos)
            else:
                off, pos = read_sleb(data, pos)
            if op == 0x2F:  # DW_CFA_GNU_negative_offset_extended
                off = -off
            rules[reg] = (reg, _VAL_OFFSET if op >= 0x14 and op != 0x2F else _OFFSET,
                          off * data_align)
        elif op == 0x06:  # DW_CFA_restore_extended
            reg, pos = read_uleb(data, pos)
            if reg in init_rules:
                rules[reg] = init_rules[reg]
            else:
                rules.pop(reg, None)
        elif op == 0x07 or op == 0x08:  # DW_CFA_undefined, DW_CFA_same_value
            reg, pos = read_uleb(data, pos)
            rules[reg] = (reg, _UNDEFINED if op == 0x07 else _SAME_VALUE, 0)
        elif op == 0x09:  # DW_CFA_register
            reg, pos = read_uleb(data, pos)
            reg2, pos = read_uleb(data, pos)
            rules[reg] = (reg, _REGISTER, reg2)
        elif op == 0x12:  # DW_CFA_def_cfa_sf
            cfa_reg, pos = read_uleb(data, pos)
            off, pos = read_sleb(data, pos)
            cfa_off, cfa_expr = off * data_align, None
        elif op == 0x13:  # DW_CFA_def_cfa_offset_sf
            off, pos = read_sleb(data, pos)
            cfa_off = off * data_align
        elif op == 0x01:  # DW_CFA_set_loc
            new_loc, pos = read_encoded(sec, pos, cie.fde_enc if sec.is_eh else 0)
        elif op == 0x1D:  # DW_CFA_MIPS_advance_loc8
            new_loc = loc + _U64(data, pos)[0] * code_align
            pos += 8
        elif op == 0x2D:  # DW_CFA_GNU_window_save (SPARC): nothing on x86-64
            continue
        else:
            raise CfiError(f"unknown CFA instruction {op:#x}")
        if new_loc < 0:
            rid = -1
            continue
        if emit and new_loc > loc and loc < pc_end:
            if rid < 0:
                rid = sink.intern(cfa_reg, cfa_off, cfa_expr, rules, signal)
            rows.append((loc, min(new_loc, pc_end), rid))
        loc = new_loc
    if pos > end:
        raise CfiError("instruction runs past the end of its entry")
    if emit and loc < pc_end:
        if rid < 0:
            rid = sink.intern(cfa_reg, cfa_off, cfa_expr, rules, signal)
        rows.append((loc, pc_end, rid))
    return cfa_reg, cfa_off, cfa_expr, rules


def parse_fde(sec: SectionInfo, cie: Cie, pos: int, end: int,
              sink: RowSink) -> tuple[int, int] | None:
    """Decode the FDE whose body (after its CIE pointer) is ``data[pos:end]`` and emit its rows
    into `sink`; return its ``(pc_begin, pc_end)``, or None for an empty or discarded FDE.
    On an error no row of this FDE remains in `sink`."""
    data = sec.data
    if sec.is_eh:
        pc_begin, pos = read_encoded(sec, pos, cie.fde_enc)
        pc_range, pos = read_encoded(sec, pos, cie.fde_enc & 0x0F, apply=False)
    else:
        pos += cie.seg_size
        if cie.addr_size == 8:
            pc_begin, pc_range = _U64(data, pos)[0], _U64(data, pos + 8)[0]
        elif cie.addr_size == 4:
            pc_begin, pc_range = _U32(data, pos)[0], _U32(data, pos + 4)[0]
        else:
            raise CfiError(f"address size {cie.addr_size}")
        pos += 2 * cie.addr_size
    if cie.has_aug_data:
        aug_len, pos = read_uleb(data, pos)
        pos += aug_len
    if pos > end:
        raise CfiError("FDE header runs past its entry")
    if pc_range == 0 or (pc_begin == 0 and sec.is_eh):
        return None  # empty, or a discarded function (linker zeroed its address)
    pc_end = pc_begin + pc_range
    if pc_end > _MASK:
        raise CfiError("FDE range wraps around")
    mark = len(sink.rows)
    try:
        execute(cie, sec, pos, end, pc_begin, pc_end, cie.initial, sink)
    except Exception:
        del sink.rows[mark:]
        raise
    return pc_begin, pc_end
