"""Load `ustack.c`, attach it to uprobes, and turn ring-buffer records into `RawHit`s.

The program is compiled by bcc once and its bytecode cached (`objcache`), so a run loads it
without clang. One program serves every probe: it is attached with one
uprobe_multi link per file and direction (`uprobe_link`), each probe's index as its cookie, so a
hit names its probe even at a return, where the ip is the caller's. The per-probe copy size is
learnt from the walks (`learn`): the stack bytes the outermost frame needed on earlier hits plus
a margin, grown when a walk comes up short, so a hit copies what it needs, not the cap.
"""
from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from itertools import groupby
from operator import itemgetter
from pathlib import Path

from unwind.memory import StackBytes
from unwind.regs import USER_REGS_FIELDS

from .bpfsys import PROG_SLEEPABLE, PROG_TYPE_KPROBE, map_lookup, map_update
from .objcache import LoadedProgram, get_program, load
from .ringbuf import RingBuffer
from .uprobe_link import BPF_TRACE_UPROBE_MULTI, UprobeMultiLink, file_offsets

_SOURCE = Path(__file__).with_name("ustack.c")
_PAGE = 4096
#: Bytes above the deepest stack position a walk used that are copied anyway.
_MARGIN = 1024
#: The copy size moves in steps of this many bytes, not whole pages: the copy is most of what
#: a hit costs the traced thread beyond bpftrace's. At bench_hit (~300 bytes needed), BPF
#: program time per hit in alternating runs: 1.2-1.7 us with 256-byte steps, 1.8-2.6 us with
#: 4 KB ones, bpftrace's `@[ustack] = count()` 0.9-1.2 us.
_STEP = 256
#: Ring buffer size (32 MB). A record is the stack bytes its hit needed and a 216-byte head
#: (records up to 16 KB are written at their exact size): ~1.5 KB at a shallow probe, so
#: ~20,000 of them; a burst from a short program fits.
_RINGBUF_PAGES = 8192
# struct pt_regs field order (arch/x86/include/uapi/asm/ptrace.h) → user_regs_struct names
PT_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
            "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss")


# struct hit_head: time_ns, pid, tid, probe, stack_len, flags, pad, comm[16], struct pt_regs
_HEAD = struct.Struct(f"<QIIIII4x16s{len(PT_REGS)}Q")
# DWARF numbers of the pt_regs fields that have one (not orig_rax), and a getter of their
# values from an unpacked record header whose pt_regs start at field 7 (this program's
# hit_head and leak.c's snap_head both do): ``dict(zip(REG_NUMBERS, reg_values(head)))``
REG_NUMBERS = tuple(USER_REGS_FIELDS[name] for name in PT_REGS if name in USER_REGS_FIELDS)
reg_values = itemgetter(*(7 + i for i, name in enumerate(PT_REGS) if name in USER_REGS_FIELDS))


@dataclass(frozen=True, slots=True)
class ProbeValues:
    """Values to read at the hits: `source` (`fetch_gen.generate`'s C, appended to the
    program) fills `size` bytes per record."""

    source: str
    size: int


@dataclass(frozen=True, slots=True)
class ProbePoint:
    """Where to attach: `elf_addr` in `path`; `label` names its hits.

    :param shift: attach this many bytes further, on an instruction that leaves the program's
        state as it was at `elf_addr` but traps cheaper (`trap_cost.cheap_entries`); hits are
        reported at `elf_addr`.
    """

    path: str
    elf_addr: int
    is_return: bool
    label: str
    shift: int = 0


class RawHit(NamedTuple):
    """One record from the ring buffer, copied out of it (a NamedTuple: one is built per
    record, at up to tens of thousands a second, and a frozen dataclass costs ~4x more).

    :param probe_id: index into the capture's probes.
    :param truncated: the copy stopped at the size limit before the end of the stack.
    :param vars: the probe's values read at the hit (`ProbeValues`), empty without any.
    """

    pid: int
    tid: int
    comm: str
    time_ns: int
    probe_id: int
    regs: dict[int, int]
    stack: StackBytes
    truncated: bool
    vars: bytes = b""

    @property
    def regs_pc(self) -> int:
        """The instruction pointer at the hit."""
        return self.regs[16]


def detach(links: list[UprobeMultiLink], ring: RingBuffer | None) -> None:
    """Remove the uprobes first (no new records), then unmap the ring buffer; `links` is
    emptied, so a second call does nothing."""
    for link in links:
        link.close()
    links.clear()
    if ring is not None:
        ring.close()


