"""The on-disk cache, laid out and aged exactly as libdebuginfod 0.188 does it.

``<root>/<build-id>/<name>`` (names from `debuginfod.artifact`) holds a fetched file; an *empty*
file there is a negative hit: the servers said 404 less than ``cache_miss_s`` seconds ago (by its
mtime), so they are not asked again. Control files in the root hold the ages in seconds and are
created with the defaults when first needed:

- ``cache_miss_s`` (600): how long a negative hit is believed;
- ``cache_clean_interval_s`` (86400): cleaning runs when this file's mtime is older than that,
  and touches it afterwards;
- ``max_unused_age_s`` (604800): cleaning deletes files not read (atime) for that long, then the
  build-id directories left empty.

Concurrent runs (ubt, gdb, debuginfod-find) never see half a file: a download goes to a
temporary file in the build-id directory and is renamed over the target; a negative hit is
created with O_EXCL so it never replaces a real file. Fetched files are made read-only and never
executable (mode 0400, as elfutils does).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import BinaryIO

from .artifact import KINDS, Artifact

CACHE_MISS_S = ("cache_miss_s", 600)
CLEAN_INTERVAL_S = ("cache_clean_interval_s", 86400)
MAX_UNUSED_AGE_S = ("max_unused_age_s", 604800)


class State(Enum):
    """What the cache knows about one artifact."""

    HIT = "hit"            # a non-empty file: use it
    NEGATIVE = "negative"  # a recent empty file: the servers do not have it
    MISS = "miss"          # nothing (or an expired negative hit, now removed)


@dataclass(frozen=True, slots=True)
class Lookup:
    """The state of an artifact in the cache and the path it has (or would have) there."""

    state: State
    path: str


class PendingFile:
    """A temporary file being filled; `commit` renames it into place."""

    def __init__(self, file: BinaryIO, tmp_path: str, target: str) -> None:
        self.file = file
        self.tmp_path = tmp_path
        self.target = target
        self.mtime: float | None = None  # the server's Last-Modified, kept like curl's filetime
        self.committed = False

    def commit(self) -> str:
        """Close, make read-only, rename over the target; returns the target path."""
        self.file.close()
        os.chmod(self.tmp_path, 0o400)
        if self.mtime is not None:
            os.utime(self.tmp_path, (time.time(), self.mtime))
        os.replace(self.tmp_path, self.target)
        self.committed = True
        return self.target


class DebuginfodCache:
    """One cache root. Creating it touches nothing; directories appear on first write."""

    def __init__(self, root: str) -> None:
        self.root = root

    # -- paths and lookups -----------------------------------------------------------------

    def path(self, artifact: Artifact) -> str:
        """``<root>/<build-id>/<name>``; the name never contains '/' (see `artifact`)."""
        path = os.path.join(self.root, artifact.build_id, artifact.cache_name)
        if os.path.dirname(path) != os.path.join(self.root, artifact.build_id):
            raise ValueError(f"cache name escapes its directory: {artifact.cache_name!r}")
        return path

    def lookup(self, artifact: Artifact, now: float | None = None) -> Lookup:
        """HIT, NEGATIVE or MISS; an expired negative hit is removed (and reads as MISS)."""
        path = self.path(artifact)
        try:
            st = os.stat(path)
        except OSError:
            return Lookup(State.MISS, path)
        now = time.time() if now is None else now
        if st.st_size > 0:
            _touch_atime(path, st.st_mtime, now)
            return Lookup(State.HIT, path)
        if now - st.st_mtime <= self.control(*CACHE_MISS_S):
            return Lookup(State.NEGATIVE, path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return Lookup(State.MISS, path)

    # -- writing -------------------------------------------------------------------------------

    def _build_id_dir(self, artifact: Artifact) -> str:
        directory = os.path.join(self.root, artifact.build_id)
        os.makedirs(self.root, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        return directory

    @contextmanager
    def writer(self, artifact: Artifact) -> Iterator[PendingFile]:
        """A temporary file next to the target; removed unless `PendingFile.commit` ran."""
        directory = self._build_id_dir(artifact)
        fd, tmp = tempfile.mkstemp(prefix=artifact.cache_name[:200] + ".", dir=directory)
        pending = PendingFile(os.fdopen(fd, "wb"), tmp, self.path(artifact))
        try:
            yield pending
        finally:
            if not pending.committed:
                pending.file.close()
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass

    def record_miss(self, artifact: Artifact) -> None:
        """Leave a negative hit, unless some other run has stored the real file meanwhile."""
        directory = self._build_id_dir(artifact)
        try:
            fd = os.open(os.path.join(directory, artifact.cache_name),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return
        os.close(fd)

    # -- control files and cleaning ----------------------------------------------------------

    def control(self, name: str, default: int) -> int:
        """The number in control file `name`, written with `default` if missing or garbled."""
        path = os.path.join(self.root, name)
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            pass
        try:
            os.makedirs(self.root, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=name + ".", dir=self.root)
            with os.fdopen(fd, "w") as f:
                f.write(str(default))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache still works with the defaults
        return default

    def clean_if_due(self, now: float | None = None) -> int:
        """Clean when ``cache_clean_interval_s`` has passed since the last cleaning (by the
        mtime of that file); returns how many files were deleted."""
        now = time.time() if now is None else now
        interval = self.control(*CLEAN_INTERVAL_S)
        stamp = os.path.join(self.root, CLEAN_INTERVAL_S[0])
        try:
            if now - os.stat(stamp).st_mtime < interval:
                return 0
        except OSError:
            return 0
        removed = self.clean(now - self.control(*MAX_UNUSED_AGE_S))
        try:
            os.utime(stamp, (now, now))
        except OSError:
            pass
        return removed

    def clean(self, unused_since: float) -> int:
        """Delete cached files last read before `unused_since`, then empty build-id dirs."""
        removed = 0
        try:
            dirs = [e for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)
                    and _is_hex(e.name)]
        except OSError:
            return 0
        for d in dirs:
            try:
                entries = list(os.scandir(d.path))
            except OSError:
                continue
            for e in entries:
                if not e.name.startswith(KINDS) or not e.is_file(follow_symlinks=False):
                    continue
                try:
                    if e.stat(follow_symlinks=False).st_atime < unused_since:
                        os.unlink(e.path)
                        removed += 1
                except OSError:
                    continue
            try:
                os.rmdir(d.path)  # only succeeds when empty
            except OSError:
                pass
        return removed


def _is_hex(name: str) -> bool:
    return bool(name) and all(c in "0123456789abcdef" for c in name)


def _touch_atime(path: str, mtime: float, now: float) -> None:
    """Mark a hit as used, so cleaning keeps it even on a noatime mount."""
    try:
        os.utime(path, (now, mtime))
    except OSError:
        pass
