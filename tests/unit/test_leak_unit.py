"""`ubt leak`'s user side without BPF: probe attach order, the end line's counters, full
maps, the report's unknown stacks, map generations."""
from __future__ import annotations

import errno
import io
import json
import os
from array import array
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bpf_progs import leak_capture
from bpf_progs.bpfsys import BpfError
from bpf_progs.leak_capture import (COUNTERS, PENDING, LeakCapture, LeakProbe,
                                    LiveAllocations, alloc_cookie, free_cookie)
from ubt import leak, leak_report, leak_rules
from ubt.leak_stacks import GenMaps
from ubt.maps_tracker import MapsTracker
from ubt.leak_report import StackTotal
from ubt.trace import StackTrace
from unwind.unwinder import StopReason


def _bare_capture() -> LeakCapture:
    cap = LeakCapture.__new__(LeakCapture)
    cap._links = []
    cap._prog = SimpleNamespace(prog_fd=3)  # type: ignore[assignment]
    return cap


def test_return_probes_attach_before_entry_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, bool]] = []

    def link(fd: int, path: str, offsets: list[int], cookies: list[int],
             retprobe: bool = False, pid: int = 0) -> tuple[str, bool]:
        made.append((path, retprobe))
        return (path, retprobe)

    monkeypatch.setattr(leak_capture, "UprobeMultiLink", link)
    monkeypatch.setattr(leak_capture, "file_offsets", lambda path, addrs: list(addrs))
    probes = [LeakProbe("/a", 1, alloc_cookie(0)), LeakProbe("/a", 2, free_cookie(0)),
              LeakProbe("/b", 3, alloc_cookie(1))]
    _bare_capture()._attach(probes, 1)
    assert made == [("/a", True), ("/b", True), ("/a", False), ("/b", False)]


def _end_line(counters: dict[str, int], **learnt: int) -> str:
    capture: Any = SimpleNamespace(counters=lambda: {
        **dict.fromkeys((*COUNTERS, "rules_full"), 0), **counters})
    learner: Any = SimpleNamespace(**{**dict(snapshots=0, truncated=0, incomplete=0,
                                             no_maps=0, late_maps=0), **learnt})
    err = io.StringIO()
    with redirect_stderr(err):
        leak._end_line(capture, learner)
    return err.getvalue()


def test_end_line_shows_nested_only_when_there_are_some() -> None:
    assert "nested" not in _end_line({}) and "inside another" not in _end_line({})
    assert "7 allocator calls inside another one (not tracked)" in _end_line({"nested": 7})


def test_full_rules_and_stacks_maps_are_counted_not_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, key: bytes, value: bytes) -> None:
        raise BpfError(errno.E2BIG, "Argument list too long")

    monkeypatch.setattr(leak_capture, "map_update", full)
    cap = _bare_capture()
    cap._fds = {"rules": 1, "stacks": 2}
    cap.rules_full = cap.stacks_full = 0
    cap.add_rules([(0x1000, 16, 0, 0), (0x2000, 8, 0, 0)], 0)
    cap.add_stack(5, 0, (0x1000, 0x2000), 0, 0)
    assert (cap.rules_full, cap.stacks_full) == (2, 1)
    line = _end_line({"stacks_full": 3, "rules_full": 2})
    assert "3 stacks not kept (map full)" in line
    assert "2 unwind rules not kept (map full)" in line


def test_a_stack_not_kept_is_reported_as_such() -> None:
    totals = [StackTotal(7, 100, 2, 0)]
    text = leak_report.render_text(totals, 10, lambda sid: None, "t")
    assert "100 bytes in 2 allocations" in text
    assert "stack not kept: the stacks map was full" in text
    _, doc = map(json.loads, leak_report.render_json(totals, 10, lambda sid: None, 1,
                                                     {}).splitlines())
    assert doc == {"report": 1, "stack": None, "unknown": "not kept: the stacks map was full",
                   "bytes": 100, "count": 2, "oldest_ms": 0}


def test_json_report_is_a_header_then_its_stacks() -> None:
    """An empty report is its header alone; the header says how many stacks there were and how
    many follow, and each of those carries the report's number."""
    head = {"time": 1.5, "at_exit": False}
    assert leak_report.render_json([], 10, lambda sid: None, 3, head) == \
        '{"report": 3, "stacks": 0, "shown": 0, "time": 1.5, "at_exit": false}\n'
    trace = StackTrace((), StopReason.END_OF_STACK)
    totals = [StackTotal(7, 100, 2, 5_000_000), StackTotal(9, 50, 1, 0)]
    text = leak_report.render_json(totals, 1, lambda sid: trace, 4, head)
    assert [json.loads(line) for line in text.splitlines()] == [
        {"report": 4, "stacks": 2, "shown": 1, "time": 1.5, "at_exit": False},
        {"report": 4, "stack": [], "bytes": 100, "count": 2, "oldest_ms": 5}]