class StackCapture:
    """The compiled program, its uprobes and its ring buffer; `close()` detaches everything.

    :param on_hit: called on the polling thread for every record (keep it short).
    """

    def __init__(self, probes: list[ProbePoint], pid: int | None, stack_cap: int,
                 on_hit: Callable[[RawHit], None], cflags: Callable[[], tuple[str, ...]],
                 ring_pages: int = _RINGBUF_PAGES, cache_dir: str | None = None,
                 values: ProbeValues | None = None) -> None:
        """:param cflags: include flags for bcc, asked for only when the program must be
        compiled (not cached yet).
        :param values: probe values to read at each hit, into `RawHit.vars`.
        :param ring_pages: ring buffer size in pages (a power of two).
        :param cache_dir: where the compiled program is kept (default: the ubt cache)."""
        self.probes = probes
        self._shifts = {i: p.shift for i, p in enumerate(probes) if p.shift}
        self.stack_cap = -(-stack_cap // _PAGE) * _PAGE
        self.from_cache = False
        self._on_hit = on_hit
        self._need = [0] * len(probes)
        self._want = [self.stack_cap] * len(probes)
        self._links: list[UprobeMultiLink] = []
        self._by_pid: dict[int, list[UprobeMultiLink]] = {}  # links per process, -c children
        self._lost_at_close = 0
        self._ring: RingBuffer | None = None
        self._prog: LoadedProgram | None = None
        defines: tuple[str, ...] = (f"-DSTACK_CAP={self.stack_cap}",)
        source = _SOURCE.read_text()
        self._vars_size = 0
        if values is not None:
            defines += (f"-DVARS_SIZE={values.size}",)
            source += values.source
            self._vars_size = values.size
        self._head_size = _HEAD.size + self._vars_size
        compiled, self.from_cache = get_program(source, defines, cflags, "on_hit", cache_dir)
        # with values the program is sleepable: a string or heap page the target has not
        # touched yet is not mapped, and only bpf_copy_from_user may fault it in
        self._prog = load(compiled, "ubt_ustack", PROG_TYPE_KPROBE, BPF_TRACE_UPROBE_MULTI,
                          {"hits": ring_pages * _PAGE, "want": len(probes)},
                          PROG_SLEEPABLE if values is not None else 0)
        self._lock = threading.Lock()  # add_process may run on another thread
        try:
            order = sorted(range(len(probes)), key=lambda i: (probes[i].path, probes[i].is_return))
            self._groups = [(path, is_return, ids,
                             file_offsets(path, [probes[i].elf_addr + probes[i].shift
                                                 for i in ids]))
                            for (path, is_return), group in
                            groupby(order, lambda i: (probes[i].path, probes[i].is_return))
                            for ids in [list(group)]]
            self._attach(pid)
            self._ring = RingBuffer(self._prog.map_fds["hits"], ring_pages * _PAGE,
                                    self._sample)
        except BaseException:
            self.close()
            raise

    def _attach(self, pid: int | None) -> None:
        assert self._prog is not None
        for path, is_return, ids, offsets in self._groups:
            link = UprobeMultiLink(self._prog.prog_fd, path, offsets, ids, retprobe=is_return,
                                   pid=pid)
            self._links.append(link)
            if pid is not None:
                self._by_pid.setdefault(pid, []).append(link)

    def add_process(self, pid: int) -> None:
        """Place the probes in one more process (a child of a traced command, still stopped
        by its tracer): uprobe_multi links filter by one process each.

        :raises AttachError: the kernel refused (e.g. out of file descriptors).
        """
        with self._lock:
            if self._prog is not None:
                self._attach(pid)

    def remove_process(self, pid: int) -> None:
        """Close the links of a process that has exited (each holds a file descriptor, and the
        kernel would check every hit against it)."""
        with self._lock:
            for link in self._by_pid.pop(pid, []):
                link.close()
                self._links.remove(link)

    def _sample(self, data: memoryview) -> None:
        head = _HEAD.unpack_from(data)  # runs for every record: kept to plain operations
        regs = dict(zip(REG_NUMBERS, reg_values(head)))
        if self._shifts and head[3] in self._shifts:
            regs[16] -= self._shifts[head[3]]  # reported where the probe was asked for
        start = self._head_size
        end = start + min(head[4], len(data) - start)
        stack = StackBytes(regs[7], bytes(data[start:end]))
        self._on_hit(RawHit(head[1], head[2], head[6].split(b"\0", 1)[0].decode(errors="replace"),
                            head[0], head[3], regs, stack, bool(head[5] & 1),
                            bytes(data[_HEAD.size:start])))

    def poll(self, timeout_ms: int) -> int:
        """Drain the ring buffer: consume what is there, else wait up to `timeout_ms` for a
        wake-up (records are mostly submitted without one) and consume; returns how many."""
        return self._ring.poll(timeout_ms) if self._ring is not None else 0

    @property
    def lost(self) -> int:
        """Records dropped because the ring buffer was full (the final count after `close`)."""
        if self._prog is None:
            return self._lost_at_close
        value = map_lookup(self._prog.map_fds["lost"], bytes(4), 8)
        return int.from_bytes(value or bytes(8), "little")

    def learn(self, probe_id: int, used: int, complete: bool, at_cap: bool) -> None:
        """Adapt the copy size of a probe after a walk: `used` stack bytes were needed.

        A complete walk lets the size shrink to what was needed plus a margin; a walk that ran
        out of copied bytes doubles it, up to the cap.
        """
        slot = probe_id
        old = self._want[slot]
        if complete:
            self._need[slot] = max(self._need[slot], used)
            new = min(self.stack_cap, -(-(self._need[slot] + _MARGIN) // _STEP) * _STEP)
        elif at_cap:
            new = min(self.stack_cap, old * 2)
        else:
            return
        if new != old and self._prog is not None:
            self._want[slot] = new
            map_update(self._prog.map_fds["want"], slot.to_bytes(4, "little"),
                       new.to_bytes(4, "little"))

    def close(self) -> None:
        """Detach every uprobe and free the program and its maps (safe to call twice)."""
        with self._lock:
            detach(self._links, self._ring)
            self._ring = None
            if self._prog is not None:
                self._lost_at_close = self.lost
                self._prog.close()
                self._prog = None
