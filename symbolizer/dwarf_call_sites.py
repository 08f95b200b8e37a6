"""Call-site information: what a caller passed in each register, for ``DW_OP_entry_value``.

gdb recovers an entry value (``DW_OP_entry_value(DW_OP_regN)``: register N at the function's
entry) away from the entry from the caller: the ``DW_TAG_call_site`` (DWARF 5;
``DW_TAG_GNU_call_site`` in DWARF 4) whose return address is frame 1's pc, and its
``DW_TAG_call_site_parameter`` with ``DW_AT_location`` ``DW_OP_regN``, whose ``DW_AT_call_value``
is evaluated in the caller's frame at the call. `call_sites` collects, for one function, the
call sites of its unit that call it directly, by return address:

- only calls whose ``DW_AT_call_origin`` (``DW_AT_abstract_origin`` for GNU) is the function
  (indirect calls, whose target is not known, are left out, and so are callers in other units,
  which name a declaration);
- a return address with several call-site DIEs is left out;
- a function that tail-calls anything gets no call sites at all: a tail call made inside its
  frame could have entered it again with other arguments, and frame 1 would not tell;
- each call value is kept only when it can be evaluated from what the hit's snapshot knows of
  the caller (`CALL_VALUE_REGISTERS`, its CFA and stack, constants, module addresses):
  ``DW_OP_fbreg`` is rewritten through the caller's frame base when that is
  ``DW_OP_call_frame_cfa``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from symbolizer.dwarf_attrs import (
    AT_ABSTRACT_ORIGIN, AT_FRAME_BASE, AT_LOCATION, Die, DieReader,
)
from symbolizer.var_fetch import Unavailable, _skip

TAG_CALL_SITE, TAG_CALL_SITE_PARAMETER = 0x48, 0x49
TAG_GNU_CALL_SITE, TAG_GNU_CALL_SITE_PARAMETER = 0x4109, 0x410A
_TAG_SUBPROGRAM = 0x2E
AT_LOW_PC, AT_CALL_RETURN_PC, AT_CALL_VALUE, AT_CALL_ORIGIN = 0x11, 0x7D, 0x7E, 0x7F
AT_CALL_TAIL_CALL, AT_CALL_PC = 0x82, 0x81
AT_GNU_CALL_SITE_VALUE, AT_GNU_TAIL_CALL = 0x2111, 0x2115
_SITE_TAGS = (TAG_CALL_SITE, TAG_GNU_CALL_SITE)
_PARAM_TAGS = (TAG_CALL_SITE_PARAMETER, TAG_GNU_CALL_SITE_PARAMETER)

#: DWARF registers a call value may use: callee-saved (rbx, rbp, r12–r15: the unwinder restores
#: them for frame 1) and rsp (frame 1's sp).
CALL_VALUE_REGISTERS = frozenset((3, 6, 7, 12, 13, 14, 15))
_OP_ADDR, _OP_FBREG, _OP_CFA, _OP_CONSTS, _OP_PLUS = 0x03, 0x91, 0x9C, 0x11, 0x22
#: Operations allowed in a call value besides breg of `CALL_VALUE_REGISTERS`: constants,
#: DW_OP_addr, deref (of the captured stack), stack and arithmetic operations, call_frame_cfa.
_VALUE_OPS = frozenset([_OP_ADDR, *range(0x06, 0x28), *range(0x29, 0x2F), *range(0x30, 0x50),
                        0x94, 0x96, _OP_CFA])

#: Return ELF address → DWARF register → its call value (an expression over the caller).
CallSites = Mapping[int, Mapping[int, bytes]]


def call_sites(reader: DieReader, function: Die) -> dict[int, dict[int, bytes]] | None:
    """The direct call sites of `function` (a subprogram with code) in its unit; None when
    entry values cannot be recovered from callers (the function makes tail calls)."""
    if any(_is_tail(d) for d in _walk(reader, function) if d.tag in _SITE_TAGS):
        return None
    target = reader.origin(function).offset
    root = reader.die(function.dfile, function.unit.die_offset)
    by_pc: dict[int, list[tuple[Die, Die]]] = {}       # return pc → (site, its subprogram)
    for sub in _subprograms(reader, root):
        for site in _walk(reader, sub):
            if site.tag not in _SITE_TAGS or _is_tail(site):
                continue
            pc = site.int_attr(AT_CALL_RETURN_PC if site.tag == TAG_CALL_SITE else AT_LOW_PC)
            if pc is not None:
                by_pc.setdefault(pc, []).append((site, sub))
    out: dict[int, dict[int, bytes]] = {}
    for pc, found in by_pc.items():
        if len(found) != 1:
            continue                    # several candidates: which one ran is not known
        site, caller = found[0]
        callee = reader.ref(site, AT_CALL_ORIGIN if site.tag == TAG_CALL_SITE
                            else AT_ABSTRACT_ORIGIN)
        if callee is None or reader.origin(callee).offset != target:
            continue
        frame_base = caller.attrs.get(AT_FRAME_BASE)
        params: dict[int, bytes] = {}
        for p in reader.children(site):
            loc = p.attrs.get(AT_LOCATION)
            value = p.attrs.get(AT_CALL_VALUE if p.tag == TAG_CALL_SITE_PARAMETER
                                else AT_GNU_CALL_SITE_VALUE)
            if p.tag not in _PARAM_TAGS or not isinstance(loc, bytes) or len(loc) != 1 \
                    or not 0x50 <= loc[0] <= 0x6F or not isinstance(value, bytes):
                continue
            expr = call_value(value, frame_base if isinstance(frame_base, bytes) else None)
            if expr is not None:
                params[loc[0] - 0x50] = expr
        out[pc] = params
    return out


def call_value(expr: bytes, frame_base: bytes | None) -> bytes | None:
    """`expr` with ``DW_OP_fbreg`` through the caller's frame base, or None when it uses
    anything the hit does not know of the caller (a caller-saved register, a frame base other
    than the CFA, an operation outside `_VALUE_OPS`)."""
    out = b""
    pos = 0
    try:
        while pos < len(expr):
            op, nxt = expr[pos], _skip(expr, pos)
            if op == _OP_FBREG:
                if frame_base != bytes([_OP_CFA]):
                    return None
                out += bytes([_OP_CFA, _OP_CONSTS]) + expr[pos + 1:nxt] + bytes([_OP_PLUS])
            elif 0x70 <= op <= 0x8F:
                if op - 0x70 not in CALL_VALUE_REGISTERS:
                    return None
                out += expr[pos:nxt]
            elif op in _VALUE_OPS:
                out += expr[pos:nxt]
            else:
                return None
            pos = nxt
    except (Unavailable, IndexError):
        return None
    return out or None             # (no branches: _VALUE_OPS has none, so nothing moves)


def relocate(expr: bytes, bias: int) -> bytes:
    """`expr` with each ``DW_OP_addr X`` as ``DW_OP_const8u X + bias`` (the same length)."""
    if _OP_ADDR not in expr:
        return expr
    out = bytearray(expr)
    pos = 0
    while pos < len(expr):
        nxt = _skip(expr, pos)
        if expr[pos] == _OP_ADDR:
            value = (int.from_bytes(expr[pos + 1:pos + 9], "little") + bias) & ((1 << 64) - 1)
            out[pos:pos + 9] = b"\x0e" + value.to_bytes(8, "little")
        pos = nxt
    return bytes(out)


def _is_tail(site: Die) -> bool:
    return bool(site.attrs.get(AT_CALL_TAIL_CALL) or site.attrs.get(AT_GNU_TAIL_CALL))


def _subprograms(reader: DieReader, root: Die) -> Iterator[Die]:
    """Subprograms with code under `root` (through namespaces and classes)."""
    for child in reader.children(root):
        if child.tag == _TAG_SUBPROGRAM:
            if child.ranges:
                yield child
        elif child.has_children and child.tag in (0x02, 0x13, 0x17, 0x39):
            yield from _subprograms(reader, child)


def _walk(reader: DieReader, die: Die) -> Iterator[Die]:
    """The descendants of `die` (not nested subprograms: their calls are theirs)."""
    for child in reader.children(die):
        yield child
        if child.has_children and child.tag != _TAG_SUBPROGRAM:
            yield from _walk(reader, child)


__all__ = ["CALL_VALUE_REGISTERS", "CallSites", "call_sites", "call_value", "relocate"]
