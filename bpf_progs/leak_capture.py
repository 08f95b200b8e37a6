"""Load `leak.c`, attach it to allocator entries and returns, and read what it keeps.

The kernel side holds the state: `allocs` (address → size, time, stack id), `stacks` (id →
allocator index, map generation and pcs), `rules` (return address → compact CFI rule and the
map generation it holds in), `gens` (the map generation: ld.so's `_dl_debug_state` and entry
point, probed with `maps_cookie`, move it on). This class is the user side's window on it: snapshots of
cold paths arrive through the ring buffer (`poll`), rules and stacks learnt from them are
written back (`add_rules`, `add_stack`), and a report reads every live allocation in batches
(`allocations`) and the pcs of the stacks it shows (`stack`).

A probe's cookie tells the one program what the probe is (see the COOKIE layout in leak.c):
`alloc_cookie` and `free_cookie` build it.
"""
from __future__ import annotations

import errno
import struct
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

from unwind.memory import StackBytes

from .bpfsys import (PROG_TYPE_KPROBE, BpfError, map_lookup, map_lookup_batch, map_update,
                     possible_cpus)
from .capture import PT_REGS, REG_NUMBERS, detach, reg_values
from .objcache import LoadedProgram, get_program, load
from .ringbuf import RingBuffer
from .uprobe_link import BPF_TRACE_UPROBE_MULTI, UprobeMultiLink, file_offsets

_SOURCE = Path(__file__).with_name("leak.c")
_PAGE = 4096
#: Most frames the kernel walk keeps (MAX_FRAMES in leak.c).
MAX_FRAMES = 64
#: Ring buffer for snapshots (32 MB): only cold paths send one, ~4-8 KB each, but a tight
#: loop on a new path sends one per call until its first snapshot is unwound here (the first
#: unwind reads the DWARF: a few 100 ms): 4000 such calls lost ~1000 snapshots with 8 MB.
#: Peak RSS of `ubt leak` on that burst: ~97 MB (48 MB with 8 MB).
_RING_BYTES = 32 << 20
_RETURN = 1 << 8
_FREE = 1 << 21
_FD = 1 << 22
_PAGES = 1 << 23
_REGION = 1 << 24
_MREMAP = 1 << 25
_FCNTL = 1 << 26
_RANGE = 1 << 27
_MAPS = 1 << 28
_NO_ARG = 7
#: Stack flag: the kernel walk stopped at MAX_FRAMES.
STACK_DEEP = 1
#: Stack ids with this bit are pending: the rest is the sequence number of a snapshot.
PENDING = 1 << 63
COUNTERS = ("snapshots", "lost", "allocs_full", "stacks_full", "deep", "warm", "nested",
            "regions_lost", "range_cut")
# struct region_event: time_ns, seq (0), pid, tid, kind, pad, addr, len, arg, stack_id
_REGION_EV = struct.Struct("<QQIII4xQQQQ")
# struct snap_head: time_ns, seq, pid, tid, alloc, stack_len, flags, gen, struct pt_regs; gen
# is read apart (`_GEN`), so that the registers are field 7 of the unpacked head (`reg_values`)
_HEAD = struct.Struct(f"<QQIIIII4x{len(PT_REGS)}Q")
_GEN = struct.Struct("<QQIIIII")
_RULE = struct.Struct("<ihBxI")
_STACK_HEAD = struct.Struct("<IHHI4x")
#: map_update's errors when a hash map has no room (E2BIG: full; ENOMEM: no memory for a
#: BPF_F_NO_PREALLOC element).
_FULL = (errno.E2BIG, errno.ENOMEM)


def _arg(n: int | None) -> int:
    return _NO_ARG if n is None else n


def alloc_cookie(index: int, size: int | None = None, size2: int | None = None,
                 old: int | None = None, out: int | None = None, *, fd: bool = False,
                 pages: bool = False, region: bool = False, mremap: bool = False,
                 fcntl: bool = False) -> int:
    """The entry probe's cookie of allocator `index` (0-based argument numbers: the size, its
    multiplier, realloc's old pointer, an out pointer that receives the address); the return
    probe's cookie is this with the return bit. `region`: mmap (its calls become
    `RegionEvent`s); with `mremap` too: mremap(old, old_len, new_len, flags). `fcntl`: an
    fd allocator only when its command is F_DUPFD or F_DUPFD_CLOEXEC."""
    if not 0 <= index < 256:
        raise ValueError("at most 256 allocator functions")
    return (index | _arg(size) << 9 | _arg(size2) << 12 | _arg(old) << 15 | _arg(out) << 18
            | (_FD if fd else 0) | (_PAGES if pages else 0) | (_REGION if region else 0)
            | (_MREMAP if mremap else 0) | (_FCNTL if fcntl else 0))


