"""Entry probes moved past a flags-only compare (bpf_progs/trap_cost.py), checked against
objdump on every function libc exports, and the jump-into-the-branch guard on hand-made code."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from bpf_progs.trap_cost import _jumps_into, cheap_entries
from symbolizer.elf import ElfImage

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def first_two(path: str, addr: int) -> list[tuple[int, str]]:
    """objdump's first two instructions at `addr`: (address, text)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={addr:#x}",
                          f"--stop-address={addr + 32:#x}", path],
                         capture_output=True, text=True, check=True).stdout
    insns = [(int(m.group(1), 16), m.group(2).strip())
             for m in re.finditer(r"^\s+([0-9a-f]+):\s+(.*)$", out, re.M)]
    return insns[:2]


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils")
def test_libc_entries_against_objdump() -> None:
    """Every function libc exports: where the probe moves, objdump shows a test/cmp between
    registers (or with a constant) ending exactly there, then a conditional jump; free is one
    (libc's test %rdi,%rdi; je), malloc is not (push)."""
    funcs: dict[int, str] = {}
    for sym in ElfImage(LIBC).code_symbols():
        if sym.size > 8:
            funcs[sym.addr] = min(funcs.get(sym.addr, sym.name), sym.name, key=len)
    addrs = sorted(funcs)
    moved = {a: p for a, p in zip(addrs, cheap_entries(LIBC, addrs)) if p != a}
    by_name = {funcs[a]: p - a for a, p in moved.items()}
    assert by_name.get("free") == 3 and "malloc" not in by_name
    assert len(moved) > 20
    for addr, place in moved.items():
        (a0, i0), (a1, i1) = first_two(LIBC, addr)
        assert a1 == place, f"{funcs[addr]}: {i0!r} does not end at +{place - addr}"
        assert re.match(r"(test|cmp)[bwlq]?\s", i0) and "(" not in i0, f"{funcs[addr]}: {i0}"
        assert re.match(r"j(?!mp)[a-z]+\s", i1), f"{funcs[addr]}: {i1} is not a conditional jump"


def test_a_jump_onto_the_branch_keeps_the_entry() -> None:
    """test %rdi,%rdi; je +2; nop; nop; jmp back to the je (a loop onto the branch): the probe
    there would fire twice per call. A jump to the test itself (offset 0) is fine."""
    onto_branch = bytes([0x48, 0x85, 0xFF, 0x74, 0x02, 0x90, 0x90, 0xEB, 0xFA])   # jmp -> 3
    onto_entry = bytes([0x48, 0x85, 0xFF, 0x74, 0x02, 0x90, 0x90, 0xEB, 0xF7])    # jmp -> 0
    assert _jumps_into(onto_branch, 3)
    assert not _jumps_into(onto_entry, 3)
    rel32 = bytes([0x48, 0x85, 0xFF, 0x0F, 0x84, 0, 0, 0, 0, 0xE9, 0xF5, 0xFF, 0xFF, 0xFF])
    assert _jumps_into(rel32, 3)   # jmp rel32 at 9: 9 + 5 - 11 = 3
