"""Unwinding real captured stacks of the fixture programs, checked against gdb.

Each fixture process is captured with a small ptrace helper (registers + the stack from rsp to
the end of its mapping), then gdb attaches and lists every thread's frame pcs. The unwinder,
fed only the captured bytes, must find the same pcs (gdb's inline and tail-call frames, which
have no machine frame, are left out of the comparison).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from unwind.cfi import compile_table
from unwind.memory import LayeredMemory, ProcMemory, StackBytes
from unwind.regs import RA, RSP, from_user_regs
from unwind.table import UnwindTable
from unwind.unwinder import Method, StopReason, Unwinder, UnwindResult

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "fixtures/build"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="ptrace of a non-child needs root"),
    pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb"),
]

# ---- a minimal ptrace capture, independent of ubt.ptrace -------------------------------------

_USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
              "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
              "gs_base", "ds", "es", "fs", "gs")
_PTRACE_GETREGS, _PTRACE_DETACH, _PTRACE_SEIZE, _PTRACE_INTERRUPT = 12, 17, 0x4206, 0x4207
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


class _UserRegs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in _USER_REGS]


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str


@dataclass(frozen=True)
class Capture:
    pid: int
    threads: dict[int, tuple[dict[int, int], StackBytes]]
    maps: list[Mapping]


def _maps(pid: int) -> list[Mapping]:
    out = []
    for line in open(f"/proc/{pid}/maps"):
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append(Mapping(lo, hi, int(parts[2], 16), parts[5].strip() if len(parts) > 5 else ""))
    return out


def capture(pid: int) -> Capture:
    """Registers and whole stacks of every thread, with the process stopped meanwhile."""
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    threads = {}
    for tid in tids:
        assert _libc.ptrace(_PTRACE_SEIZE, tid, None, None) == 0
        _libc.ptrace(_PTRACE_INTERRUPT, tid, None, None)
        os.waitpid(tid, 0x40000000)
    try:
        maps = _maps(pid)
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for tid in tids:
                raw = _UserRegs()
                _libc.ptrace(_PTRACE_GETREGS, tid, None, ctypes.addressof(raw))
                regs = from_user_regs({n: int(getattr(raw, n)) for n in _USER_REGS})
                sp = regs[RSP]
                end = next(m.end for m in maps if m.start <= sp < m.end)
                mem.seek(sp)
                threads[tid] = (regs, StackBytes(sp, mem.read(end - sp)))
    finally:
        for tid in tids:
            _libc.ptrace(_PTRACE_DETACH, tid, None, None)
    return Capture(pid, threads, maps)


def gdb_pcs(pid: int) -> dict[int, list[int]]:
    """tid → pcs of gdb's machine frames (inline and tail-call frames dropped)."""
    script = (
        "python\n"
        "for t in sorted(gdb.selected_inferior().threads(), key=lambda t: t.ptid[1]):\n"
        "    t.switch()\n"
        "    f, pcs = gdb.newest_frame(), []\n"
        "    while f is not None:\n"
        "        if f.type() not in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME):\n"
        "            pcs.append(f.pc())\n"
        "        f = f.older()\n"
        "    print('PCS', t.ptid[1], ' '.join(map(str, pcs)))\n"
        "end\n")
    out = subprocess.run(["gdb", "-nx", "-p", str(pid), "-batch", "-ex", "set backtrace past-main on",
                          "-ex", "set backtrace past-entry on", "-ex", script],
                         capture_output=True, text=True, timeout=120).stdout
    result = {}
    for m in re.finditer(r"^PCS (\d+) ?([\d ]*)$", out, re.M):
        result[int(m.group(1))] = [int(x) for x in m.group(2).split()]
    assert result, out
    return result


def _load_bias(m: Mapping) -> int:
    """map.start minus the link-time address of the mapped file offset (0 for non-PIE)."""
    with open(m.path, "rb") as f:
        for seg in ELFFile(f).iter_segments("PT_LOAD"):
            if seg["p_offset"] <= m.offset < seg["p_offset"] + max(seg["p_filesz"], 1):
                return m.start - (seg["p_vaddr"] + m.offset - seg["p_offset"])
    return m.start - m.offset


