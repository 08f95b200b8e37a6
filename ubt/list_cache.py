"""On-disk cache of `ubt list` answers, so that a warm listing reads no ELF or DWARF at all.

Two kinds of file under ``<cache root>/list/``:

- ``<build-id>.v1``, per module that answered: (kind, pattern) → the rows listed. A build-id
  names the code and its debug info, so these never go stale.
- ``resolve-<hash>.v1``, per binary (hash of its path, size and mtime): (kind, pattern) → the
  module that defines the pattern (the binary or one of its libraries), with that module's size,
  mtime and build-id; an entry whose module changed on disk is ignored.

Files are replaced atomically (`symbolizer.dwarf_store.write_atomic`); an unreadable or
unwritable cache only costs the speed-up.
"""
from __future__ import annotations

import hashlib
import marshal
import os
from typing import Any

from symbolizer.dwarf_store import write_atomic

_MAGIC = "ubt-list-1"
Key = tuple[str, str]


class ListCache:
    """The listing cache under `cache_root` (``list/``)."""

    def __init__(self, cache_root: str) -> None:
        self._dir = os.path.join(cache_root, "list")

    def get(self, binary: str, pattern: str, kind: str) -> tuple[str, list[Any]] | None:
        """(module, rows) cached for `pattern` in `binary`, None when absent or stale."""
        resolved = self._load(self._resolve_path(binary)).get((kind, pattern))
        if resolved is None:
            return None
        module, identity, build_id = resolved
        if _identity(module) != identity:
            return None
        rows = self._load(self._rows_path(build_id)).get((kind, pattern))
        return None if rows is None else (module, rows)

    def put(self, binary: str, pattern: str, kind: str, module: str, rows: list[Any]) -> None:
        """Remember that `module` answered `pattern` for `binary` with `rows`."""
        from symbolizer.elf import ElfFormatError, ElfImage

        try:
            build_id = ElfImage(module).build_id
        except (ElfFormatError, OSError):
            return
        if not build_id:
            return                      # nothing names the answer across rebuilds
        self._update(self._rows_path(build_id), (kind, pattern), rows)
        self._update(self._resolve_path(binary), (kind, pattern),
                     (module, _identity(module), build_id))

    def _resolve_path(self, binary: str) -> str:
        key = f"{binary}\0{_identity(binary)}".encode()
        return os.path.join(self._dir, f"resolve-{hashlib.sha256(key).hexdigest()[:32]}.v1")

    def _rows_path(self, build_id: str) -> str:
        return os.path.join(self._dir, f"{build_id}.v1")

    @staticmethod
    def _load(path: str) -> dict[Key, Any]:
        try:
            with open(path, "rb") as f:
                magic, entries = marshal.loads(f.read())
        except (OSError, ValueError, EOFError, TypeError):
            return {}
        return entries if magic == _MAGIC and isinstance(entries, dict) else {}

    def _update(self, path: str, key: Key, value: Any) -> None:
        entries = self._load(path)
        entries[key] = value
        try:
            write_atomic(path, marshal.dumps((_MAGIC, entries)))
        except (OSError, ValueError):
            pass


def _identity(path: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
