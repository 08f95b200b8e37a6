"""`ubt process -c` traces the processes its command forks: a pipeline's and a list's members
(the shell forks them), each from its first instruction, and Ctrl-C ends the whole tree.

The stacks of children are checked against a run of the plain command, whose hits the gdb
tests compare frame by frame: the same code positions (module + offset) and names."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from typing import Any

from tests.conftest import ubt_command


def run_json(ubt: Any, command: str) -> tuple[list[dict[str, Any]], str]:
    proc = subprocess.run([*ubt_command(), "process", "/bin/ls", "opendir", "-c", command,
                           "--format", "json"], capture_output=True, text=True, env=ubt.env,
                          timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")], \
        proc.stderr


def positions(hit: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    return [(f["module"], f["offset"], f["function"]) for f in hit["frames"]]


def test_list_and_pipeline_members_are_traced(ubt: Any, needs_root: None) -> None:
    plain, _ = run_json(ubt, "ls /")
    assert len(plain) == 1
    hits, err = run_json(ubt, "ls / >/dev/null; ls /usr | cat >/dev/null")
    assert len(hits) == 2, err
    assert len({h["pid"] for h in hits}) == 2
    assert all(h["comm"] == "ls" for h in hits)
    for hit in hits:
        assert positions(hit) == positions(plain[0])
    assert err.strip().splitlines()[-1].startswith("ubt: 2 hits, 0 lost events, 0 truncated")


def test_aggregate_counts_one_stack_across_processes(ubt: Any, needs_root: None) -> None:
    proc = subprocess.run([*ubt_command(), "process", "/bin/ls", "opendir", "-c",
                           "ls / >/dev/null; ls /usr >/dev/null; ls /tmp | cat >/dev/null",
                           "--aggregate"], capture_output=True, text=True, env=ubt.env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [ln for ln in proc.stdout.splitlines() if " hits of " in ln] == \
        ["3 hits of opendir (ls):"]


def pids_running(argv: list[str]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:-1] == [a.encode() for a in argv]:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_ctrl_c_ends_the_command_tree(ubt: Any, needs_root: None) -> None:
    marks = (["sleep", "307.1"], ["sleep", "307.2"])
    proc = subprocess.Popen([*ubt_command(), "process", "/bin/ls", "opendir", "-c",
                             f"{' '.join(marks[0])} | {' '.join(marks[1])}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ubt.env)
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith(b"Tracing ")
    deadline = time.monotonic() + 10
    while not all(pids_running(m) for m in marks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(pids_running(m) for m in marks), "the pipeline did not start"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=30)[1].decode()
    assert proc.returncode in (0, 130) and "Traceback" not in err, err
    time.sleep(0.2)
    assert not any(pids_running(m) for m in marks), "members of the command outlived ubt"


def test_fork_from_another_thread_is_traced(ubt: Any, needs_root: None, tmp_path: Any) -> None:
    """ptrace options are per thread: a child forked by a worker thread (as Go, Java or a
    Python thread pool do) must be traced too."""
    script = tmp_path / "spawn.py"
    script.write_text("import subprocess, threading\n"
                      "t = threading.Thread(target=lambda: subprocess.run(['/bin/ls', '/'],"
                      " stdout=subprocess.DEVNULL))\n"
                      "t.start()\nt.join()\n")
    hits, err = run_json(ubt, f"/usr/bin/python3 {script}")
    assert [h["comm"] for h in hits if h["comm"] == "ls"] == ["ls"], err


def test_the_wrapper_shells_forks_are_not_the_command(ubt: Any, needs_root: None) -> None:
    """``-c 'ls / | cat'`` runs under ``sh -c``: the shell and its forks before they exec are
    ubt's wrapper, not the command, so no malloc hit comes from them."""
    proc = subprocess.run([*ubt_command(), "process", "/bin/ls", "malloc", "-c",
                           "ls / | cat >/dev/null", "--format", "json"], capture_output=True,
                          text=True, env=ubt.env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    comms = {json.loads(ln)["comm"] for ln in proc.stdout.splitlines() if ln.startswith("{")}
    assert comms and comms <= {"ls", "cat"}, comms


def test_many_short_children_do_not_run_out_of_descriptors(ubt: Any, needs_root: None) -> None:
    """Each traced child gets its own uprobe link (a file descriptor): closed when the child
    exits, so 400 children fit under a limit of 128 descriptors."""
    loop = "i=0; while [ $i -lt 400 ]; do /bin/true; i=$((i+1)); done; ls /"
    argv = " ".join(shlex.quote(a) for a in [*ubt_command(), "process", "/bin/ls", "opendir",
                                              "-c", loop, "--format", "json"])
    proc = subprocess.run(["sh", "-c", f"ulimit -n 128; exec {argv}"], capture_output=True,
                          text=True, env=ubt.env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    end = proc.stderr.strip().splitlines()[-1]
    assert end.startswith("ubt: 1 hit, 0 lost events") and "not traced" not in end, end
