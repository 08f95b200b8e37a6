"""The memory map of every traced process, kept from its first hit to after it has exited.

A hit is unwound and symbolized with the mappings that were live when it fired, but that work
happens later, off the ring-buffer drain, when a short-lived process may be gone. So the text of
`/proc/PID/maps` is read at the first hit of a pid (on the drain path, while the process almost
certainly still runs), again when a hit's pc lies outside what was read (an `exec` or a
`dlopen` since), and at exit for `-c` children (the launcher stops them there). Hits keep the
text current at their arrival; a later re-read never changes what an earlier hit resolves with.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MapsVersion:
    """One reading of a process's maps: its text, and the executable ranges for quick checks."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> MapsVersion:
        ranges = []
        for line in text.splitlines():
            fields = line.split(None, 2)
            if len(fields) >= 2 and "x" in fields[1]:
                lo, _, hi = fields[0].partition("-")
                ranges.append((int(lo, 16), int(hi, 16)))
        ranges.sort()
        return cls(text, tuple(r[0] for r in ranges), tuple(r[1] for r in ranges))

    def covers(self, pc: int) -> bool:
        """True when `pc` is inside an executable mapping of this reading."""
        i = bisect.bisect_right(self.starts, pc) - 1
        return i >= 0 and pc < self.ends[i]


class MapsTracker:
    """pid → the newest `MapsVersion`; thread-safe (the drain and the launcher both update it)."""

    def __init__(self) -> None:
        self._maps: dict[int, MapsVersion] = {}
        self._lock = threading.Lock()
        self.unreadable: set[int] = set()

    def for_hit(self, pid: int, pc: int) -> MapsVersion | None:
        """The maps to resolve a hit at `pc` with: the known ones if they cover `pc`, else a
        fresh reading (None when the process is gone and nothing covering `pc` was ever read)."""
        with self._lock:
            known = self._maps.get(pid)
        if known is not None and known.covers(pc):
            return known
        fresh = self.refresh(pid)
        return fresh if fresh is not None else known

    def latest(self, pid: int) -> MapsVersion | None:
        """The newest reading of `pid`'s maps (e.g. the one taken at its exit), if any."""
        with self._lock:
            return self._maps.get(pid)

    def refresh(self, pid: int) -> MapsVersion | None:
        """Read /proc/PID/maps now; None (and the pid remembered as unreadable) if it is gone."""
        try:
            with open(f"/proc/{pid}/maps") as f:
                text = f.read()
        except OSError:
            text = ""
        if not text:  # gone, or a zombie (whose maps read as empty): keep the last reading
            with self._lock:
                self.unreadable.add(pid)
            return None
        version = MapsVersion.parse(text)
        with self._lock:
            self._maps[pid] = version
        return version
