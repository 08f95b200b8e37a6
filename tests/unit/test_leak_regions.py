"""ubt.leak_regions: mmap'd ranges after munmap/mremap events, as the kernel keeps them."""
from __future__ import annotations

from bpf_progs.leak_capture import RegionEvent
from ubt.leak_regions import MMAP, MREMAP_BEGIN, MREMAP_END, MUNMAP, PAGE, Regions

A = 0x7F0000000000
FAILED = (1 << 64) - 1


def ev(kind: int, addr: int, length: int, arg: int = 0, sid: int = 0, tid: int = 1) -> RegionEvent:
    return RegionEvent(0, 1, tid, kind, addr, length, arg, sid)


def state(r: Regions) -> list[tuple[int, int, int]]:
    live = r.live()
    return sorted(zip(live.addrs, live.sizes, live.stack_ids))


def test_munmap_trims_splits_and_spans() -> None:
    r = Regions()
    r.apply(ev(MMAP, A, 4 * PAGE - 100, sid=3))        # rounded up to 4 pages
    r.apply(ev(MMAP, A + 4 * PAGE, PAGE, sid=5))
    r.apply(ev(MUNMAP, A + PAGE, PAGE + 1))            # pages 1-2: a split
    assert state(r) == [(A, PAGE, 3), (A + 3 * PAGE, PAGE, 3), (A + 4 * PAGE, PAGE, 5)]
    r.apply(ev(MUNMAP, A + 3 * PAGE, 2 * PAGE))        # one piece and its neighbour
    assert state(r) == [(A, PAGE, 3)]
    r.apply(ev(MUNMAP, A + 1, PAGE))                   # refused by the kernel: not aligned
    assert state(r) == [(A, PAGE, 3)]


def test_mmap_fixed_replaces() -> None:
    r = Regions()
    r.apply(ev(MMAP, A, 4 * PAGE, sid=3))
    r.apply(ev(MMAP, A + PAGE, PAGE, sid=5))
    assert state(r) == [(A, PAGE, 3), (A + PAGE, PAGE, 5), (A + 2 * PAGE, 2 * PAGE, 3)]


def test_mremap_move_grow_shrink_fail() -> None:
    r = Regions()
    r.apply(ev(MMAP, A, 2 * PAGE, sid=3))
    r.apply(ev(MREMAP_BEGIN, A, 2 * PAGE))
    r.apply(ev(MREMAP_END, A + 8 * PAGE, 5 * PAGE))    # moved, grown
    assert state(r) == [(A + 8 * PAGE, 5 * PAGE, 3)]
    r.apply(ev(MREMAP_BEGIN, A + 8 * PAGE, 5 * PAGE))
    r.apply(ev(MREMAP_END, A + 8 * PAGE, PAGE))        # shrunk in place
    assert state(r) == [(A + 8 * PAGE, PAGE, 3)]
    r.apply(ev(MREMAP_BEGIN, A + 8 * PAGE, PAGE))
    r.apply(ev(MREMAP_END, FAILED, 9 * PAGE))          # failed: unchanged
    assert state(r) == [(A + 8 * PAGE, PAGE, 3)]
    r.apply(ev(MREMAP_BEGIN, A + 8 * PAGE, PAGE, arg=4))   # MREMAP_DONTUNMAP: both stay
    r.apply(ev(MREMAP_END, A, PAGE))
    assert state(r) == [(A, PAGE, 3), (A + 8 * PAGE, PAGE, 3)]
