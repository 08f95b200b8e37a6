"""`ubt leak` beyond the valgrind comparison: `--fd`, a `-p` process that exits, user-named
allocators, and bad input (one line on stderr, non-zero exit, no traceback)."""
from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.integration.test_bad_input import assert_clean_failure, free_pid

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("needs_root")]


def json_reports(proc: subprocess.CompletedProcess[str]
                 ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every report of `--format json` output: (its header, its stack objects), each stack
    object checked to carry its header's report number, as many as the header says it shows."""
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    reports: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for line in proc.stdout.splitlines():
        doc = json.loads(line)
        if "stack" in doc:
            assert reports and doc["report"] == reports[-1][0]["report"], line
            reports[-1][1].append(doc)
        else:
            reports.append((doc, []))
    for head, found in reports:
        assert head["shown"] == len(found) <= head["stacks"], head
    return reports


def stacks(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The stack objects of the output's only report."""
    ((_, found),) = json_reports(proc)
    return found


def callers(found: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(first frame, its caller) → count."""
    return {(s["stack"][0]["function"], s["stack"][1]["function"]): s["count"] for s in found}


def test_fd_leaks_from_two_stacks(ubt: Any, fixture_build: Any) -> None:
    """open x4 with one closed, socket x3 with one closed, a pipe opened and closed."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "--fd", "-c", f"{program} fd", "--format", "json"))
    assert callers(found) == {("open", "fd_open_logs"): 3, ("socket", "fd_sockets"): 2}
    assert all(s["bytes"] == s["count"] for s in found)  # an fd counts as 1
    for s in found:
        names = [f["function"] for f in s["stack"]]
        assert names[2] == "main" and names[-1] == "_start", names


def test_pid_that_exits_reports_what_was_found(ubt: Any, fixture_build: Any) -> None:
    """`-p` on a process that leaks 16 bytes every 50 ms and exits: the leaks seen while
    traced, from drip_leak, and a line saying it exited."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    target = subprocess.Popen([str(program), "drip", "30"], stdout=subprocess.PIPE)
    try:
        assert target.stdout is not None and target.stdout.readline() == b"ready\n"
        proc = ubt.run("leak", "-p", str(target.pid), "--format", "json", timeout=60)
    finally:
        target.kill()
        target.wait()
    found = stacks(proc)
    assert f"process {target.pid} exited" in proc.stderr
    assert len(found) == 1, found
    only = found[0]
    assert [f["function"] for f in only["stack"][:3]] == ["malloc", "drip_leak", "main"]
    assert 5 <= only["count"] <= 30 and only["bytes"] == 16 * only["count"]


def test_named_allocator_pair(ubt: Any, fixture_build: Any) -> None:
    """--alloc/--free on a library function that is not exported (static lib_node)."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "-c", str(program), "--alloc", "libleaky.so:lib_node",
                           "--free", "libc.so.6:free", "--format", "json"))
    assert callers(found) == {("lib_node", "lib_build"): 3}
    assert found[0]["bytes"] == 96


@pytest.mark.parametrize("args, expect", [
    (["-O", "libjemalloc.so"], "libjemalloc.so is not loaded by"),
    (["-O", "libleaky.so"], "libleaky.so does not export malloc: trace its allocator with "
     "--alloc"),
    (["--alloc", "libleaky.so:no_such_fn", "--free", "libc.so.6:free"], "no_such_fn"),
    (["--alloc", "libleaky.so:lib_node"], "--alloc and --free go together"),
    (["--sample-rate", "0"], "--sample-rate must be at least 1, not 0"),
    (["-z", "-5"], "-z/--min-size cannot be negative (-5)"),
    (["-z", "100", "-Z", "10"], "-z 100 is more than -Z 10: nothing would be tracked"),
    (["--top", "0"], "--top must be at least 1, not 0"),
    (["--older", "-1"], "--older cannot be negative (-1)"),
    (["0"], "the interval must be more than 0 seconds, not 0"),
    (["1", "0"], "the count of reports must be at least 1, not 0"),
])
def test_bad_input(ubt: Any, fixture_build: Any, args: list[str], expect: str) -> None:
    program = fixture_build.program_path("leaky", "O2-nofp")
    line = assert_clean_failure(ubt.run("leak", "-c", str(program), *args), " ".join(args))
    assert expect in line


def test_no_such_process(ubt: Any) -> None:
    pid = free_pid()
    line = assert_clean_failure(ubt.run("leak", "-p", str(pid)), "-p free pid")
    assert line == f"ubt: process {pid} does not exist"


def test_realloc_failed_keeps_block_and_realloc_moves_it(ubt: Any, fixture_build: Any) -> None:
    """realloc's old block leaves `allocs` at the call's entry (another thread may get its
    address before the call returns); a failed realloc puts it back, a successful one doesn't."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "-c", f"{program} realloc_fail", "--format", "json"))
    got = {(s["stack"][0]["function"], s["stack"][1]["function"]): (s["bytes"], s["count"])
           for s in found}
    assert got == {("malloc", "failed_grow"): (40, 1), ("realloc", "grow_ok"): (24, 1)}


def test_fd_dup2_onto_itself_keeps_the_open_stack(ubt: Any, fixture_build: Any) -> None:
    """dup2(fd, fd) returns fd without making a descriptor: fd stays open's."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "--fd", "-c", f"{program} fd_dup_same", "--format", "json"))
    assert callers(found) == {("open", "fd_dup_same"): 1}


def test_fd_fcntl_dupfd_and_close_range(ubt: Any, fixture_build: Any) -> None:
    """fcntl F_DUPFD and F_DUPFD_CLOEXEC make fds (fcntl's stack; F_GETFL makes none), and
    close_range closes every tracked fd in its range: 2 from fcntl, 1 of 4 opens left."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "--fd", "-c", f"{program} fd_more", "--format", "json"))
    pairs = [(s["stack"][0]["function"], s["stack"][1]["function"], s["count"]) for s in found]
    assert sorted(pairs) == [("fcntl", "fd_dupfd", 1), ("fcntl", "fd_dupfd", 1),  # 2 sites
                             ("open", "fd_ranged", 1)]
