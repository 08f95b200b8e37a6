"""Load `ustack.c` with bcc, attach it to uprobes, and turn ring-buffer records into `RawHit`s.

One BPF program per run (compiling costs ~0.4 s) serves every probe: it is attached with one
uprobe_multi link per file and direction (`uprobe_link`), each probe's index as its cookie, so a
hit names its probe even at a return, where the ip is the caller's. The per-probe copy size is
learnt from the walks (`learn`): the stack bytes the outermost frame needed on earlier hits plus
a margin, grown when a walk comes up short, so a hit copies what it needs, not the cap.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from bcc import BPF

from unwind.memory import StackBytes
from unwind.regs import from_user_regs

from .uprobe_link import BPF_TRACE_UPROBE_MULTI, UprobeMultiLink, file_offsets

_SOURCE = Path(__file__).with_name("ustack.c")
_PAGE = 4096
#: Bytes above the deepest stack position a walk used that are copied anyway.
_MARGIN = 1024
#: Ring buffer size (32 MB): ~4,000 records of 8 KB, so a burst from a short program fits.
_RINGBUF_PAGES = 8192
# struct pt_regs field order (arch/x86/include/uapi/asm/ptrace.h) → user_regs_struct names
_PT_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
            "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss")


class _Header(ctypes.Structure):
    _fields_ = [("time_ns", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("probe", ctypes.c_uint32),
                ("stack_len", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("comm", ctypes.c_char * 16),
                ("regs", ctypes.c_uint64 * len(_PT_REGS))]


_HEADER_SIZE = ctypes.sizeof(_Header)


@dataclass(frozen=True, slots=True)
class ProbePoint:
    """Where to attach: `elf_addr` in `path`; `label` names its hits."""

    path: str
    elf_addr: int
    is_return: bool
    label: str


@dataclass(frozen=True, slots=True)
class RawHit:
    """One record from the ring buffer, copied out of it.

    :param probe_id: index into the capture's probes.
    :param truncated: the copy stopped at the size limit before the end of the stack.
    """

    pid: int
    tid: int
    comm: str
    time_ns: int
    probe_id: int
    regs: dict[int, int]
    stack: StackBytes
    truncated: bool

    @property
    def regs_pc(self) -> int:
        """The instruction pointer at the hit."""
        return self.regs[16]


class StackCapture:
    """The compiled program, its uprobes and its ring buffer; `close()` detaches everything.

    :param on_hit: called on the polling thread for every record (keep it short).
    """

    def __init__(self, probes: list[ProbePoint], pid: int | None, stack_cap: int,
                 on_hit: Callable[[RawHit], None], cflags: tuple[str, ...] = ()) -> None:
        self.probes = probes
        self.stack_cap = -(-stack_cap // _PAGE) * _PAGE
        self._on_hit = on_hit
        self._need = [0] * len(probes)
        self._want = [self.stack_cap] * len(probes)
        self._links: list[UprobeMultiLink] = []
        self._lost_at_close = 0
        self._records = 0
        defines = [f"-DSTACK_CAP={self.stack_cap}", f"-DFILTER_PID={pid or 0}",
                   f"-DNPROBES={len(probes)}", f"-DRINGBUF_PAGES={_RINGBUF_PAGES}"]
        self._bpf: BPF | None = None
        self._bpf = BPF(text=_SOURCE.read_text(), cflags=[*defines, *cflags])
        try:
            prog = self._bpf.load_func(b"on_hit", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            order = sorted(range(len(probes)), key=lambda i: (probes[i].path, probes[i].is_return))
            for (path, is_return), group in groupby(order, lambda i: (probes[i].path,
                                                                      probes[i].is_return)):
                ids = list(group)
                offsets = file_offsets(path, [probes[i].elf_addr for i in ids])
                self._links.append(UprobeMultiLink(prog.fd, path, offsets, ids,
                                                   retprobe=is_return, pid=pid))
        except BaseException:
            self.close()
            raise
        self._bpf["hits"].open_ring_buffer(self._callback)

    def _callback(self, _ctx: object, data: int, size: int) -> None:
        self._records += 1
        head = _Header.from_address(data)
        length = min(head.stack_len, size - _HEADER_SIZE)
        regs = from_user_regs(dict(zip(_PT_REGS, head.regs)))
        stack = StackBytes(regs[7], ctypes.string_at(data + _HEADER_SIZE, length))
        self._on_hit(RawHit(head.pid, head.tid, head.comm.decode(errors="replace"),
                            head.time_ns, int(head.probe), regs, stack, bool(head.flags & 1)))

    def poll(self, timeout_ms: int) -> int:
        """Drain the ring buffer: wait up to `timeout_ms` for a wake-up (records are mostly
        submitted without one), then consume everything there; returns how many records."""
        if self._bpf is None:
            return 0
        before = self._records
        self._bpf.ring_buffer_poll(timeout_ms)  # bcc returns nothing useful: count ourselves
        self._bpf.ring_buffer_consume()
        return self._records - before

    @property
    def lost(self) -> int:
        """Records dropped because the ring buffer was full (the final count after `close`)."""
        if self._bpf is None:
            return self._lost_at_close
        return int(sum(v.value for v in self._bpf["lost"].values()))

    def learn(self, probe_id: int, used: int, complete: bool, at_cap: bool) -> None:
        """Adapt the copy size of a probe after a walk: `used` stack bytes were needed.

        A complete walk lets the size shrink to what was needed plus a margin; a walk that ran
        out of copied bytes doubles it, up to the cap.
        """
        slot = probe_id
        old = self._want[slot]
        if complete:
            self._need[slot] = max(self._need[slot], used)
            new = min(self.stack_cap, -(-(self._need[slot] + _MARGIN) // _PAGE) * _PAGE)
        elif at_cap:
            new = min(self.stack_cap, old * 2)
        else:
            return
        if new != old and self._bpf is not None:
            self._want[slot] = new
            self._bpf["want"][ctypes.c_int(slot)] = ctypes.c_uint32(new)

    def close(self) -> None:
        """Detach every uprobe and free the program (safe to call twice)."""
        for link in self._links:
            link.close()
        self._links.clear()
        if self._bpf is not None:
            self._lost_at_close = self.lost
            self._bpf.cleanup()
            self._bpf = None
