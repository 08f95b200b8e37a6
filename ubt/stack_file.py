"""Saved snapshots: `ubt stack --save FILE` writes them, `ubt stack --load FILE` replays them.

One `Snapshot` per line as JSON (`Snapshot.to_json`). Each carries the build-id of every module
of its memory map, read while the process still ran: on replay (later, after an upgrade, on
another machine) a file that is gone or now holds another build is not used; the module's code
is fetched by that build-id instead (debuginfod's executable, when DEBUGINFOD_URLS is set), so
the unwind tables and names are those of the code that ran.
"""
from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import IO, Protocol

from symbolizer.module import ModuleSet

from .errors import UbtError
from .snapshot import Snapshot


class _ModuleSource(Protocol):
    """What the saver needs of the pipeline: the modules of a snapshot's memory map."""

    def modules(self, snap: Snapshot) -> ModuleSet: ...


def load(path: str) -> list[Snapshot]:
    """The snapshots saved in `path`, in order.

    :raises UbtError: the file cannot be read, or a line is not a saved snapshot.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UbtError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    snaps = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            snaps.append(Snapshot.from_json(line))
        except ValueError as e:
            raise UbtError(f"{path}: line {n}: not a saved ubt snapshot ({e})") from None
    if not snaps:
        raise UbtError(f"{path}: no snapshots in it")
    return snaps


class Saver:
    """Writes snapshots with their modules' build-ids to a file; does nothing without one.

    The file is opened at once (an unwritable path fails before the target is stopped) and
    each snapshot is written as it comes, so an interrupted run keeps what it captured.
    """

    def __init__(self, path: str | None, pipeline: _ModuleSource) -> None:
        self._pipeline = pipeline
        self._path = path
        self._file: IO[str] | None = None
        if path is not None:
            try:
                self._file = open(path, "w", encoding="utf-8")
            except OSError as e:
                raise UbtError(f"{path}: {e.strerror or e}") from None

    def __enter__(self) -> Saver:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()

    def add(self, snap: Snapshot) -> None:
        """Save `snap` with the build-ids of its modules (read now, while the files exist)."""
        if self._file is None:
            return
        build_ids = {m.start: m.build_id for m in self._pipeline.modules(snap) if m.build_id}
        try:
            self._file.write(dataclasses.replace(snap, build_ids=build_ids).to_json() + "\n")
            self._file.flush()
        except OSError as e:  # a full disk, a quota
            raise UbtError(f"{self._path}: {e.strerror or e}") from None
