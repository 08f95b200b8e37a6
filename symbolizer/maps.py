"""`/proc/PID/maps` as values: one `MapEntry` per line, searchable by absolute address.

The text is kept as captured (a `Snapshot` carries it) so everything downstream can run offline;
`ModuleSet` (symbolizer.module) groups file-backed entries into modules.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

DELETED_SUFFIX = " (deleted)"


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One mapping: [start, end) with permissions, file offset and backing path.

    :param path: the pathname column as the kernel prints it (``""`` for anonymous memory,
        ``[vdso]``, ``[stack]``..., or a file path possibly ending in `` (deleted)``).
    """

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    @classmethod
    def parse(cls, line: str) -> MapEntry:
        """Parse one maps line. :raises ValueError: malformed line."""
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            raise ValueError(f"malformed maps line: {line!r}")
        lo, _, hi = fields[0].partition("-")
        return cls(start=int(lo, 16), end=int(hi, 16), perms=fields[1], offset=int(fields[2], 16),
                   dev=fields[3], inode=int(fields[4]),
                   path=fields[5].rstrip("\n").strip() if len(fields) > 5 else "")

    @property
    def is_file(self) -> bool:
        """Backed by a file (an inode), as opposed to anonymous or ``[pseudo]`` memory."""
        return self.inode != 0 and self.path.startswith("/")

    @property
    def is_deleted(self) -> bool:
        """The file was unlinked (or replaced) after it was mapped."""
        return self.is_file and self.path.endswith(DELETED_SUFFIX)

    @property
    def file_path(self) -> str:
        """The path without the `` (deleted)`` marker."""
        return self.path[:-len(DELETED_SUFFIX)] if self.is_deleted else self.path


class ProcessMaps:
    """All mappings of a process, sorted by start address."""

    def __init__(self, entries: list[MapEntry]) -> None:
        self.entries = sorted(entries, key=lambda e: e.start)
        self._starts = [e.start for e in self.entries]

    @classmethod
    def from_text(cls, text: str) -> ProcessMaps:
        """Parse the text of a maps file; blank lines are skipped.

        :raises ValueError: a malformed line.
        """
        return cls([MapEntry.parse(line) for line in text.splitlines() if line.strip()])

    @classmethod
    def from_pid(cls, pid: int) -> ProcessMaps:
        """Read ``/proc/PID/maps`` now.

        :raises OSError: no such process or not permitted.
        """
        with open(f"/proc/{pid}/maps") as f:
            return cls.from_text(f.read())

    def find(self, abs_addr: int) -> MapEntry | None:
        """The mapping holding `abs_addr`, or None."""
        i = bisect.bisect_right(self._starts, abs_addr) - 1
        if i >= 0 and abs_addr < self.entries[i].end:
            return self.entries[i]
        return None

    def __iter__(self) -> Iterator[MapEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)
