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
_PTRACE_O_TRACECLONE = 0x08
_PTRACE_O_TRACEEXEC = 0x10
_PTRACE_O_TRACEEXIT = 0x40
_PTRACE_EVENT_FORK = 1
_PTRACE_EVENT_VFORK = 2
_PTRACE_EVENT_CLONE = 3
_PTRACE_EVENT_EXEC = 4
_PTRACE_EVENT_EXIT = 6
_PTRACE_EVENT_STOP = 128
_WALL = 0x40000000
# CLONE too: ptrace options are per thread, so a fork from a thread other than the first (Go,
# Java, a Python worker calling subprocess) is seen only if that thread is traced as well
_OPTIONS = (_PTRACE_O_TRACEEXIT | _PTRACE_O_TRACEEXEC | _PTRACE_O_TRACEFORK
            | _PTRACE_O_TRACEVFORK | _PTRACE_O_TRACECLONE)


class Launcher:
    """Forks `command` held before exec; `release()` lets it run; `exit_status` when done."""

    def __init__(self, command: str, tracker: MapsTracker) -> None:
        self._tracker = tracker
        #: called on the tracer thread with each process the command forks, before it runs,
        #: and with each of those processes once it has exited
        self.on_new_process: Callable[[int], None] = lambda pid: None
        self.on_process_exit: Callable[[int], None] = lambda pid: None
        #: processes of the command whose probes could not be placed, and the last reason
        self.untraced = 0
        self.untraced_reason = ""
        self._live: set[int] = set()  # traced tasks not reaped yet (the command's tree)
        self._threads: set[int] = set()  # of those, threads other than a process's first
        self._started: set[int] = set()  # tasks whose first (attach) stop was seen
        self._early: set[int] = set()  # new tasks stopped before their clone was handled
        self._lock = threading.Lock()  # _live and _early are read by kill() on another thread
        self._gate_r, self._gate_w = os.pipe()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: str | None = None
        self.exit_status: int | None = None
        # pid → (CLOCK_MONOTONIC ns, program) from its fork (the program it inherited) and
        # every exec, recorded while it is stopped there, so before any hit of the new program
        self._execs: dict[int, list[tuple[int, str]]] = {}
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
        """Serve ptrace stops of the command's tasks until the command itself is gone (its
        descendants still running are then let go: the tracer thread ends, detaching them).

        ``waitpid(-1)`` collects every child of ubt: nothing else runs subprocesses while a
        command is traced."""
        self._live.add(top)
        self._started.add(top)  # seized, not auto-attached: no attach stop
        self._execs[top] = []
        while True:
            try:
                pid, status = os.waitpid(-1, _WALL)
            except ChildProcessError:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                if pid == top:
                    self.exit_status = os.waitstatus_to_exitcode(status)
                    return
                self._gone(pid)
                continue
            if not os.WIFSTOPPED(status):
                continue
            event = status >> 16
            sig = os.WSTOPSIG(status)
            deliver = 0
            if event == _PTRACE_EVENT_EXIT:
                if pid not in self._threads:
                    self._tracker.refresh(pid)  # the last moment its maps exist
            elif event == _PTRACE_EVENT_EXEC:
                self._execs.setdefault(pid, []).append((time.monotonic_ns(), _exe(pid)))
                self._tracker.refresh(pid)  # the new program's maps
            elif event in (_PTRACE_EVENT_FORK, _PTRACE_EVENT_VFORK, _PTRACE_EVENT_CLONE):
                self._adopt(pid, event == _PTRACE_EVENT_CLONE)
            elif event == _PTRACE_EVENT_STOP and pid not in self._started:
                self._started.add(pid)  # a new task's attach stop
                if pid not in self._live:
                    with self._lock:
                        self._early.add(pid)  # its clone is not handled yet: _adopt resumes it
                    continue
            elif event == _PTRACE_EVENT_STOP:
                if sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
                    self._resume(pid, _PTRACE_LISTEN, 0)  # a group stop: stay stopped
                    continue
            else:
                deliver = sig  # a signal for the task: pass it on
            self._resume(pid, _PTRACE_CONT, deliver)

    def _adopt(self, parent: int, maybe_thread: bool) -> None:
        """`parent` forked or cloned: place a new process's probes while it is still stopped
        (ptrace attached it; it runs only once its first stop is answered). A new thread
        needs nothing: its process's probes cover it."""
        msg = ctypes.c_ulong(0)
        try:
            ptrace_request(_PTRACE_GETEVENTMSG, parent, 0, ctypes.addressof(msg))
        except OSError:
            return  # the parent was killed meanwhile
        child = msg.value
        if maybe_thread and _tgid(child) != child:
            self._threads.add(child)
        else:
            inherited = self._execs.get(parent) or [(0, "")]
            self._execs[child] = [(time.monotonic_ns(), inherited[-1][1])]
            self._tracker.refresh(child)
            try:
                self.on_new_process(child)
            except Exception as e:  # e.g. out of file descriptors: count it, let it run
                self.untraced += 1
                self.untraced_reason = str(e)
        with self._lock:
            self._live.add(child)
            early = child in self._early
            self._early.discard(child)
        if early:
            self._resume(child, _PTRACE_CONT, 0)

    def _gone(self, pid: int) -> None:
        """A task other than the command's first process was reaped."""
        with self._lock:
            self._live.discard(pid)
            self._early.discard(pid)
        self._started.discard(pid)  # the pid may come back for a new task
        if pid in self._threads:
            self._threads.discard(pid)
        elif self._execs.pop(pid, None) is not None:
            self.on_process_exit(pid)

    @staticmethod
    def _resume(pid: int, request: int, sig: int) -> None:
        try:
            ptrace_request(request, pid, 0, sig)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise

    def runs_command_at(self, pid: int, time_ns: int) -> bool:
        """Whether process `pid` was running CMD at `time_ns` (CLOCK_MONOTONIC, as BPF's
        ktime): not ubt's own fork before its first exec, and not the `sh -c` wrapper ubt put
        around a command that needs a shell, nor that shell's forks before they exec."""
        image = None
        for when, exe in self._execs.get(pid, [(0, "?")]):
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
        for when, exe in self._execs.get(self.pid, []):
            if not (self._wrapped and exe == _SHELL):
                return when
        return None

    @property
    def image_since_ns(self) -> int | None:
        """When the child's current program began (its last exec), once it runs CMD: memory
        from before belonged to an image that exec replaced (`setarch -R prog`: setarch's)."""
        if self.command_since_ns is None:
            return None
        return self._execs[self.pid][-1][0]

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
                pids = {self.pid, *self._live, *self._early}
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


def _tgid(tid: int) -> int:
    """The process a task belongs to (its own id for a process's first thread)."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: be killed if ubt dies (SIGTERM, SIGKILL), as when it ends normally."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
