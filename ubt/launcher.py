"""`ubt process -c CMD`: run a command traced from its first instruction, maps kept past exit.

The command is forked but held before `exec` until the probes are live, so even a program that
runs for a millisecond is traced whole. Its pid is known before `exec`, so the uprobes can be
limited to it from the start. A dedicated thread is its ptrace tracer: the child stops at each
`exec` and when it exits, while its memory map still exists; the thread reads `/proc/PID/maps`
into the `MapsTracker` then and lets it go, so hits of a process that is gone by the time they
are symbolized still resolve. Processes the command forks (a pipeline's members, a script's
commands) are traced the same way: ptrace attaches them at the fork, stopped, and
`on_new_process` (the capture's uprobes for that pid) runs before they are let go. Signals pass
through untouched.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable

from .errors import UbtError
from .maps_tracker import MapsTracker
from .ptrace import ptrace_request

_PTRACE_CONT = 7
_PTRACE_SEIZE = 0x4206
_PTRACE_LISTEN = 0x4208
_PTRACE_GETEVENTMSG = 0x4201
_PTRACE_O_TRACEFORK = 0x02
_PTRACE_O_TRACEVFORK = 0x04
_PTRACE_O_TRACEEXEC = 0x10
_PTRACE_O_TRACEEXIT = 0x40
_PTRACE_EVENT_FORK = 1
_PTRACE_EVENT_VFORK = 2
_PTRACE_EVENT_EXEC = 4
_PTRACE_EVENT_EXIT = 6
_PTRACE_EVENT_STOP = 128
_WALL = 0x40000000
_OPTIONS = _PTRACE_O_TRACEEXIT | _PTRACE_O_TRACEEXEC | _PTRACE_O_TRACEFORK | _PTRACE_O_TRACEVFORK


class Launcher:
    """Forks `command` held before exec; `release()` lets it run; `exit_status` when done."""

    def __init__(self, command: str, tracker: MapsTracker) -> None:
        self._tracker = tracker
        #: called on the tracer thread with each process the command forks, before it runs
        self.on_new_process: Callable[[int], None] = lambda pid: None
        self._live: set[int] = set()  # traced processes not reaped yet (the command's tree)
        self._started: set[int] = set()  # processes whose first (attach) stop was seen
        self._early: set[int] = set()  # new processes stopped before their fork was handled
        self._lock = threading.Lock()  # _live is read by kill() on another thread
        self._gate_r, self._gate_w = os.pipe()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: str | None = None
        self.exit_status: int | None = None
        # (CLOCK_MONOTONIC ns, program) of every exec of the child, recorded while it is stopped
        # there, so before any hit of the new program
        self._execs: list[tuple[int, str]] = []
        self._argv = _argv(command)
        self._wrapped = self._argv[0] == "/bin/sh"
        self.pid = 0
        self._command = command
        self._thread = threading.Thread(target=self._trace, name="ubt-launcher", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise UbtError(self._error)

    def _spawn(self) -> int:
        """Fork the child; it waits on the gate pipe, then execs CMD (through ``sh -c`` only
        when it needs a shell).

        Not `subprocess.Popen`: Popen returns only after the exec, which the gate holds back.
        """
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe work until exec
            try:
                _die_with_parent()
                os.close(self._gate_w)
                os.read(self._gate_r, 1)
                os.close(self._gate_r)
                os.execvp(self._argv[0], self._argv)
            finally:
                os._exit(127)
        return pid

    def _trace(self) -> None:
        """The tracer thread: every ptrace call for the child must come from this thread."""
        try:
            self.pid = self._spawn()
            ptrace_request(_PTRACE_SEIZE, self.pid, 0, _OPTIONS)
        except OSError as e:
            self._error = f"cannot run {shlex.quote(self._command)}: {e.strerror or e}"
            self._ready.set()
            return
        os.close(self._gate_r)
        self._ready.set()
        try:
            self._wait_loop(self.pid)
        finally:
            self._done.set()

    def _wait_loop(self, top: int) -> None:
        """Serve ptrace stops of the command's processes until the command itself is gone (its
        descendants still running are then let go: the tracer thread ends)."""
        self._live.add(top)
        self._started.add(top)  # seized, not auto-attached: no attach stop
        while True:
            try:
                pid, status = os.waitpid(-1, _WALL)
            except ChildProcessError:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                with self._lock:
                    self._live.discard(pid)
                if pid == top:
                    self.exit_status = os.waitstatus_to_exitcode(status)
                    return
                continue
            if not os.WIFSTOPPED(status):
                continue
            event = status >> 16
            sig = os.WSTOPSIG(status)
            deliver = 0
            if event == _PTRACE_EVENT_EXIT:
                self._tracker.refresh(pid)  # the last moment its maps exist
            elif event == _PTRACE_EVENT_EXEC:
                if pid == top:
                    self._execs.append((time.monotonic_ns(), _exe(pid)))
                self._tracker.refresh(pid)  # the new program's maps
            elif event in (_PTRACE_EVENT_FORK, _PTRACE_EVENT_VFORK):
                self._adopt(pid)
            elif event == _PTRACE_EVENT_STOP and pid not in self._started:
                self._started.add(pid)  # a new process's attach stop
                if pid not in self._live:
                    self._early.add(pid)  # its fork is not handled yet: _adopt resumes it
                    continue
            elif event == _PTRACE_EVENT_STOP:
                if sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
                    self._resume(pid, _PTRACE_LISTEN, 0)  # a group stop: stay stopped
                    continue
            else:
                deliver = sig  # a signal for the process: pass it on
            self._resume(pid, _PTRACE_CONT, deliver)

    def _adopt(self, parent: int) -> None:
        """`parent` forked: place the new process's probes while it is still stopped (ptrace
        attached it at the fork; it runs only once its first stop is answered)."""
        msg = ctypes.c_ulong(0)
        try:
            ptrace_request(_PTRACE_GETEVENTMSG, parent, 0, ctypes.addressof(msg))
        except OSError:
            return
        child = msg.value
        self._tracker.refresh(child)
        self.on_new_process(child)
        with self._lock:
            self._live.add(child)
        if child in self._early:
            self._early.discard(child)
            self._resume(child, _PTRACE_CONT, 0)

    @staticmethod
    def _resume(pid: int, request: int, sig: int) -> None:
        try:
            ptrace_request(request, pid, 0, sig)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise

    def runs_command_at(self, time_ns: int) -> bool:
        """Whether the child was running CMD itself at `time_ns` (CLOCK_MONOTONIC, as BPF's
        ktime): not before its first exec (that is ubt's fork), and not while it was the
        `sh -c` wrapper ubt put around a command that needs a shell."""
        image = None
        for when, exe in self._execs:
            if when > time_ns:
                break
            image = exe
        if image is None:
            return False
        return not (self._wrapped and image == _SHELL)

    @property
    def command_since_ns(self) -> int | None:
        """When the child began running CMD itself (CLOCK_MONOTONIC ns of that exec, past an
        `sh -c` wrapper); None while it has not."""
        for when, exe in self._execs:
            if not (self._wrapped and exe == _SHELL):
                return when
        return None

    def release(self) -> None:
        """Let the command exec and run (call once the probes are attached)."""
        os.write(self._gate_w, b"x")
        os.close(self._gate_w)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the command to end; True when it has."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        """True until the command has exited."""
        return not self._done.is_set()

    def kill(self) -> None:
        """End the command and the processes it forked that are still traced (Ctrl-C or the
        hit limit ended the trace first)."""
        if self.pid and self.exit_status is None:  # not reaped yet: the pids are still ours
            with self._lock:
                pids = {self.pid, *self._live}
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


_SHELL_CHARS = set("|&;<>()$`\\\"'*?[#~=%{}\n")


_LIST_CHARS = set(";&|\n()`")


def _argv(command: str) -> list[str]:
    """CMD as an argv: split like the shell when it is a plain command (so the shell's own
    calls are not traced), else ``sh -c CMD``."""
    if not any(c in _SHELL_CHARS for c in command):
        argv = shlex.split(command)
        if argv:
            return argv
    if any(c in _LIST_CHARS for c in command):
        return ["/bin/sh", "-c", command]  # a list or pipeline: the shell runs it
    return ["/bin/sh", "-c", f"exec {command}"]  # one command (redirections...): same pid


_SHELL = os.path.realpath("/bin/sh")


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: be killed if ubt dies (SIGTERM, SIGKILL), as when it ends normally."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