class ModuleLookup:
    """abs pc → (table, bias) from /proc/PID/maps, compiling each file's table once."""

    tables: dict[str, UnwindTable] = {}

    def __init__(self, maps: list[Mapping], without: tuple[str, ...] = ()) -> None:
        self.maps = [m for m in maps if m.path.startswith("/")]
        self.without = without
        self.biases = {m: _load_bias(m) for m in self.maps}

    def __call__(self, pc: int) -> tuple[UnwindTable, int] | None:
        for m in self.maps:
            if m.start <= pc < m.end:
                if m.path.endswith(self.without):
                    return None
                if m.path not in self.tables:
                    self.tables[m.path] = compile_table(m.path)
                return self.tables[m.path], self.biases[m]
        return None


@dataclass(frozen=True)
class Fixture:
    capture: Capture
    expected: dict[int, list[int]]


def _wait_all_blocked(pid: int) -> None:
    """Fixtures print "ready" just before their last blocking call: wait until every thread
    sleeps inside a system call."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tids = os.listdir(f"/proc/{pid}/task")
        states = [open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()[0]
                  for t in tids]
        calls = [open(f"/proc/{pid}/task/{t}/syscall").read().split()[0] for t in tids]
        if all(s == "S" for s in states) and all(c.isdigit() for c in calls):
            return
        time.sleep(0.01)
    raise AssertionError("fixture threads never all blocked")


def _run(program: Path) -> Iterator[Fixture]:
    proc = subprocess.Popen([str(program)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        _wait_all_blocked(proc.pid)
        cap = capture(proc.pid)
        yield Fixture(cap, gdb_pcs(proc.pid))
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def chain() -> Iterator[Fixture]:
    yield from _run(BUILD / "O2-nofp/chain-O2-nofp")


@pytest.fixture(scope="module")
def threads() -> Iterator[Fixture]:
    yield from _run(BUILD / "O2-nofp/threads-O2-nofp")


def _unwind(fx: Fixture, tid: int, memory: StackBytes | None = None,
            without: tuple[str, ...] = ()) -> UnwindResult:
    regs, stack = fx.capture.threads[tid]
    return Unwinder(ModuleLookup(fx.capture.maps, without)).unwind(regs, memory or stack)


def test_chain_matches_gdb(chain: Fixture) -> None:
    (tid,) = chain.capture.threads
    result = _unwind(chain, tid)
    assert [f.pc for f in result.frames] == chain.expected[tid]
    assert result.stop_reason is StopReason.END_OF_STACK
    assert len(result.frames) >= 20  # read, lc_*, fx_leaf, 10 x fx_recurse, ..., main, _start
    assert result.frames[0].method is Method.INITIAL and result.frames[0].is_activation
    assert all(f.method is Method.CFI and not f.is_activation for f in result.frames[1:])
    sps = [f.sp for f in result.frames]
    assert sps == sorted(sps) and all(f.cfa is not None for f in result.frames)


def test_all_threads_match_gdb_including_the_signal_frame(threads: Fixture) -> None:
    for tid in threads.capture.threads:
        result = _unwind(threads, tid)
        assert [f.pc for f in result.frames] == threads.expected[tid], f"thread {tid}"
        assert result.stop_reason is StopReason.END_OF_STACK
    activations = [f for tid in threads.capture.threads for f in _unwind(threads, tid).frames
                   if f.is_activation and f.method is Method.CFI]
    assert len(activations) == 1, "exactly one frame was interrupted by the signal"
    assert activations[0].lookup_pc == activations[0].pc


@pytest.mark.parametrize("program", ["debugframe/chain-debugframe", "nopie/chain-nopie",
                                     "stripped/threads-stripped", "O0/cxx-O0"])
def test_other_builds_match_gdb(program: str) -> None:
    """.debug_frame-only code, a non-PIE executable, stripped and C++ programs."""
    for fx in _run(BUILD / program):
        for tid in fx.capture.threads:
            result = _unwind(fx, tid)
            assert [f.pc for f in result.frames] == fx.expected[tid]
            assert result.stop_reason is StopReason.END_OF_STACK


def test_frame_pointer_fallback_where_no_cfi() -> None:
    """At -O0 every function keeps rbp; with the program's own tables hidden the walk must
    follow the rbp chain through them and still reach the same frames."""
    for fx in _run(BUILD / "O0/chain-O0"):
        (tid,) = fx.capture.threads
        result = _unwind(fx, tid, without=("chain-O0", "libchain.so"))
        assert [f.pc for f in result.frames] == fx.expected[tid]
        assert Method.FP in {f.method for f in result.frames}


def test_truncated_stack_stops_with_memory_fault(chain: Fixture) -> None:
    (tid,) = chain.capture.threads
    regs, stack = chain.capture.threads[tid]
    cut = StackBytes(stack.base, stack.data[:4096])
    result = _unwind(chain, tid, cut)
    assert result.stop_reason is StopReason.MEMORY_FAULT
    expected = chain.expected[tid]
    assert 1 < len(result.frames) < len(expected)
    assert [f.pc for f in result.frames] == expected[:len(result.frames)]


def test_layered_memory_reads_the_live_process(chain: Fixture) -> None:
    (tid,) = chain.capture.threads
    regs, stack = chain.capture.threads[tid]
    cut = StackBytes(stack.base, stack.data[:4096])
    # The process is still blocked in read(): its stack is as captured.
    with ProcMemory(chain.capture.pid) as live:
        result = Unwinder(ModuleLookup(chain.capture.maps)).unwind(
            regs, LayeredMemory(cut, live))
    assert [f.pc for f in result.frames] == chain.expected[tid]


def test_max_depth(chain: Fixture) -> None:
    (tid,) = chain.capture.threads
    regs, stack = chain.capture.threads[tid]
    result = Unwinder(ModuleLookup(chain.capture.maps), max_frames=5).unwind(regs, stack)
    assert len(result.frames) == 5 and result.stop_reason is StopReason.MAX_DEPTH


def test_unknown_pc_without_frame_pointer_is_no_unwind_info(chain: Fixture) -> None:
    (tid,) = chain.capture.threads
    regs, stack = chain.capture.threads[tid]
    result = Unwinder(lambda pc: None).unwind({**regs, 6: 0}, stack)
    assert result.stop_reason is StopReason.NO_UNWIND_INFO
    assert [f.pc for f in result.frames] == [regs[RA]]


@pytest.mark.parametrize("program", ["O2-nofp/chain-O2-nofp", "O2-nofp/threads-O2-nofp",
                                     "O0/chain-O0", "O0/cxx-O0", "debugframe/chain-debugframe"])
def test_sp_walk_equals_the_general_walk(program: str) -> None:
    """The rsp-only walk (unwind.sp_walk) gives the general walk's result exactly, whole stacks
    and stacks cut short (memory faults) or limited in depth; where it cannot, it declines.
    It must also really be used: the O2 chain's stack is walked by it."""
    used = 0
    for fx in _run(BUILD / program):
        lookup = ModuleLookup(fx.capture.maps)
        for tid in fx.capture.threads:
            regs, stack = fx.capture.threads[tid]
            cuts = [stack] + [StackBytes(stack.base, stack.data[:n])
                              for n in (16, 600, 2048, 4096, 8192)]
            for mem in cuts:
                for depth in (1, 3, 7, 256):
                    quick = Unwinder(lookup, max_frames=depth)
                    slow = Unwinder(lookup, max_frames=depth, sp_walk=False)
                    assert quick.unwind(regs, mem) == slow.unwind(regs, mem), (tid, depth)
                    used += quick._try_sp_walk(regs[RA], regs[RSP], mem) is not None
    if program.startswith("O2-nofp/chain"):
        assert used > 0
