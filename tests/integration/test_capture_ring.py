"""The BPF capture layer on its own, on real uprobes: the cached program and our ring-buffer reader.

`StackCapture` compiles ustack.c with bcc once and loads the cached bytecode afterwards; records
are read straight from the ring buffer's shared memory. These tests pin what the process tests
cannot see: the second load comes from the cache and behaves the same, and a ring small enough to
wrap around many times and to overflow hands over intact records and counts every one it dropped.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bpf_progs import capture as capture_module
from bpf_progs.capture import ProbePoint, RawHit, StackCapture
from bpf_progs.objcache import get_program
from bpf_progs.uprobe_link import symbol_address
from ubt.bcc_env import kernel_cflags

CALLS = 1000  # hit_target calls of the `hits` fixture


def trace_hits_program(prog: str, cache_dir: str, ring_pages: int,
                       watch: list[int] | None = None) -> tuple[list[RawHit], int, bool]:
    """Run the `hits` fixture under a capture at hit_target; (hits, lost, came from cache).
    With `watch`, a second process reads the ring's consumer position all along, as the kernel
    does at each reservation, and `watch` gets [reads, reads that went backwards]."""
    addr = symbol_address(prog, "hit_target")
    got: list[RawHit] = []
    capture = StackCapture([ProbePoint(prog, addr, False, "hit_target")], None, 32 * 1024,
                           got.append, kernel_cflags, ring_pages=ring_pages,
                           cache_dir=cache_dir)
    watcher = None
    if watch is not None:
        assert capture._prog is not None
        watcher = start_position_watcher(capture._prog.map_fds["hits"])
    try:
        child = subprocess.Popen([prog], stdout=subprocess.DEVNULL)
        while child.poll() is None:
            capture.poll(10)
        deadline = time.monotonic() + 2
        while capture.poll(50) or time.monotonic() < deadline and len(got) + capture.lost < CALLS:
            pass
    finally:
        if watcher is not None and watch is not None:
            watch.extend(stop_position_watcher(*watcher))
        capture.close()
    return got, capture.lost, capture.from_cache


def start_position_watcher(ring_fd: int) -> tuple[int, int, int]:
    """Fork a process that maps the ring's consumer page and reads the position in a loop until
    its stop pipe closes; returns (pid, stop pipe, result pipe). It counts reads, and reads lower
    than the one before: the position only grows, so a lower value is a store seen half done."""
    stop_r, stop_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        os.close(stop_w)
        os.close(out_r)
        view = memoryview(mmap.mmap(ring_fd, mmap.PAGESIZE, mmap.MAP_SHARED,
                                    mmap.PROT_READ)).cast("Q")
        os.set_blocking(stop_r, False)
        reads = backwards = last = 0
        while True:
            for _ in range(10000):
                now = view[0]
                backwards += now < last
                last = now
            reads += 10000
            try:
                if os.read(stop_r, 1) == b"":
                    break
            except BlockingIOError:
                pass
        os.write(out_w, f"{reads} {backwards}".encode())
        os._exit(0)
    os.close(stop_r)
    os.close(out_w)
    return pid, stop_w, out_r


def stop_position_watcher(pid: int, stop_w: int, out_r: int) -> list[int]:
    """End the watcher; [reads, reads that went backwards]."""
    os.close(stop_w)
    os.waitpid(pid, 0)
    with os.fdopen(out_r) as out:
        return [int(x) for x in out.read().split()]


def assert_intact(hits: list[RawHit], prog: str) -> None:
    """Every record is a whole hit at hit_target: its pc is the probe's, its stack starts at sp."""
    addr = symbol_address(prog, "hit_target")
    for hit in hits:
        assert hit.probe_id == 0 and hit.comm.startswith("hits")
        assert hit.regs_pc & 0xFFF == addr & 0xFFF, f"pc {hit.regs_pc:#x} is not hit_target"
        assert hit.stack.base == hit.regs[7] and len(hit.stack.data) >= 8
        assert int.from_bytes(hit.stack.data[:8], "little") != 0  # a return address at sp


def test_cached_program_loads_and_captures(fixture_build: Any, needs_root: None,
                                           tmp_path: Any) -> None:
    """First capture compiles (not from cache), the second loads the stored bytecode; both see
    all 1000 hits with a ring large enough, none lost."""
    prog = str(fixture_build.program_path("hits", "O2-nofp"))
    first, lost1, cached1 = trace_hits_program(prog, str(tmp_path), 8192)
    second, lost2, cached2 = trace_hits_program(prog, str(tmp_path), 8192)
    assert (cached1, cached2) == (False, True)
    assert (len(first), lost1) == (CALLS, 0) and (len(second), lost2) == (CALLS, 0)
    assert_intact(first + second, prog)


@pytest.mark.parametrize("ring_pages", [16, 64])
def test_small_ring_wraps_and_counts_drops(ring_pages: int, fixture_build: Any,
                                           needs_root: None, tmp_path: Any) -> None:
    """A 64 KB / 256 KB ring (the first hit's record is 36 KB, later ones their stack's size
    once its end is known) overflows in a burst of 1000 hits and wraps around: what arrives is
    intact, and received + lost is exactly the number of calls."""
    prog = str(fixture_build.program_path("hits", "O2-nofp"))
    hits, lost, _ = trace_hits_program(prog, str(tmp_path), ring_pages)
    assert len(hits) + lost == CALLS, f"{len(hits)} received + {lost} lost != {CALLS}"
    assert len(hits) > 0
    if ring_pages == 16:  # 7 records: 1000 in a few ms are more than Python drains
        assert lost > 0
    # each record takes its stack bytes and a 216-byte head (at least) of ring
    passed = sum(len(h.stack.data) + 216 for h in hits)
    assert passed > ring_pages * 4096, "the ring never wrapped around: test too weak"
    assert_intact(hits, prog)


def test_cached_program_others_may_write_is_not_loaded(needs_root: None, tmp_path: Any) -> None:
    """A cached program runs in the kernel: one that another user could have written (group-
    or world-writable) is compiled again, not loaded; the rewritten file is private again."""
    source = (Path(capture_module.__file__).with_name("ustack.c")).read_text()
    defines = ("-DSTACK_CAP=32768",)
    assert get_program(source, defines, kernel_cflags, "on_hit", str(tmp_path))[1] is False
    assert get_program(source, defines, kernel_cflags, "on_hit", str(tmp_path))[1] is True
    (cached,) = (tmp_path / "bpf").glob("*.json")
    cached.chmod(0o666)
    assert get_program(source, defines, kernel_cflags, "on_hit", str(tmp_path))[1] is False
    assert cached.stat().st_mode & 0o777 == 0o600
    assert get_program(source, defines, kernel_cflags, "on_hit", str(tmp_path))[1] is True


def test_consumer_position_is_never_seen_going_back(fixture_build: Any, needs_root: None,
                                                     tmp_path: Any) -> None:
    """The kernel reads the consumer position at every reservation and takes the ring for full
    when it is far behind the producer's. Another process reading it all through a run must never
    see it lower than before (struct.pack_into zero-fills before it writes: a reservation in that
    window dropped a hit in ~50,000, and 60 in a row when the consumer was descheduled there)."""
    prog = str(fixture_build.program_path("hits", "O2-nofp"))
    watch: list[int] = []
    hits, lost, _ = trace_hits_program(prog, str(tmp_path), 8192, watch)
    reads, backwards = watch
    assert (len(hits), lost) == (CALLS, 0)
    assert reads > 100000, "the watcher barely ran: test too weak"
    assert backwards == 0, f"{backwards} of {reads} reads saw the position go back"
