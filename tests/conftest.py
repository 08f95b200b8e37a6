"""Shared test harness: fixture programs, blocked target processes, running the `ubt` CLI.

- `fixture_build` (session): builds every variant of fixtures/src with fixtures/build.py.
- `ubt_env` (session): environment for `ubt` with a per-session cache directory (or the one in
  $UBT_CACHE_DIR when the caller set it, to reuse warm caches between runs).
- `spawn_blocked` (function): starts a program, waits until it is blocked at its known place
  (its readiness line on stdout, then every thread asleep with a stable pc/sp), and kills it at
  teardown. `BlockedProcess.stop_signature()` lets a test prove that two observers (ubt, gdb)
  saw the same stop.
- `ubt` (session): runs the CLI as a subprocess (the CLI, not the library: exit status, stderr).
- `line_markers` (session): ``LINE:name`` markers of fixtures/src → (file name, line).
- `needs_root`: ptrace of unrelated processes needs root; skips loudly otherwise.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
UBT_TIMEOUT = float(os.environ.get("UBT_TEST_TIMEOUT", "600"))

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration import FIXTURE_SRC, PROGRAMS, VARIANTS, fixture_builder  # noqa: E402

__all__ = ["FIXTURE_SRC", "PROGRAMS", "VARIANTS"]


@pytest.fixture(scope="session")
def fixture_build() -> Any:
    """Build (if out of date) every fixture variant; returns the fixtures.build module."""
    missing = [t for t in ("gcc", "g++", "objcopy", "strip", "dwz") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"cannot build fixtures: missing tools {missing} (run `make bootstrap`)")
    fixture_builder.build(jobs=max(2, os.cpu_count() or 2))
    return fixture_builder


@pytest.fixture(scope="session")
def line_markers() -> dict[str, tuple[str, int]]:
    return read_line_markers()


def read_line_markers() -> dict[str, tuple[str, int]]:
    """``/* LINE:name */`` (or ``// LINE:name``) markers of fixtures/src → (file, line)."""
    out: dict[str, tuple[str, int]] = {}
    for src in sorted(FIXTURE_SRC.iterdir()):
        if src.suffix not in (".c", ".cpp", ".h"):
            continue
        for n, text in enumerate(src.read_text().splitlines(), 1):
            pos = text.find("LINE:")
            if pos < 0:
                continue
            name = text[pos + 5:].split()[0].rstrip("*/").strip()
            out[name] = (src.name, n)
    return out


# ---- privileges -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def needs_root() -> None:
    """ptrace of processes we did not start as children needs root (or CAP_SYS_PTRACE)."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: these tests attach with ptrace (ubt, gdb) and must run as "
                    "root; run `sudo make test`")


# ---- the ubt CLI ------------------------------------------------------------------------------

def ubt_command() -> list[str]:
    script = Path(sys.executable).with_name("ubt")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ubt.cli import main; sys.exit(main())"]


@pytest.fixture(scope="session")
def ubt_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DEBUGINFOD_URLS", None)  # no network look-ups from tests
    if not env.get("UBT_CACHE_DIR"):
        env["UBT_CACHE_DIR"] = str(tmp_path_factory.mktemp("ubt-cache"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


class Ubt:
    """Runs the `ubt` CLI as a subprocess (exit status, stdout, stderr: the real interface)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, input: str | None = None,
            timeout: float = UBT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``ubt ARGS``; never raises on exit status."""
        return subprocess.run([*ubt_command(), *args], input=input, capture_output=True,
                              text=True, timeout=timeout, env=self.env,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def stack_json(self, pid: int) -> dict[int, dict[str, Any]]:
        """``ubt stack -p PID --format json`` → {tid: thread object}; fails the test on error."""
        proc = self.run("stack", "-p", str(pid), "--format", "json")
        if proc.returncode != 0 or "Traceback" in proc.stderr:
            pytest.fail(f"ubt stack -p {pid} failed (exit {proc.returncode}):\n"
                        f"{proc.stderr[-4000:]}")
        threads = {}
        for line in proc.stdout.splitlines():
            if line.strip():
                doc = json.loads(line)
                threads[doc["tid"]] = doc
        return threads


@pytest.fixture(scope="session")
def ubt(ubt_env: dict[str, str]) -> Ubt:
    return Ubt(ubt_env)


# ---- blocked target processes -------------------------------------------------------------------

def task_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def task_state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


def task_syscall(pid: int, tid: int) -> list[str]:
    """/proc/PID/task/TID/syscall: ``nr a0..a5 sp pc`` while blocked, ``running`` otherwise."""
    with open(f"/proc/{pid}/task/{tid}/syscall") as f:
        return f.read().split()


@dataclass
class BlockedProcess:
    """A started target, blocked at its known place."""

    argv: list[str]
    proc: subprocess.Popen[bytes]
    pid: int
    ready_line: bytes | None = None
    stop: dict[int, tuple[int, int]] = field(default_factory=dict)

    def stop_signature(self) -> dict[int, tuple[int, int]]:
        """{tid: (sp, pc)} of every thread, which must be asleep in a system call."""
        sig = {}
        for tid in task_ids(self.pid):
            words = task_syscall(self.pid, tid)
            if len(words) < 3 or words[0] == "running":
                raise RuntimeError(f"thread {tid} of {self.pid} is not blocked: {words}")
            sig[tid] = (int(words[-2], 16), int(words[-1], 16))
        return sig

    def syscall_numbers(self) -> dict[int, int]:
        return {tid: int(task_syscall(self.pid, tid)[0]) for tid in task_ids(self.pid)}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"no line from {proc.args!r} (got {buf!r})")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"{proc.args!r} closed stdout (exit {proc.poll()}), got {buf!r}")
            buf += chunk
    finally:
        sel.close()
    return buf.split(b"\n", 1)[0]


def wait_blocked(pid: int, *, syscalls: Sequence[int] | None = None, timeout: float = 20.0,
                 settle: float = 0.05) -> dict[int, tuple[int, int]]:
    """Poll until every thread of `pid` sleeps (state S) in a system call (optionally one of
    `syscalls` for at least one thread) with the same (sp, pc) on two polls `settle` apart."""
    deadline = time.monotonic() + timeout
    previous: dict[int, tuple[int, int]] | None = None
    last_error = ""
    while time.monotonic() < deadline:
        try:
            tids = task_ids(pid)
            states = {t: task_state(pid, t) for t in tids}
            words = {t: task_syscall(pid, t) for t in tids}
        except (FileNotFoundError, ProcessLookupError) as e:
            raise RuntimeError(f"process {pid} exited while waiting for it to block") from e
        ok = all(s == "S" for s in states.values()) and \
            all(len(w) > 3 and w[0] != "running" for w in words.values())
        if ok and syscalls is not None:
            ok = any(int(w[0]) in syscalls for w in words.values())
        if ok:
            sig = {t: (int(w[-2], 16), int(w[-1], 16)) for t, w in words.items()}
            if sig == previous:
                return sig
            previous = sig
        else:
            previous = None
            last_error = f"states {states}, syscalls { {t: w[:1] for t, w in words.items()} }"
        time.sleep(settle)
    raise TimeoutError(f"process {pid} did not block within {timeout}s: {last_error}")


@pytest.fixture
def spawn_blocked() -> Iterator[Callable[..., BlockedProcess]]:
    """Factory: ``spawn_blocked(argv, ready=b"ready", syscalls=None, stdout_pipe_unread=False)``.

    - `ready`: the line the program prints when it reaches its blocking place (None: none);
    - `syscalls`: system call numbers one of the threads must be blocked in;
    - `stdout_pipe_unread`: give it a pipe as stdout that nobody reads (``ls -lR`` blocks in
      write() once the pipe is full).
    Every process is killed at teardown.
    """
    started: list[BlockedProcess] = []

    def spawn(argv: Sequence[str], ready: bytes | None = b"ready",
              syscalls: Sequence[int] | None = None, timeout: float = 20.0,
              cwd: str | None = None) -> BlockedProcess:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=cwd)
        bp = BlockedProcess(list(argv), proc, proc.pid)
        started.append(bp)
        deadline = time.monotonic() + timeout
        if ready is not None:
            line = _read_line(proc, deadline)
            if line.strip() != ready:
                raise RuntimeError(f"{argv!r}: expected {ready!r} on stdout, got {line!r}")
            bp.ready_line = line
        bp.stop = wait_blocked(proc.pid, syscalls=syscalls,
                               timeout=max(1.0, deadline - time.monotonic()))
        return bp

    yield spawn
    for bp in started:
        bp.kill()
