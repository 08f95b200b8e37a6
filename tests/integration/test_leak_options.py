"""`ubt leak`'s report options on the leaky fixture's known allocations (real uprobes, real BPF).

- `leaky sizes`: four stacks whose order by bytes (huge, big, mid, tiny) differs from their
  order by count (tiny, mid, huge, big): `-z/-Z` (bounds inclusive), `--sort count`, `--top N`;
- `leaky sample N`: N blocks leaked, N freed at once, interleaved: `--sample-rate`;
- `leaky aged`: one block at start, one 2 s later: `--older` on a report of the live process;
- `leaky drip N`: 16 bytes every 50 ms: reports every INTERVAL seconds, COUNT times, then exit
  (or until the program exits, then the at-exit report).
"""
from __future__ import annotations

import re
import time
from typing import Any, NamedTuple

import pytest

from tests.integration.test_leak_cli import json_reports, stacks

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("needs_root")]

#: keep_* function → (bytes, count) that `leaky sizes` leaks from it (see leaky.c).
SIZES = {"keep_huge": (10000, 2), "keep_big": (1000, 1), "keep_mid": (300, 3),
         "keep_tiny": (80, 10)}

_TITLE = re.compile(r"^\[(at exit|\d\d:\d\d:\d\d)\] outstanding allocations"
                    r"(?: older than (\d+) ms)?(?:, sampled 1 in (\d+))?: (\d+) stacks?"
                    r"(?:, top (\d+) shown)?$")
_ENTRY = re.compile(r"^(\d+) bytes in (\d+) allocations?, oldest \d+ ms, from:$")
_FRAME = re.compile(r"^    #\d+\s+0x[0-9a-f]+ (\S+?)\+")


class Report(NamedTuple):
    """One text report: its title line's parts and its stacks (bytes, count, functions)."""

    when: str
    title: str
    entries: list[tuple[int, int, list[str]]]


def text_reports(stdout: str) -> list[Report]:
    """Every report in `ubt leak`'s text output (other lines, the command's own, skipped)."""
    reports: list[Report] = []
    for line in stdout.splitlines():
        if (m := _TITLE.match(line)):
            reports.append(Report(m[1], line, []))
        elif (m := _ENTRY.match(line)):
            reports[-1].entries.append((int(m[1]), int(m[2]), []))
        elif (m := _FRAME.match(line)) and reports and reports[-1].entries:
            reports[-1].entries[-1][2].append(m[1])
    return reports


def keep_stacks(found: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(keep_* caller, bytes, count) in report order; every stack is malloc <- keep <- it <-
    main ... _start."""
    out = []
    for s in found:
        names = [f["function"] for f in s["stack"]]
        assert names[:2] == ["malloc", "keep"] and names[3] == "main", names
        assert names[-1] == "_start", names
        out.append((names[2], s["bytes"], s["count"]))
    return out


@pytest.mark.parametrize("args, order", [
    ([], ["keep_huge", "keep_big", "keep_mid", "keep_tiny"]),
    (["-z", "100", "-Z", "1000"], ["keep_big", "keep_mid"]),       # both bounds inclusive
    (["-z", "101"], ["keep_huge", "keep_big"]),
    (["-Z", "999"], ["keep_mid", "keep_tiny"]),
    (["--sort", "count"], ["keep_tiny", "keep_mid", "keep_huge", "keep_big"]),
    (["--top", "2"], ["keep_huge", "keep_big"]),
    (["--sort", "count", "--top", "3", "-Z", "4999"], ["keep_tiny", "keep_mid", "keep_big"]),
])
def test_sizes_sort_top(ubt: Any, fixture_build: Any, args: list[str],
                        order: list[str]) -> None:
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "-c", f"{program} sizes", "--format", "json", *args))
    assert keep_stacks(found) == [(fn, *SIZES[fn]) for fn in order]


def test_text_top_title(ubt: Any, fixture_build: Any) -> None:
    """The text report says how many stacks there were and how many are shown."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    proc = ubt.run("leak", "-c", f"{program} sizes", "--top", "2", "--sort", "count")
    assert proc.returncode == 0, proc.stderr
    (report,) = text_reports(proc.stdout)
    assert report.title == "[at exit] outstanding allocations: 4 stacks, top 2 shown"
    assert [(b, n, fns[:4]) for b, n, fns in report.entries] == [
        (80, 10, ["malloc", "keep", "keep_tiny", "main"]),
        (300, 3, ["malloc", "keep", "keep_mid", "main"])]


def test_sample_rate(ubt: Any, fixture_build: Any) -> None:
    """Every allocation without sampling (8000 calls on two new paths in a tight loop: every
    snapshot sent before the first is unwound fits the ring, none lost); 1 in 8 with --sample-rate 8 (at random: the count of
    4000 is binomial, mean 500, sd 21; the bounds are 6 sd), said in the header and on
    stderr, and the freed blocks between the leaked ones never reported."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    proc = ubt.run("leak", "-c", f"{program} sample 4000")
    assert " 0 lost snapshots," in proc.stderr  # the warm-up burst fits the ring
    (report,) = text_reports(proc.stdout)
    assert report.title == "[at exit] outstanding allocations: 1 stack"
    assert [(b, n, fns[:3]) for b, n, fns in report.entries] == [
        (96000, 4000, ["malloc", "sample_keep", "main"])]

    proc = ubt.run("leak", "-c", f"{program} sample 4000", "--sample-rate", "8")
    assert proc.returncode == 0, proc.stderr
    assert "(1 in 8 allocations, at random)" in proc.stderr.splitlines()[0]
    (report,) = text_reports(proc.stdout)
    assert report.title == "[at exit] outstanding allocations, sampled 1 in 8: 1 stack"
    ((size, count, fns),) = report.entries
    assert fns[:3] == ["malloc", "sample_keep", "main"]
    assert 375 <= count <= 625 and size == 24 * count


@pytest.mark.parametrize("older, expect", [
    ("1000", [("old_leak", 111)]),
    ("0", [("young_leak", 222), ("old_leak", 111)]),
])
def test_older_hides_young(ubt: Any, fixture_build: Any, older: str,
                           expect: list[tuple[str, int]]) -> None:
    """One report 2.6 s after the start of `leaky aged`, while it runs: its block of 0.0 s is
    2.6 s old then, its block of 2.0 s is 0.6 s old and hidden by --older 1000."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "-c", f"{program} aged", "--older", older, "--format",
                           "json", "2.6", "1"))
    assert [(s["stack"][2]["function"], s["bytes"]) for s in found] == expect
    assert all(s["count"] == 1 and s["stack"][1]["function"] == "keep" for s in found)
    ages = {s["stack"][2]["function"]: s["oldest_ms"] for s in found}
    assert 2400 <= ages["old_leak"] < 4000
    assert ages.get("young_leak", 400) < 1000


