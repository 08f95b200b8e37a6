"""`ubt leak`'s user side without BPF: probe attach order, the end line's counters."""
from __future__ import annotations

import io
from contextlib import redirect_stderr
from types import SimpleNamespace
from typing import Any

import pytest

from bpf_progs import leak_capture
from bpf_progs.leak_capture import COUNTERS, LeakCapture, LeakProbe, alloc_cookie, free_cookie
from ubt import leak


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
    capture: Any = SimpleNamespace(counters=lambda: {**dict.fromkeys(COUNTERS, 0), **counters})
    learner: Any = SimpleNamespace(**{**dict(snapshots=0, truncated=0, incomplete=0,
                                             no_maps=0), **learnt})
    err = io.StringIO()
    with redirect_stderr(err):
        leak._end_line(capture, learner)
    return err.getvalue()


def test_end_line_shows_nested_only_when_there_are_some() -> None:
    assert "nested" not in _end_line({}) and "inside another" not in _end_line({})
    assert "7 allocator calls inside another one (not tracked)" in _end_line({"nested": 7})
