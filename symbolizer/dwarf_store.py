"""Persistence of a DWARF index: what has been built, and the cache file that keeps it.

The cache file (`dwarf/<build-id>.v1` under the cache root; `dwarf/path-<hash>.v1` keyed by
path, size and mtime without a build-id) is one `marshal` document: the unit address map and,
per unit built so far, its `CuIndex` blob or the error that unit raised. Blobs are decoded only
when a lookup reaches their unit. Saving merges with the file as it is on disk and replaces it
atomically (temporary file + `os.replace`), so concurrent runs never see half a file and never
lose each other's units.
"""
from __future__ import annotations

import hashlib
import marshal
import os
import tempfile
from array import array

from symbolizer.dwarf_aranges import CuMap
from unwind.cfi import cache_root  # one cache root for the project
from symbolizer.dwarf_cu import CuIndex

_MAGIC = "ubt-dwarf-index-1"


def cache_file(debug_path: str, build_id: str | None, cache_dir: str | None) -> str | None:
    """Where the index of `debug_path` is cached; None when the file cannot be stat'ed."""
    root = os.path.join(cache_root(cache_dir), "dwarf")
    if build_id:
        return os.path.join(root, f"{build_id}.v1")
    try:
        st = os.stat(debug_path)
    except OSError:
        return None
    key = f"{os.path.abspath(debug_path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return os.path.join(root, f"path-{hashlib.sha256(key).hexdigest()[:32]}.v1")


class IndexStore:
    """The units of one index: decoded (`cus`), persisted (`blobs`) or broken (`errors`).

    :param has_alt: whether the index was built with its dwz alt file; a cache built without
        it (names from the alt file missing) is not reused once the alt file is there.
    """

    def __init__(self, path: str | None, has_alt: bool, cu_map: CuMap,
                 blobs: dict[int, bytes], errors: dict[int, str]) -> None:
        self.path = path
        self.has_alt = has_alt
        self.cu_map = cu_map
        self.blobs = blobs
        self.errors = errors
        self.cus: dict[int, CuIndex] = {}
        self._unsaved = False

    @classmethod
    def load(cls, path: str, has_alt: bool) -> IndexStore | None:
        """The store cached at `path`; None when absent, unreadable or stale."""
        try:
            with open(path, "rb") as f:
                data = f.read()
            magic, alt, starts, ends, units, blobs, errors = marshal.loads(data)
        except (OSError, ValueError, EOFError, TypeError):
            return None
        if magic != _MAGIC or alt != has_alt:
            return None
        return cls(path, has_alt, CuMap(_arr(starts), _arr(ends), _arr(units)), blobs, errors)

    def add(self, offset: int, cu: CuIndex) -> None:
        """Record a newly built unit."""
        self.cus[offset] = cu
        self.blobs[offset] = b""            # encoded at save time
        self._unsaved = True

    def add_error(self, offset: int, message: str) -> None:
        """Record that a unit cannot be decoded."""
        self.errors[offset] = message
        self._unsaved = True

    def touch(self) -> None:
        """Mark the store as worth saving even without new units (a freshly built map)."""
        self._unsaved = True

    def save(self) -> None:
        """Write the store (merged with the file on disk) if it holds anything new."""
        if self.path is None or not self._unsaved:
            return
        for offset, blob in self.blobs.items():
            if not blob:
                self.blobs[offset] = self.cus[offset].to_blob()
        blobs, errors = dict(self.blobs), dict(self.errors)
        on_disk = IndexStore.load(self.path, self.has_alt)
        if on_disk is not None:
            for offset, blob in on_disk.blobs.items():
                blobs.setdefault(offset, blob)
            for offset, message in on_disk.errors.items():
                errors.setdefault(offset, message)
        m = self.cu_map
        write_atomic(self.path, marshal.dumps((
            _MAGIC, self.has_alt, m.starts.tobytes(), m.ends.tobytes(), m.units.tobytes(),
            blobs, errors)))
        self._unsaved = False

    def save_quietly(self) -> None:
        """`save`, for finalizers: a cache that cannot be written is only a lost speed-up."""
        try:
            self.save()
        except OSError:
            pass


def _arr(raw: bytes) -> array[int]:
    out = array("Q")
    out.frombytes(raw)
    return out


def write_atomic(path: str, payload: bytes) -> None:
    """Write `payload` to `path` through a temporary file and a rename (readers never see half
    a file), creating the directory."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
