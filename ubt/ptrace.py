"""Capture snapshots of every thread of a live process with ptrace.

The process is stopped only for as long as it takes to read each thread's registers and copy its
stack (from the stack pointer to the end of the stack mapping, capped): unwinding and
symbolizing run afterwards on the copies, so a cold symbol index never keeps the target stopped.
PTRACE_SEIZE + PTRACE_INTERRUPT is used rather than PTRACE_ATTACH so no SIGSTOP is queued and a
thread blocked in a system call resumes transparently after detach.
"""
from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from symbolizer.maps import ProcessMaps
from unwind.memory import StackBytes
from unwind.regs import from_user_regs

from .errors import AttachDenied, ProcessGone
from .snapshot import Snapshot

_PTRACE_GETREGS = 12
_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_WALL = 0x40000000

# Field order of struct user_regs_struct (sys/user.h, x86-64).
_USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
              "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
              "gs_base", "ds", "es", "fs", "gs")

#: Most stack bytes copied per thread; deeper stacks come back truncated (and say so).
MAX_STACK_COPY = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


class _UserRegs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in _USER_REGS]


def ptrace_request(request: int, tid: int, addr: int = 0,
                   data: int | ctypes.c_void_p = 0) -> int:
    """One ptrace(2) call; a failure is an OSError with its errno."""
    ctypes.set_errno(0)
    res = int(_libc.ptrace(request, tid, addr, data))
    err = ctypes.get_errno()
    if res == -1 and err:
        raise OSError(err, os.strerror(err))
    return res


def _threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise ProcessGone(pid) from None


def _comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _thread_gone(pid: int, tid: int) -> bool:
    """Whether thread `tid` of `pid` has exited or is exiting (ptrace refuses those with EPERM,
    as it refuses a tracer that is not allowed); an exiting thread may still look alive for a
    moment, so it is looked at a few times over ~3 ms."""
    for _ in range(3):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except (OSError, IndexError):
            return True
        time.sleep(0.001)
    return False


def _state(pid: int) -> str:
    """The process state letter from /proc/PID/stat ('Z' for a zombie), '' if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


@contextmanager
def _seized(pid: int) -> Iterator[list[int]]:
    """Seize and interrupt every thread (re-scanning for threads created meanwhile); detach all."""
    seized: list[int] = []
    try:
        while True:
            new = [t for t in _threads(pid) if t not in seized]
            if not new:
                break
            for tid in new:
                try:
                    ptrace_request(_PTRACE_SEIZE, tid)
                except OSError as e:
                    if e.errno == errno.ESRCH:
                        continue  # the thread exited between listing and seizing
                    if e.errno == errno.EPERM and tid != pid and _thread_gone(pid, tid):
                        continue  # refused because it is exiting: the process lives on
                    if e.errno == errno.EPERM and _state(pid) == "Z":
                        raise ProcessGone(pid, "has exited (zombie)") from None
                    if e.errno == errno.EPERM:
                        raise AttachDenied(pid, "operation not permitted (not root, or "
                                                "already traced)") from None
                    raise AttachDenied(pid, e.strerror or str(e)) from None
                seized.append(tid)
                try:
                    ptrace_request(_PTRACE_INTERRUPT, tid)
                    os.waitpid(tid, _WALL)
                except (OSError, ChildProcessError) as e:
                    if tid == pid or getattr(e, "errno", None) not in (errno.ESRCH,
                                                                       errno.ECHILD):
                        raise
                    # the thread exited right after being seized; its snapshot is skipped
        if not seized:
            raise ProcessGone(pid, "has no threads left")
        yield seized
    finally:
        for tid in seized:
            try:
                ptrace_request(_PTRACE_DETACH, tid)
            except OSError:
                pass  # the thread is gone; nothing to restore


def _registers(tid: int) -> dict[str, int]:
    regs = _UserRegs()
    ptrace_request(_PTRACE_GETREGS, tid, 0, ctypes.cast(ctypes.pointer(regs), ctypes.c_void_p))
    return {name: int(getattr(regs, name)) for name in _USER_REGS}


def _copy_stack(mem_fd: int, maps: ProcessMaps, sp: int) -> StackBytes:
    entry = maps.find(sp)
    if entry is None:
        return StackBytes(sp, b"")
    end = min(entry.end, sp + MAX_STACK_COPY)
    try:
        return StackBytes(sp, os.pread(mem_fd, end - sp, sp))
    except OSError:
        return StackBytes(sp, b"")


def capture_process(pid: int) -> list[Snapshot]:
    """Stop every thread of `pid` briefly and return one snapshot per thread.

    :raises ProcessGone: no such process, or it exited while being read.
    :raises AttachDenied: ptrace refused.
    """
    if not os.path.isdir(f"/proc/{pid}"):
        raise ProcessGone(pid)
    snapshots: list[Snapshot] = []
    try:
        with _seized(pid) as tids:
            maps_text = open(f"/proc/{pid}/maps").read()
            maps = ProcessMaps.from_text(maps_text)
            mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
            try:
                for tid in tids:
                    try:
                        user = _registers(tid)
                    except ProcessLookupError:
                        if tid == pid:
                            raise
                        continue  # a thread that exited before it stopped: not a stack

                    snapshots.append(Snapshot(
                        pid=pid, tid=tid, comm=_comm(pid, tid), regs=from_user_regs(user),
                        stack=_copy_stack(mem_fd, maps, user["rsp"]), maps_text=maps_text,
                        time_ns=time.monotonic_ns()))
            finally:
                os.close(mem_fd)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid, "exited while being read") from None
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise ProcessGone(pid, "exited while being read") from None
        raise
    return snapshots
