"""`ubt process` on bad input and interruptions: one line on stderr and a non-zero exit, never a
traceback; a traced process that ends, or Ctrl-C, ends the run cleanly with what was gathered and
no uprobe left behind.

"No uprobe left behind" is checked where the kernel keeps it: ubt attaches through uprobe_multi
links (bpf(2) link fds), so nothing appears in ``/sys/kernel/tracing/uprobe_events`` (that file
is still compared, for the legacy tracefs path); an armed uprobe replaces the first
byte of the probed instruction with ``int3`` (0xcc) in every process it applies to. So a live
target traced with ``-p`` is read through ``/proc/PID/mem`` at the probed address: 0xcc while
ubt traces (the check sees probes), the original byte once ubt has ended, and the target keeps
calling the function without dying of SIGTRAP.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ubt_command
from tests.integration.test_bad_input import assert_clean_failure, free_pid
from tests.oracle.gdb_stops import elf_symbol

pytestmark = [pytest.mark.integration]

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
PYTHON = os.path.realpath(sys.executable if "python3" in os.path.basename(sys.executable)
                          else "/usr/bin/python3")
#: `sleep MARKER`: a -c command no other process runs (unique per test session, so that sessions
#: running at the same time never take each other's processes for leftovers)
MARKER = f"27{os.getpid()}.828"
TRACEFS = Path("/sys/kernel/tracing")

#: A target that calls opendir() (os.listdir) every 20 ms, after printing "ready".
LOOPER = ("import os, sys, time\n"
          "print('ready', flush=True)\n"
          "n = int(sys.argv[1]) if len(sys.argv) > 1 else -1\n"
          "while n != 0:\n"
          "    os.listdir('/')\n"
          "    n -= 1\n"
          "    time.sleep(0.02)\n")


# ---- helpers ----------------------------------------------------------------------------------

def tracefs_uprobes() -> dict[str, str]:
    """The legacy (tracefs) uprobe registrations: uprobe_events and uprobe_profile."""
    out = {}
    for name in ("uprobe_events", "uprobe_profile"):
        try:
            out[name] = (TRACEFS / name).read_text()
        except OSError:
            out[name] = ""
    return out


def libc_base(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and int(parts[2], 16) == 0 and \
                    os.path.realpath(parts[5]) == LIBC:
                return int(parts[0].split("-")[0], 16)
    raise RuntimeError(f"libc is not mapped in {pid}")


def code_byte(pid: int, elf_addr: int) -> int:
    """The byte at libc's ELF address `elf_addr` as process `pid` sees it (0xcc: a uprobe)."""
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(libc_base(pid) + elf_addr)
        return mem.read(1)[0]


def leftover(marker: str = MARKER) -> list[str]:
    """Processes (not zombies) whose command line contains `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"{pid} [{state}] {cmd}")
    return found


@dataclass
class Running:
    """A `ubt process` run in the background; stdout and stderr are collected as they come."""

    proc: subprocess.Popen[bytes]
    out: bytes = b""
    err: bytes = b""
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def __post_init__(self) -> None:
        assert self.proc.stdout and self.proc.stderr
        for stream in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self.sel.register(stream, selectors.EVENT_READ)

    def pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            data = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            if not data:
                self.sel.unregister(key.fileobj)
            elif key.fileobj is self.proc.stdout:
                self.out += data
            else:
                self.err += data

    def wait_for(self, what: str, cond: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self):
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self.sel.get_map()):
                raise AssertionError(f"{what}: not within {timeout}s (exit {self.proc.poll()}):"
                                     f"\nstdout {self.out[-800:]!r}\nstderr {self.err[-2000:]!r}")
            self.pump(min(left, 0.05))

    def finish(self, timeout: float) -> int | None:
        """Collect everything until ubt exits; its exit status, None when it did not exit."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None or self.sel.get_map():
            if time.monotonic() > deadline:
                return None
            self.pump(0.05)
        return self.proc.returncode

    @property
    def started(self) -> bool:
        return b"Hit Ctrl-C to end." in self.err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sel.close()


