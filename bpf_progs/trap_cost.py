"""Place an entry uprobe where its trap is cheap, when that changes nothing the probe can see.

At a uprobe the kernel runs the original instruction in one of two ways: it emulates a few kinds
itself (push of a register, jmp, call, conditional jumps, nop), or it single-steps a copy of the
instruction out of line, which costs a second trap. On this machine the difference is ~0.8 µs
against ~20 µs per hit (libc's `free`, measured with `ubt process` on a malloc/free loop).

Many functions start by testing an argument and branching: libc's `free` begins
``test %rdi,%rdi; je ...``. A `test` or `cmp` between registers, or of a register with a
constant, only sets flags: placing the probe on the conditional jump after it gives the program
the registers, the stack and the memory of the function's entry, with a trap the kernel emulates.
Flags are the only difference, and nothing ubt reads (unwind rules, argument registers,
DWARF locations) depends on them. Only these exact forms are decoded; anything else keeps the
probe at the entry.

A jump into the function to that conditional jump would make the probe fire more than once per
call. The function's bytes are scanned for one: every byte is read as the start of a relative
jump or call, so instruction boundaries need not be known, and any candidate landing there
keeps the probe at the entry (false alarms only cost the cheap trap). Jumps from outside the
function's symbol (a `.cold` part stripped from `.dynsym`) are not seen; compilers jump back
into a function's hot part at a continuation, not onto a flag test's branch.
"""
from __future__ import annotations

from collections.abc import Sequence

from symbolizer.elf import open_image

from .uprobe_link import AttachError, file_offsets

_TEST_RM_R = (0x84, 0x85)        # test r/m8, r8; test r/m, r
_CMP_RM_R = (0x38, 0x39, 0x3A, 0x3B)  # cmp between registers (either direction, 8 or 16-64 bit)
_GROUP1_IMM8 = 0x83              # group 1 with a sign-extended imm8: /7 is cmp
_CMP_SUBOP = 7


def cheap_entries(path: str, elf_addrs: Sequence[int]) -> list[int]:
    """Where to attach entry probes for the functions at `elf_addrs` in `path`: for each, the
    conditional jump after a leading flags-only compare, or the address itself (also when no
    symbol gives the function's size, needed for the scan)."""
    image = open_image(path)
    if not image.is64:  # 0x40-0x4f are inc/dec in 32-bit code, not REX prefixes
        return list(elf_addrs)
    sizes: dict[int, int] = {}
    for sym in image.code_symbols():
        sizes[sym.addr] = max(sizes.get(sym.addr, 0), sym.size)
    try:
        offsets = file_offsets(path, elf_addrs)
    except AttachError:
        return list(elf_addrs)  # attaching says what is wrong, in its own words
    places = []
    with open(path, "rb") as f:
        for addr, offset in zip(elf_addrs, offsets):
            size = sizes.get(addr, 0)
            f.seek(offset)
            code = f.read(max(size, 16))
            n = _flags_only_length(code)
            ok = (0 < n < size and _is_conditional_jump(code[n:])
                  and not _jumps_into(code[:size], n))
            places.append(addr + n if ok else addr)
    return places


def _flags_only_length(code: bytes) -> int:
    """Length of a `test`/`cmp` at the start of `code` whose operands are registers (or a
    register and an imm8), or 0 for anything else."""
    i = 0
    if code[:1] and code[0] == 0x66:            # operand-size prefix (16-bit form)
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:  # REX
        i += 1
    if i + 1 >= len(code):
        return 0
    op, modrm = code[i], code[i + 1]
    if modrm >> 6 != 3:                          # a memory operand: not decoded here
        return 0
    if op in _TEST_RM_R or op in _CMP_RM_R:
        return i + 2
    if op == _GROUP1_IMM8 and (modrm >> 3) & 7 == _CMP_SUBOP and i + 2 < len(code):
        return i + 3
    return 0


def _is_conditional_jump(code: bytes) -> bool:
    """jcc rel8 (70-7f) or jcc rel32 (0f 80-8f): the kernel emulates both at a uprobe."""
    if code[:1] and 0x70 <= code[0] <= 0x7F:
        return True
    return len(code) >= 2 and code[0] == 0x0F and 0x80 <= code[1] <= 0x8F


def _jumps_into(code: bytes, n: int) -> bool:
    """Whether any byte of `code`, read as a rel8/rel32 jump or call, targets 1..n."""
    for p in range(len(code)):
        b = code[p]
        if 0x70 <= b <= 0x7F or b == 0xEB:                     # jcc rel8, jmp rel8
            target = p + 2 + int.from_bytes(code[p + 1:p + 2], "little", signed=True)
        elif b in (0xE8, 0xE9) and p + 5 <= len(code):        # call / jmp rel32
            target = p + 5 + int.from_bytes(code[p + 1:p + 5], "little", signed=True)
        elif b == 0x0F and p + 6 <= len(code) and 0x80 <= code[p + 1] <= 0x8F:  # jcc rel32
            target = p + 6 + int.from_bytes(code[p + 2:p + 6], "little", signed=True)
        else:
            continue
        if 0 < target <= n:
            return True
    return False