def test_learner_forgets_snapshots_no_live_allocation_uses() -> None:
    learner = leak.Learner.__new__(leak.Learner)
    learner.resolved, learner._settled = {1: 11, 2: 21, 3: 31}, 0
    learner.prune([PENDING | 2, 55])        # 1-3 resolved since the last report: all kept
    assert learner.resolved == {1: 11, 2: 21, 3: 31}
    learner.resolved[4] = 41
    learner.prune([PENDING | 2, PENDING | 4])
    assert learner.resolved == {2: 21, 4: 41}   # 1 and 3 unused; 4 is new: kept anyway
    learner.prune([])
    assert learner.resolved == {}


def test_unknown_stacks_are_told_apart_by_cause() -> None:
    """Pending ids: resolved (11), dropped for no maps (2), lost (3: read up to 4, some lost),
    not read yet (9)."""
    ids = [PENDING | 1, PENDING | 2, PENDING | 3, PENDING | 9]
    live = LiveAllocations(array("Q", [1, 2, 3, 4]), array("Q", [10, 20, 30, 40]),
                           array("Q", [5] * 4), array("Q", ids))
    resolved = {1: 11, 2: leak_report.NO_MAPS_STACK, 4: 41}
    sel = leak_report.Selection(100, 0, 0)
    got = {t.stack_id: t.bytes for t in leak_report.aggregate(live, resolved, sel, "bytes", 4)}
    assert got == {11: 10, leak_report.NO_MAPS_STACK: 20, leak_report.UNKNOWN_STACK: 30,
                   leak_report.UNREAD_STACK: 40}
    none_lost = leak_report.aggregate(live, resolved, sel, "bytes", 4, lost=False)
    assert {t.stack_id: t.bytes for t in none_lost}[leak_report.UNREAD_STACK] == 70
    text = leak_report.render_text(leak_report.aggregate(live, resolved, sel, "bytes", 4), 10,
                                   lambda sid: StackTrace((), StopReason.END_OF_STACK), "t")
    assert ("stack unknown: its snapshot was lost (ring buffer full, or buffers held by a "
            "preempted call)") in text
    assert "stack unknown: its snapshot was not read yet" in text
    assert "stack unknown: its snapshot was dropped (the process was gone" in text


def test_one_stack_in_two_generations_is_one_entry() -> None:
    """Ids of one identity add up (bytes, counts, the oldest age) under the larger's id."""
    totals = [StackTotal(1, 100, 1, 50), StackTotal(3, 40, 2, 90), StackTotal(5, 60, 1, 10)]
    identity = {1: "a", 3: "a", 5: "b"}.__getitem__
    assert leak_report.combine(totals, identity) == [StackTotal(1, 140, 3, 90),
                                                     StackTotal(5, 60, 1, 10)]
    assert leak_report.combine(totals, identity, "count")[0] == StackTotal(1, 140, 3, 90)


def test_maps_read_three_steps_after_a_snapshot_are_late() -> None:
    """A reading is kept for the snapshot's generation up to 2 steps later (a dlopen or a
    dlclose completing); 3 steps (a dlclose and a dlopen started, an exec) make it late."""
    now = [5]
    gens = GenMaps(MapsTracker(), lambda: now[0])
    pid = os.getpid()
    pc = int(Path(f"/proc/{pid}/maps").read_text().split("-", 1)[0], 16)  # mapped, maybe not code
    version, late = gens.reread(pid, 5)
    assert version is not None and not late and gens.text(5) == version.text
    now[0] = 7
    assert gens.reread(pid, 5)[1] is False and gens.reading(pid, 6, pc)[1] is False
    assert gens.text(6) is not None
    now[0] = 8
    assert gens.reread(pid, 5)[1] is True and gens.reading(pid, 4, pc) == (version, True)
    assert gens.text(4) is None and gens.text(5) == version.text


def test_allocator_and_generation_do_not_cancel_out() -> None:
    """The allocator index and the map generation are hashed in separate steps: XORed into one
    (malloc in generation 5, calloc in generation 4) gave one id to two stacks (review)."""
    pcs = (0x401000, 0x401234)
    assert leak_rules.stack_hash(0, pcs, 0, 5) != leak_rules.stack_hash(1, pcs, 0, 4)
    assert len({leak_rules.stack_hash(a, pcs, 0, g) for a in range(8) for g in range(8)}) == 64
