"""Entry values away from the entry: the caller's call value at frame 1's call site."""
from __future__ import annotations

from pathlib import Path

import pytest

from symbolizer.dwarf_call_sites import call_value, relocate
from symbolizer.dwarf_locations import Location, LocationEntry
from symbolizer.dwarf_scopes import Variable
from symbolizer.var_fetch import EntryValue, Fetch, PcContext, Unavailable, locate
from tests.unit.test_var_values import PLAN_SRC, _compile, _globals
from ubt.var_plan import plan_probe, values_at
from unwind.memory import StackBytes
from unwind.regs import RA, RBX, RDI, RSP
from unwind.unwinder import CallerFrame

ENTRY_RDI = bytes.fromhex("A3 01 55 9F")        # DW_OP_entry_value(DW_OP_reg5) stack_value


@pytest.mark.parametrize("hexexpr, frame_base, want", [
    ("7e 00", None, "7e00"),                            # r14: callee-saved
    ("73 08 08 20 24", None, "7308082024"),             # rbx + 8 << 32
    ("31", None, "31"),                                 # lit1
    ("03 10 13 00 00 00 00 00 00", None, "031013000000000000"),    # addr
    ("91 90 7f", "9c", "9c11907f22"),                   # fbreg through the CFA
    ("91 90 7f", "77 08", None),                        # another frame base: not known
    ("70 00", None, None),                              # rax: caller-saved
    ("75 00", None, None),                              # rdi: caller-saved
    ("a3 01 55", None, None),                           # an entry value of the caller
    ("2f 00 00 31", None, None),                        # skip: no branches
])
def test_call_values_use_only_what_the_hit_knows(hexexpr: str, frame_base: str | None,
                                                 want: str | None) -> None:
    got = call_value(bytes.fromhex(hexexpr),
                     bytes.fromhex(frame_base) if frame_base else None)
    assert (got.hex() if got is not None else None) == want


def test_relocate_keeps_the_length() -> None:
    expr = bytes.fromhex("03 10 13 00 00 00 00 00 00 23 04")
    assert relocate(expr, 0x5000) == bytes.fromhex("0e 10 63 00 00 00 00 00 00 23 04")
    assert relocate(b"\x31", 0x5000) == b"\x31"


def test_entry_value_is_the_register_at_entry_else_the_call_sites() -> None:
    at_entry = locate(ENTRY_RDI, 8, PcContext(None, None, True)).pieces[0][1]
    assert isinstance(at_entry, Fetch) and at_entry.address.base == RDI
    sites = {0x112B: {RDI: b"\x7e\x00"}, 0x2000: {4: b"\x31"}}
    src = locate(ENTRY_RDI, 8, PcContext(None, None, False, sites)).pieces[0][1]
    assert src == EntryValue(RDI, ((0x112B, b"\x7e\x00"),), 8)
    for no_sites in (None, {0x2000: {4: b"\x31"}}):
        with pytest.raises(Unavailable):
            locate(ENTRY_RDI, 8, PcContext(None, None, False, no_sites))


BIAS = 0x555555554000
SP = 0x7000


def test_values_from_the_call_site_frame_1_returns_to(tmp_path: Path) -> None:
    types, found = _globals(_compile(tmp_path, PLAN_SRC, ".c"))
    sites = {0x112B: {RDI: bytes.fromhex("73 08"), 4: bytes.fromhex("03 1c 20 00 00 00 00 00 00"),
                      2: bytes.fromhex("9c 11 70 22"), 1: bytes.fromhex("70 00"),
                      8: bytes.fromhex("76 00 06")}}
    ctx = PcContext(None, None, False, sites)
    regs_of = {"l": "A3 01 55 9F", "vp": "A3 01 54 9F", "pp": "A3 01 52 9F",
               "p": "A3 01 51 9F", "s": "A3 01 55 9F", "d": "A3 01 58 9F"}
    in_scope = [(Variable(name, found[name].name, True,
                          Location((LocationEntry(0, 1 << 63, bytes.fromhex(expr)),), False),
                          None, i), found[name]) for i, (name, expr) in enumerate(regs_of.items())]
    plan = plan_probe("p", ["$l", "$vp", "$pp", "$s"], in_scope, set(range(len(regs_of))),
                      0x1400, ctx, types)
    assert plan.fetches == () and plan.items[3].error     # a string: would need a read
    regs = {RA: BIAS + 0x1400, RSP: SP, RBX: 0}
    stack = StackBytes(SP, bytes(64))
    caller = CallerFrame(BIAS + 0x112B, {RBX: 40, RSP: SP + 8, 0: 1}, SP + 0x100)
    values = dict(values_at(plan, b"", regs, stack, lambda: caller))
    assert values == {"l": "48", "vp": hex(BIAS + 0x201C), "pp": hex(SP + 0xF0), "s": "?"}
    # another return address (a tail call, an unknown caller) or no frame 1: ?
    for other in (CallerFrame(BIAS + 0x1130, caller.regs, caller.cfa), None):
        assert set(dict(values_at(plan, b"", regs, stack, lambda: other)).values()) == {"?"}
    # the CFA unknown: what uses it is ?, the rest is read
    no_cfa = CallerFrame(caller.pc, caller.regs, None)
    assert dict(values_at(plan, b"", regs, stack, lambda: no_cfa))["pp"] == "?"
