"""A one-line download progress indicator on stderr.

Downloads of debug info can take seconds to minutes; a silent pause looks like a hang. The line
is drawn only when someone can see it (stderr is a terminal) or when DEBUGINFOD_PROGRESS asks for
it, as libdebuginfod's default progress function does; it is redrawn at most ten times a second
and erased when the download ends, so it never mixes with the tool's output.
"""
from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

_REDRAW_S = 0.1
_BAR = 20


class Progress(Protocol):
    """Receives the state of one download at a time."""

    def start(self, label: str, total: int | None) -> None: ...

    def update(self, received: int) -> None: ...

    def finish(self) -> None: ...


def human_size(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number ≥ 1: ``1.5 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class ProgressLine:
    """Draws ``ubt: debuginfod: LABEL [#####     ] 1.2 MiB/2.4 MiB`` with carriage returns."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._label = ""
        self._total: int | None = None
        self._drawn_at = 0.0
        self._width = 0

    def start(self, label: str, total: int | None) -> None:
        self._label, self._total, self._drawn_at = label, total, 0.0
        self._draw(0)

    def update(self, received: int) -> None:
        now = time.monotonic()
        if now - self._drawn_at >= _REDRAW_S:
            self._drawn_at = now
            self._draw(received)

    def finish(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _draw(self, received: int) -> None:
        if self._total:
            filled = min(_BAR, received * _BAR // self._total)
            amount = f"[{'#' * filled}{' ' * (_BAR - filled)}] " \
                     f"{human_size(received)}/{human_size(self._total)}"
        else:
            amount = human_size(received)
        text = f"ubt: debuginfod: {self._label} {amount}"
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)


def make_progress(forced: bool, stream: TextIO | None = None) -> Progress | None:
    """A `ProgressLine` on `stream` (stderr) when it is a terminal or `forced`; else None."""
    out = sys.stderr if stream is None else stream
    try:
        visible = out.isatty()
    except (ValueError, AttributeError):
        visible = False
    return ProgressLine(out) if visible or forced else None