def free_cookie(addr: int, *, fd: bool = False, region: bool = False,
                fd_range: bool = False) -> int:
    """The cookie of a function that frees its argument number `addr` (0-based); `region`:
    munmap(addr, len), sent as a `RegionEvent`; `fd_range`: close_range(first, last, flags)."""
    return (_FREE | addr << 9 | (_FD if fd else 0) | (_REGION if region else 0)
            | (_RANGE if fd_range else 0))


def maps_cookie(step: int) -> int:
    """The cookie of a function whose every call moves the map generation `step` on (ld.so's
    `_dl_debug_state`: 1; its entry point, after an exec: 3)."""
    return _MAPS | step


@dataclass(frozen=True, slots=True)
class LeakProbe:
    """Where to attach: `elf_addr` in `path`; allocators get a return probe too."""

    path: str
    elf_addr: int
    cookie: int

    @property
    def has_return(self) -> bool:
        """An allocator: its return is probed too (not a free, nor the map generation's)."""
        return not self.cookie & (_FREE | _MAPS)


class LeakSnapshot(NamedTuple):
    """Registers (at the allocator's return: the caller's) and stack bytes of one cold path,
    in map generation `gen`."""

    seq: int
    pid: int
    tid: int
    alloc: int
    time_ns: int
    regs: dict[int, int]
    stack: StackBytes
    truncated: bool
    gen: int


class RegionEvent(NamedTuple):
    """An mmap (kind 1: `addr` returned, `len` bytes, `stack_id`), munmap (2: `addr`, `len`),
    mremap entry (3: old `addr`, old `len`, flags `arg`) or return (4: new `addr`, ~0 when it
    failed, new `len`), in the order the target made them."""

    time_ns: int
    pid: int
    tid: int
    kind: int
    addr: int
    len: int
    arg: int
    stack_id: int


class LiveAllocations(NamedTuple):
    """Every tracked allocation at one moment, as columns."""

    addrs: array[int]
    sizes: array[int]
    times: array[int]
    stack_ids: array[int]


