"""`ubt leak`'s memory regions: mmap'd ranges kept exactly, as the kernel keeps them.

An munmap may cover part of a mapping (trimming it or splitting it in two) or several at once,
and mremap moves, grows or shrinks one: an address-keyed map cannot follow that, and the BPF
program cannot search ranges, so it sends these calls as events (`RegionEvent`, in the order the
target made them) and `Regions` applies them, per process:

- mmap(len) at A: [A, A + len rounded up to pages) with its time and stack id; whatever tracked
  range it overlaps (MAP_FIXED replaces mappings) is cut away first;
- munmap(A, len): every tracked range overlapping [A, A + pages(len)) is removed, trimmed or
  split (the pieces keep their stack and time); ignored when the kernel refuses the call (A not
  page-aligned, len 0);
- mremap(old, old_len, new_len, flags) at entry: the pieces in [old, old + pages(old_len)) are
  taken out (old_len 0: the piece at old is copied); at return: put back when it failed, else
  placed at the new address by their offset, clipped to pages(new_len), a growth going to the
  piece that held the old range's last page (MREMAP_DONTUNMAP: the old ones are put back too).
"""
from __future__ import annotations

from array import array
from bisect import bisect_right, insort
from typing import NamedTuple

from bpf_progs.leak_capture import LiveAllocations, RegionEvent

PAGE = 4096
MMAP, MUNMAP, MREMAP_BEGIN, MREMAP_END = 1, 2, 3, 4
_FAILED = (1 << 64) - 4096   # a return value at or past this is -errno
_MREMAP_DONTUNMAP = 4


def pages(n: int) -> int:
    """`n` bytes rounded up to whole pages."""
    return (n + PAGE - 1) & ~(PAGE - 1)


class Piece(NamedTuple):
    """A tracked range [start, end) of one mmap: its stack and time."""

    start: int
    end: int
    time_ns: int
    stack_id: int


class _Space:
    """The tracked ranges of one process (never overlapping), by start."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.pieces: dict[int, Piece] = {}

    def add(self, p: Piece) -> None:
        if p.end > p.start:
            insort(self.starts, p.start)
            self.pieces[p.start] = p

    def cut(self, start: int, end: int) -> list[Piece]:
        """Take [start, end) out; returns the parts of pieces that were in it."""
        i = max(bisect_right(self.starts, start) - 1, 0)
        taken = []
        while i < len(self.starts) and self.starts[i] < end:
            p = self.pieces[self.starts[i]]
            if p.end <= start:
                i += 1
                continue
            del self.starts[i]
            del self.pieces[p.start]
            taken.append(p._replace(start=max(p.start, start), end=min(p.end, end)))
            if p.start < start:
                self.add(p._replace(end=start))
                i += 1
            if p.end > end:
                self.add(p._replace(start=end))
                break
        return taken


class Regions:
    """Every process's tracked ranges, and mremaps in progress (by thread)."""

    def __init__(self) -> None:
        self.spaces: dict[int, _Space] = {}
        self.moving: dict[int, tuple[int, int, int, list[Piece]]] = {}  # tid → old, len, flags

    def apply(self, e: RegionEvent) -> None:
        space = self.spaces.setdefault(e.pid, _Space())
        if e.kind == MMAP:
            if e.addr % PAGE == 0 and e.addr < _FAILED:
                space.cut(e.addr, e.addr + pages(e.len))
                space.add(Piece(e.addr, e.addr + pages(e.len), e.time_ns, e.stack_id))
        elif e.kind == MUNMAP:
            if e.addr % PAGE == 0 and e.len:
                space.cut(e.addr, e.addr + pages(e.len))
        elif e.kind == MREMAP_BEGIN:
            if e.addr % PAGE:
                self.moving[e.tid] = (e.addr, 0, e.arg, [])
            elif e.len == 0:  # a copy of the mapping at addr (shared mappings only)
                found = [p for p in space.cut(e.addr, e.addr + PAGE)]
                for p in found:
                    space.add(p)
                self.moving[e.tid] = (e.addr, 0, e.arg | _MREMAP_DONTUNMAP, found)
            else:
                old_len = pages(e.len)
                self.moving[e.tid] = (e.addr, old_len, e.arg, space.cut(e.addr, e.addr + old_len))
        elif e.kind == MREMAP_END:
            old, old_len, flags, taken = self.moving.pop(e.tid, (0, 0, 0, []))
            if e.addr >= _FAILED or flags & _MREMAP_DONTUNMAP:
                for p in taken:
                    space.add(p)
            if e.addr >= _FAILED or not taken:
                return
            new_len = pages(e.len)
            space.cut(e.addr, e.addr + new_len)
            last = taken[-1]
            for p in taken:
                start, end = p.start - old + e.addr, p.end - old + e.addr
                if p is last and p.end == old + old_len or old_len == 0:
                    end = e.addr + new_len   # grows with the call
                space.add(p._replace(start=start, end=min(end, e.addr + new_len)))

    def live(self) -> LiveAllocations:
        """Every tracked range as an allocation (its start, its bytes)."""
        addrs, sizes, times, ids = array("Q"), array("Q"), array("Q"), array("Q")
        for space in self.spaces.values():
            for p in space.pieces.values():
                addrs.append(p.start)
                sizes.append(p.end - p.start)
                times.append(p.time_ns)
                ids.append(p.stack_id)
        return LiveAllocations(addrs, sizes, times, ids)


def merged(a: LiveAllocations, b: LiveAllocations) -> LiveAllocations:
    """The allocations of both."""
    return LiveAllocations(a.addrs + b.addrs, a.sizes + b.sizes, a.times + b.times,
                           a.stack_ids + b.stack_ids)