@pytest.fixture
def background(ubt_env: dict[str, str]) -> Iterator[Any]:
    runs: list[Running] = []

    def start(*args: str) -> Running:
        proc = subprocess.Popen([*ubt_command(), "process", *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ubt_env)
        runs.append(Running(proc))
        return runs[-1]

    yield start
    for r in runs:
        r.kill()
    for line in leftover():
        os.kill(int(line.split()[0]), signal.SIGKILL)


@pytest.fixture
def looper() -> Iterator[Any]:
    """Start python3 running LOOPER (blocked until it printed "ready"); killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([PYTHON, "-c", LOOPER, *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def assert_clean_end(r: Running, status: int | None, what: str,
                     statuses: tuple[int, ...] = (0, 130)) -> list[str]:
    """Exited with one of `statuses`, no traceback; stderr holds only ubt's own lines."""
    err = r.err.decode(errors="replace")
    assert status is not None, f"{what}: ubt did not exit\n{err[-2000:]}"
    assert "Traceback" not in err, f"{what}: traceback:\n{err[-3000:]}"
    assert status in statuses, f"{what}: exit {status}\n{err[-2000:]}"
    lines = err.strip().splitlines()
    odd = [ln for ln in lines if not (ln.startswith("ubt: ") or ln.startswith("Tracing "))]
    assert not odd, f"{what}: unexpected stderr lines {odd}"
    return lines


def end_line(lines: list[str]) -> str:
    ends = [ln for ln in lines if ln.startswith("ubt: ") and " lost event" in ln]
    assert len(ends) == 1, f"expected one end line, got {lines}"
    return ends[0]


def json_hits(r: Running) -> list[str]:
    return [ln for ln in r.out.decode(errors="replace").splitlines() if ln.startswith("{")]


# ---- bad input --------------------------------------------------------------------------------

def test_not_root(ubt: Any, tmp_path: Path) -> None:
    """As nobody: one line saying root is needed, before any other work. The CLI is imported
    as root and only then drops to uid/gid 65534, so the check does not depend on whether
    nobody may read the checkout (a fresh clone under a 0700 temp dir)."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    os.chmod(tmp_path, 0o755)
    env = dict(ubt.env, HOME=str(tmp_path), UBT_CACHE_DIR=str(cache))
    script = ("import os, sys; import ubt.cli, ubt.process; os.setgroups([]); os.setgid(65534); "
              "os.setuid(65534); sys.exit(ubt.cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "process", "/bin/ls", "opendir",
                           "-c", "ls -l /"], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL,
                          cwd=str(Path(__file__).resolve().parents[2]))
    line = assert_clean_failure(proc, "ubt process as nobody")
    assert "root" in line, line


@pytest.mark.needs_root
def test_no_such_binary(ubt: Any, needs_root: None) -> None:
    line = assert_clean_failure(ubt.run("process", "/no/such/prog", "opendir", "-c", "true"),
                                "no such binary")
    assert "/no/such/prog" in line


@pytest.mark.needs_root
def test_no_such_function_suggests_nearest(ubt: Any, needs_root: None) -> None:
    """``opendr``: the nearest names and the library each lives in (``opendir (libc.so.6)``)."""
    line = assert_clean_failure(ubt.run("process", "/bin/ls", "opendr", "-c", "ls -l /"),
                                "no such function")
    assert "opendr" in line and "opendir (libc.so.6)" in line, line


@pytest.mark.needs_root
def test_stripped_binary_without_the_symbol(ubt: Any, needs_root: None, fixture_build: Any,
                                            tmp_path: Path) -> None:
    """A fully stripped copy of a fixture (no .symtab, no debug link): its static function
    hit_target is nowhere to be found, and the message says why."""
    stripped = tmp_path / "hits-stripped"
    subprocess.run(["strip", "-o", str(stripped),
                    str(fixture_build.program_path("hits", "O2-nofp"))], check=True)
    line = assert_clean_failure(ubt.run("process", str(stripped), "hit_target", "-c",
                                        str(stripped)), "stripped binary")
    assert "hit_target" in line and "no symbol table" in line, line
    assert not leftover(str(stripped)), "the -c command was started anyway"


@pytest.mark.needs_root
def test_no_such_pid(ubt: Any, needs_root: None) -> None:
    pid = free_pid()
    line = assert_clean_failure(ubt.run("process", "/bin/ls", "opendir", "-p", str(pid)),
                                f"-p {pid}")
    assert str(pid) in line


@pytest.mark.needs_root
def test_bad_command(ubt: Any, needs_root: None) -> None:
    """``-c`` of a program that does not exist: the shell says so; ubt ends on its own."""
    proc = ubt.run("process", "/bin/ls", "opendir", "-c", "/no/such/command", timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "hit" in proc.stderr.strip().splitlines()[-1], proc.stderr


# ---- a traced process that ends -----------------------------------------------------------------

@pytest.mark.needs_root
def test_pid_that_exits_ends_the_trace(background: Any, needs_root: None) -> None:
    """``-p PID`` of a process that makes 5 calls and exits while traced: ubt notices, prints
    the 5 hits and its end line, and exits 0 by itself (no Ctrl-C needed)."""
    gate = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.readline()\n" + LOOPER, "5"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        r = background(PYTHON, "opendir", "-p", str(gate.pid), "--format", "json")
        r.wait_for("start line", lambda r: r.started, 60)
        assert gate.stdin is not None
        gate.stdin.write(b"go\n")
        gate.stdin.close()
        gate.wait(timeout=30)
        status = r.finish(timeout=5)
        if status is None:
            r.proc.send_signal(signal.SIGINT)
            r.finish(timeout=10)
            pytest.fail(f"ubt process -p {gate.pid} still ran 5 s after the process exited "
                        f"(it had {len(json_hits(r))} hits); stderr: {r.err.decode()[-500:]!r}")
        lines = assert_clean_end(r, status, "-p of a process that exits", (0,))
        assert end_line(lines).startswith("ubt: 5 hits, 0 lost events"), lines
        assert len(json_hits(r)) == 5
    finally:
        if gate.poll() is None:
            gate.kill()
        gate.wait()


# ---- Ctrl-C -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def startup_time(ubt_env: dict[str, str]) -> float:
    """Seconds from starting `ubt process` to its start line (imports, symbols, BPF compile,
    attach), measured once with a warm cache."""
    best = 1e9
    for _ in range(2):
        t0 = time.monotonic()
        proc = subprocess.Popen([*ubt_command(), "process", "/bin/ls", "opendir", "-c",
                                 f"sleep {MARKER}"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ubt_env)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        best = min(best, time.monotonic() - t0)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert b"Hit Ctrl-C to end." in line, line
    return best


@pytest.fixture(scope="module")
def interpreter_start(ubt_env: dict[str, str]) -> float:
    """Seconds Python itself takes to start here (site, .pth files): before bin/ubt's first
    line runs, Ctrl-C is Python's to handle, not ubt's."""
    best = 1e9
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], env=ubt_env, check=True)
        best = min(best, time.monotonic() - t0)
    return best


#: When Ctrl-C comes, as a fraction of the time to the start line; 0.2 of a warm start-up
#: (~0.25 s) falls in bin/ubt's imports, which it answers from its first line on.
STARTUP_POINTS = (0.2, 0.3, 0.55, 0.8, 0.95)


def startup_delay(point: float, startup_time: float, interpreter_start: float) -> float:
    return max(interpreter_start * 2 + 0.03, point * startup_time)


@pytest.mark.needs_root
@pytest.mark.parametrize("point", STARTUP_POINTS)
def test_sigint_during_startup_with_command(point: float, startup_time: float,
                                            interpreter_start: float, background: Any,
                                            needs_root: None) -> None:
    """Ctrl-C before the start line with ``-c``: exit 0 or 130, no traceback, and the command
    (held before exec, or just released) is not left running."""
    before = tracefs_uprobes()
    r = background("/bin/ls", "opendir", "-c", f"sleep {MARKER}")
    delay = startup_delay(point, startup_time, interpreter_start)
    time.sleep(delay)
    r.pump(0)
    was_started = r.started
    r.proc.send_signal(signal.SIGINT)
    status = r.finish(timeout=30)
    lines = assert_clean_end(r, status, f"SIGINT at {delay:.2f}s of {startup_time:.2f}s")
    print(f"SIGINT at {delay:.2f}s of {startup_time:.2f}s: exit {status}, stderr {lines}")
    if was_started:
        print(f"note: the start line came before {delay:.2f}s: a Ctrl-C during tracing")
    if any(ln.startswith("Tracing ") for ln in lines):
        end_line(lines)  # once the start line is out, the end line must follow
    time.sleep(0.2)
    assert not leftover(), f"the -c command outlived ubt: {leftover()}"
    assert tracefs_uprobes() == before


@pytest.mark.needs_root
@pytest.mark.parametrize("point", STARTUP_POINTS)
def test_sigint_during_startup_with_pid(point: float, startup_time: float,
                                        interpreter_start: float, background: Any,
                                        looper: Any, needs_root: None) -> None:
    """Ctrl-C before the start line with ``-p``: exit 0 or 130, no traceback, and the target's
    opendir is not left with a breakpoint (it keeps running through it)."""
    opendir = elf_symbol(LIBC, "opendir")
    target = looper()
    original = code_byte(target.pid, opendir)
    assert original != 0xCC
    before = tracefs_uprobes()
    r = background(PYTHON, "opendir", "-p", str(target.pid), "--format", "json")
    delay = startup_delay(point, startup_time, interpreter_start)
    time.sleep(delay)
    r.proc.send_signal(signal.SIGINT)
    status = r.finish(timeout=30)
    lines = assert_clean_end(r, status, f"SIGINT at {delay:.2f}s of {startup_time:.2f}s")
    print(f"SIGINT at {delay:.2f}s of {startup_time:.2f}s: exit {status}, stderr {lines}")
    if any(ln.startswith("Tracing ") for ln in lines):
        end = end_line(lines)
        assert end.startswith(f"ubt: {len(json_hits(r))} hit"), (end, len(json_hits(r)))
    assert code_byte(target.pid, opendir) == original, "a uprobe is still armed in the target"
    time.sleep(0.2)
    assert target.poll() is None, f"the target died (status {target.returncode})"
    assert tracefs_uprobes() == before


@pytest.mark.needs_root
def test_sigint_during_tracing_with_pid(background: Any, looper: Any, needs_root: None) -> None:
    """Ctrl-C while hits arrive: every hit gathered is printed, the end line counts them, exit 0
    or 130, and the probe is gone from the target (which keeps calling opendir)."""
    opendir = elf_symbol(LIBC, "opendir")
    target = looper()
    original = code_byte(target.pid, opendir)
    before = tracefs_uprobes()
    r = background(PYTHON, "opendir", "-p", str(target.pid), "--format", "json")
    r.wait_for("3 hits", lambda r: len(json_hits(r)) >= 3, 60)
    armed = code_byte(target.pid, opendir)
    r.proc.send_signal(signal.SIGINT)
    status = r.finish(timeout=30)
    lines = assert_clean_end(r, status, "SIGINT during tracing")
    end = end_line(lines)
    assert end.startswith(f"ubt: {len(json_hits(r))} hits, 0 lost events"), \
        (end, len(json_hits(r)))
    assert armed == 0xCC, f"while tracing, the probed byte is {armed:#x}, not int3 (check void)"
    assert code_byte(target.pid, opendir) == original, "a uprobe is still armed in the target"
    time.sleep(0.2)
    assert target.poll() is None, f"the target died (status {target.returncode})"
    assert tracefs_uprobes() == before


@pytest.mark.needs_root
def test_sigint_during_tracing_with_command(background: Any, fixture_build: Any,
                                            needs_root: None) -> None:
    """Ctrl-C with ``-c`` while the command is blocked after its only hit (chain: lc_enter, then
    read() forever): the hit is printed, the end line says 1 hit, the command is killed."""
    prog = str(fixture_build.program_path("chain", "O2-nofp"))
    before = tracefs_uprobes()
    r = background(prog, "lc_enter", "-c", f"{prog} {MARKER} >/dev/null", "--format", "json")
    r.wait_for("the hit", lambda r: len(json_hits(r)) >= 1, 60)
    time.sleep(0.2)
    r.proc.send_signal(signal.SIGINT)
    status = r.finish(timeout=30)
    lines = assert_clean_end(r, status, "SIGINT during tracing (-c)")
    assert end_line(lines).startswith("ubt: 1 hit, 0 lost events"), lines
    assert len(json_hits(r)) == 1
    time.sleep(0.2)
    assert not leftover(), f"the -c command outlived ubt: {leftover()}"
    assert tracefs_uprobes() == before