def test_interval_count_then_exit(ubt: Any, fixture_build: Any) -> None:
    """`0.5 3`: three timed reports of the growing drip leak, then ubt exits while the program
    (2 s of drips) still runs: no at-exit report."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    start = time.monotonic()
    proc = ubt.run("leak", "-c", f"{program} drip 40", "--older", "0", "0.5", "3")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    reports = text_reports(proc.stdout)
    assert [r.when != "at exit" for r in reports] == [True] * 3, proc.stdout
    counts = []
    for r in reports:
        ((size, count, fns),) = r.entries
        assert fns[:3] == ["malloc", "drip_leak", "main"] and size == 16 * count
        counts.append(count)
    assert 0 < counts[0] < counts[1] < counts[2] < 40, counts
    assert elapsed >= 1.5


def test_interval_until_exit(ubt: Any, fixture_build: Any) -> None:
    """No COUNT: timed reports while `leaky drip 20` (1 s) runs, then the at-exit report with
    all 20 blocks."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    proc = ubt.run("leak", "-c", f"{program} drip 20", "--older", "0", "0.3")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    reports = text_reports(proc.stdout)
    assert len(reports) >= 2 and reports[-1].when == "at exit", proc.stdout
    assert all(r.when != "at exit" for r in reports[:-1])
    assert [(b, n, fns[:3]) for b, n, fns in reports[-1].entries] == [
        (320, 20, ["malloc", "drip_leak", "main"])]
    assert [n for r in reports[:-1] for _, n, _ in r.entries] == sorted(
        n for r in reports[:-1] for _, n, _ in r.entries)


#: The counts every JSON report header carries (those of the end line, so far).
COUNT_KEYS = ("walked_in_kernel", "unwound_here", "lost_snapshots", "allocs_not_tracked",
              "stacks_not_kept", "rules_not_kept", "truncated_stacks", "cut_at_64_frames",
              "incomplete_stacks", "nested_calls", "regions_lost", "ranges_cut",
              "dropped_no_maps", "late_maps")


def test_json_interval_reports_are_delimited(ubt: Any, fixture_build: Any) -> None:
    """`--older 5000 0.25` on `leaky drip 20` (1 s): every timed report is a header alone (no
    block is 5 s old), numbered from 1; the at-exit report is a header and the drip stack
    with all 20 blocks, its objects carrying its number."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    proc = ubt.run("leak", "-c", f"{program} drip 20 >/dev/null", "--older", "5000",
                   "--format", "json", "0.25")
    reports = json_reports(proc)
    heads = [head for head, _ in reports]
    n = len(heads)
    assert n >= 4, proc.stdout
    assert [list(head) for head in heads] == [["report", "stacks", "shown", "time", "at_exit",
                                               "older_ms", "sample_rate", *COUNT_KEYS]] * n
    assert [(h["report"], h["stacks"], h["shown"], h["at_exit"], h["older_ms"],
             h["sample_rate"]) for h in heads] == [
        *((i, 0, 0, False, 5000, 1) for i in range(1, n)), (n, 1, 1, True, 0, 1)]
    assert all(found == [] for _, found in reports[:-1])
    assert all(h["lost_snapshots"] == h["truncated_stacks"] == 0 for h in heads)
    times = [h["time"] for h in heads]
    assert times == sorted(times) and times[-1] - times[0] < 30
    (last,) = reports[-1][1]
    assert list(last) == ["report", "stack", "bytes", "count", "oldest_ms"]
    assert (last["report"], last["bytes"], last["count"]) == (n, 320, 20)
    assert [f["function"] for f in last["stack"]] == [
        "malloc", "drip_leak", "main", "__libc_start_call_main", "__libc_start_main_impl",
        "_start"]