class LeakCapture:
    """The loaded program, its uprobes, its maps; `close()` detaches everything."""

    def __init__(self, probes: list[LeakProbe], pid: int,
                 on_snapshot: Callable[[LeakSnapshot], None],
                 cflags: Callable[[], tuple[str, ...]], max_allocs: int,
                 size_bounds: tuple[int, int] = (0, 0), sample_every: int = 1,
                 cache_dir: str | None = None,
                 on_region: Callable[[RegionEvent], None] | None = None) -> None:
        """:param size_bounds: (min, max) bytes tracked; max 0: no bound.
        :param on_region: gets mmap/munmap/mremap calls (dropped without it).
        :param sample_every: track one allocation in this many (at random)."""
        self._on_snapshot = on_snapshot
        self._on_region = on_region
        self._links: list[UprobeMultiLink] = []
        self._ring: RingBuffer | None = None
        compiled, self.from_cache = get_program(_SOURCE.read_text(), (), cflags, "on_event",
                                                cache_dir)
        self._prog: LoadedProgram | None = load(
            compiled, "ubt_leak", PROG_TYPE_KPROBE, BPF_TRACE_UPROBE_MULTI,
            {"allocs": max_allocs, "snaps": _RING_BYTES})
        self._fds = self._prog.map_fds
        self._ncpus = possible_cpus()
        self._final: dict[str, int] | None = None
        self.rules_full = 0    # rules not written here: the rules map was full
        self.stacks_full = 0   # stacks walked here not kept: the stacks map was full
        try:
            for i, value in enumerate((*size_bounds, sample_every)):
                map_update(self._fds["config"], i.to_bytes(4, "little"),
                           value.to_bytes(8, "little"))
            self._attach(probes, pid)
            self._ring = RingBuffer(self._fds["snaps"], _RING_BYTES, self._sample)
        except BaseException:
            self.close()
            raise

    def _attach(self, probes: list[LeakProbe], pid: int) -> None:
        """Return probes first: an entry probe attached before its return probe would leave a
        thread that entered the allocator in between with an `inflight` entry never cleared
        (its later calls from a deeper stack would all count as nested, untracked)."""
        assert self._prog is not None
        entries = sorted(probes, key=lambda p: p.path)
        groups = []
        for path, group in groupby(entries, lambda p: p.path):
            mine = list(group)
            groups.append((path, mine, file_offsets(path, [p.elf_addr for p in mine])))
        for path, mine, offsets in groups:
            allocs = [(o, p) for o, p in zip(offsets, mine) if p.has_return]
            if allocs:
                self._links.append(UprobeMultiLink(
                    self._prog.prog_fd, path, [o for o, _ in allocs],
                    [p.cookie | _RETURN for _, p in allocs], retprobe=True, pid=pid))
        for path, mine, offsets in groups:
            self._links.append(UprobeMultiLink(self._prog.prog_fd, path, offsets,
                                               [p.cookie for p in mine], pid=pid))

    def _sample(self, data: memoryview) -> None:
        if len(data) == _REGION_EV.size and int.from_bytes(data[8:16], "little") == 0:
            if self._on_region is not None:
                t, _, pid, tid, kind, addr, length, arg, sid = _REGION_EV.unpack_from(data)
                self._on_region(RegionEvent(t, pid, tid, kind, addr, length, arg, sid))
            return
        head = _HEAD.unpack_from(data)
        regs = dict(zip(REG_NUMBERS, reg_values(head)))
        end = _HEAD.size + min(head[5], len(data) - _HEAD.size)
        stack = StackBytes(regs[7], bytes(data[_HEAD.size:end]))
        self._on_snapshot(LeakSnapshot(head[1], head[2], head[3], head[4], head[0], regs,
                                       stack, bool(head[6] & 1),
                                       int.from_bytes(data[_GEN.size:_GEN.size + 4], "little")))

    def poll(self, timeout_ms: int) -> int:
        """Hand every waiting snapshot to `on_snapshot`; wait up to `timeout_ms` for one."""
        return self._ring.poll(timeout_ms) if self._ring is not None else 0

    def last_seq(self) -> int:
        """The sequence number of the newest snapshot the kernel has sent (or lost)."""
        return self._word("seqs")

    def generation(self) -> int:
        """The map generation now (as snapshots and stacks carry it: 32 bits)."""
        return self._word("gens") & 0xFFFFFFFF

    def _word(self, name: str) -> int:
        if self._prog is None:
            return 0
        raw = map_lookup(self._fds[name], bytes(4), 8)
        return int.from_bytes(raw or bytes(8), "little")

    def counters(self) -> dict[str, int]:
        """The kernel's counts (summed over CPUs), by the names of `COUNTERS`."""
        if self._prog is None:
            return dict(self._final or {})
        out = {}
        for i, name in enumerate(COUNTERS):
            raw = map_lookup(self._fds["counters"], i.to_bytes(4, "little"), 8 * self._ncpus)
            out[name] = sum(array("Q", raw or bytes(8 * self._ncpus)))
        out["stacks_full"] += self.stacks_full
        out["rules_full"] = self.rules_full
        return out

    def add_rules(self, rules: Iterable[tuple[int, int, int, int]], gen: int) -> None:
        """Teach the kernel walk of map generation `gen`: (return address, CFA offset,
        saved-rbp offset, flags); a rule the full map cannot take is counted (`rules_full`):
        its paths keep sending snapshots."""
        for pc, cfa_off, rbp_off, flags in rules:
            if not self._update("rules", pc.to_bytes(8, "little"),
                                _RULE.pack(cfa_off, rbp_off, flags, gen)):
                self.rules_full += 1

    def add_stack(self, stack_id: int, alloc: int, pcs: tuple[int, ...], flags: int,
                  gen: int) -> None:
        """Keep a stack walked in user space, as the kernel keeps its own (counted in
        `stacks_full` when the map is full)."""
        value = _STACK_HEAD.pack(alloc, len(pcs), flags, gen) + struct.pack(
            f"<{MAX_FRAMES}Q", *pcs[:MAX_FRAMES], *[0] * (MAX_FRAMES - len(pcs)))
        if not self._update("stacks", stack_id.to_bytes(8, "little"), value):
            self.stacks_full += 1

    def _update(self, name: str, key: bytes, value: bytes) -> bool:
        """Set one element; False when the map is full (the run goes on: counted by the
        caller, and printed at the end)."""
        try:
            map_update(self._fds[name], key, value)
        except BpfError as e:
            if e.errno not in _FULL:
                raise
            return False
        return True

    def stack(self, stack_id: int) -> tuple[int, tuple[int, ...], int, int] | None:
        """(allocator index, pcs, flags, map generation) of a kept stack, or None when there
        is none."""
        raw = map_lookup(self._fds["stacks"], stack_id.to_bytes(8, "little"),
                         _STACK_HEAD.size + 8 * MAX_FRAMES)
        if raw is None:
            return None
        alloc, depth, flags, gen = _STACK_HEAD.unpack_from(raw)
        pcs = struct.unpack_from(f"<{min(depth, MAX_FRAMES)}Q", raw, _STACK_HEAD.size)
        return alloc, pcs, flags, gen

    def allocations(self) -> LiveAllocations:
        """Every tracked allocation now (batched lookups: ~65k elements per system call)."""
        keys, values, _ = map_lookup_batch(self._fds["allocs"], 8, 24)
        addrs, cols = array("Q"), array("Q")
        addrs.frombytes(keys)
        cols.frombytes(values)
        return LiveAllocations(addrs, cols[0::3], cols[1::3], cols[2::3])

    def close(self) -> None:
        """Detach every uprobe and free the program and its maps (safe to call twice)."""
        detach(self._links, self._ring)
        self._ring = None
        if self._prog is not None:
            self._final = self.counters()
            self._prog.close()
            self._prog = None
