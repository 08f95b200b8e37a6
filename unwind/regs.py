"""x86-64 DWARF register numbers (System V psABI, figure 3.36) and their names.

Every register set in ubt (ptrace captures, BPF records, unwound frames) is a mapping of these
numbers to values, so CFI rules, which name registers by DWARF number, apply to it directly.
"""
from __future__ import annotations

from collections.abc import Mapping

RAX, RDX, RCX, RBX, RSI, RDI, RBP, RSP = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
#: The return-address column; for a frame it holds the instruction pointer (rip).
RA = 16
RIP = RA
XMM0 = 17
ST0 = 33
MM0 = 41
RFLAGS = 49
ES, CS, SS, DS, FS, GS = range(50, 56)
FS_BASE = 58
GS_BASE = 59

#: Number of the highest register ubt knows, plus one.
NUM_REGS = 60

_GPR_NAMES = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")


def _names() -> dict[int, str]:
    names = dict(enumerate(_GPR_NAMES))
    names.update({XMM0 + i: f"xmm{i}" for i in range(16)})
    names.update({ST0 + i: f"st{i}" for i in range(8)})
    names.update({MM0 + i: f"mm{i}" for i in range(8)})
    names[RFLAGS] = "rflags"
    names.update({ES + i: seg for i, seg in enumerate(("es", "cs", "ss", "ds", "fs", "gs"))})
    names[FS_BASE] = "fs.base"
    names[GS_BASE] = "gs.base"
    return names


#: DWARF register number → conventional name (as readelf and gdb print them).
NAMES: Mapping[int, str] = _names()

#: struct user_regs_struct field (sys/user.h) → DWARF number. orig_rax has no DWARF number.
USER_REGS_FIELDS: Mapping[str, int] = {
    "rax": RAX, "rdx": RDX, "rcx": RCX, "rbx": RBX, "rsi": RSI, "rdi": RDI, "rbp": RBP,
    "rsp": RSP, "r8": R8, "r9": R9, "r10": R10, "r11": R11, "r12": R12, "r13": R13,
    "r14": R14, "r15": R15, "rip": RIP, "eflags": RFLAGS, "cs": CS, "ss": SS, "ds": DS,
    "es": ES, "fs": FS, "gs": GS, "fs_base": FS_BASE, "gs_base": GS_BASE,
}


def from_user_regs(user: Mapping[str, int]) -> dict[int, int]:
    """Convert ptrace's register names (struct user_regs_struct) to DWARF numbers.

    Fields without a DWARF number (``orig_rax``) and unknown names are dropped; missing fields
    are simply absent from the result (an unwinder treats them as unknown).
    """
    return {USER_REGS_FIELDS[name]: value for name, value in user.items()
            if name in USER_REGS_FIELDS}
