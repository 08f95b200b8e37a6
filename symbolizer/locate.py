"""Finding the DWARF for a binary: the file itself, the build-id tree, `.gnu_debuglink`, hooks.

Distributions ship debug info separately: Debian's `-dbg`/`-dbgsym` packages install
``/usr/lib/debug/.build-id/xx/rest.debug``; older packages and hand-made splits use
``.gnu_debuglink`` (a base name plus the CRC32 of the debug file); dwz moves DWARF shared between
files into a supplementary "alt" file named by ``.gnu_debugaltlink``. Hooks (debuginfod) are tried
last, by build-id; they also give the executable of a module whose own file is gone
(`find_executable`). Every candidate is verified (build-id or CRC) so a stale file is never used.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .elf import AltLink, ElfFormatError, ElfImage, open_image

DEFAULT_DEBUG_ROOT = "/usr/lib/debug"

#: ``hook(build_id, kind) -> path | None``; `kind` is "debuginfo" or "executable" (debuginfod's
#: names).
DebugHook = Callable[[str, str], "str | None"]


@dataclass(frozen=True, slots=True)
class DebugFiles:
    """Where a binary's DWARF lives: `debug_path` (None when nowhere) and the dwz alt file."""

    debug_path: str | None
    alt_path: str | None


def file_crc32(path: str) -> int:
    """CRC32 of a file's contents as `.gnu_debuglink` records it (zlib's polynomial)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def build_id_path(root: str, build_id: str) -> str:
    """``root/.build-id/xx/rest.debug`` for a hex build-id."""
    return os.path.join(root, ".build-id", build_id[:2], build_id[2:] + ".debug")


def default_hooks() -> list[DebugHook]:
    """The process-wide debuginfod client when DEBUGINFOD_URLS is set (imported only then)."""
    if not os.environ.get("DEBUGINFOD_URLS", "").strip():
        return []
    from debuginfod.hook import shared_hook
    hook = shared_hook()
    return [] if hook is None else [hook]


class DebugInfoLocator:
    """Finds debug files; stateless apart from its configuration, so callers cache by build-id.

    :param debug_roots: global debug directories, ``/usr/lib/debug`` by default.
    :param hooks: extra finders tried last; None: `default_hooks()` (debuginfod when
        DEBUGINFOD_URLS is set). `add_hook` appends more.
    """

    def __init__(self, debug_roots: tuple[str, ...] = (DEFAULT_DEBUG_ROOT,),
                 hooks: list[DebugHook] | None = None) -> None:
        self.debug_roots = debug_roots
        self.hooks: list[DebugHook] = default_hooks() if hooks is None else list(hooks)

    def add_hook(self, hook: DebugHook) -> None:
        """Register a finder consulted after the local ones."""
        self.hooks.append(hook)

    def find(self, image: ElfImage, origin: str | None = None) -> DebugFiles:
        """The debug file (and dwz alt file) for `image`.

        :param origin: the path the binary is known by, when `image.path` is a stand-in (a
            ``/proc/PID/map_files`` link); `.gnu_debuglink` is searched relative to it.
        """
        debug = self._find_debug(image, origin or image.path)
        if debug is None:
            return DebugFiles(None, None)
        return DebugFiles(debug.path, self._find_alt(debug))

    def _find_debug(self, image: ElfImage, origin: str) -> ElfImage | None:
        if image.has_dwarf:
            return image
        if image.build_id:
            for root in self.debug_roots:
                found = _open_if(build_id_path(root, image.build_id), image.build_id)
                if found is not None:
                    return found
        if image.debuglink is not None:
            for candidate in self._debuglink_candidates(origin, image.debuglink.name):
                if _crc_matches(candidate, image.debuglink.crc):
                    found = _open_if(candidate, None)
                    if found is not None:
                        return found
        if image.build_id:
            for path in self._from_hooks(image.build_id):
                found = _open_if(path, image.build_id)
                if found is not None:
                    return found
        return None

    def _debuglink_candidates(self, origin: str, name: str) -> Iterator[str]:
        """GDB's order: next to the binary, its `.debug/` subdirectory, then under each
        debug root mirroring the binary's directory."""
        directory = os.path.dirname(os.path.realpath(origin))
        own = os.path.realpath(origin)
        candidates = [os.path.join(directory, name), os.path.join(directory, ".debug", name)]
        candidates += [os.path.join(root + directory, name) for root in self.debug_roots]
        for path in candidates:
            if os.path.realpath(path) != own and os.path.isfile(path):
                yield path

    def find_executable(self, build_id: str) -> str | None:
        """A file holding the code of build-id `build_id`, for a module whose own file is gone
        (deleted, replaced by another build, or on another machine): asked of the hooks
        (debuginfod's ``/executable``) and used only if its build-id is that one."""
        for path in self._from_hooks(build_id, "executable"):
            if _open_if(path, build_id) is not None:
                return path
        return None

    def _find_alt(self, debug: ElfImage) -> str | None:
        link: AltLink | None = debug.altlink
        if link is None:
            return None
        candidates = [os.path.join(os.path.dirname(debug.path), link.name)]
        candidates += [build_id_path(root, link.build_id) for root in self.debug_roots]
        candidates += list(self._from_hooks(link.build_id))
        for path in candidates:
            if _open_if(path, link.build_id) is not None:
                return path
        return None

    def _from_hooks(self, build_id: str, kind: str = "debuginfo") -> Iterator[str]:
        for hook in self.hooks:
            try:
                path = hook(build_id, kind)
            except Exception:  # a failing plug-in (network, cache) must not stop symbolization
                continue
            if path:
                yield path


def _open_if(path: str, build_id: str | None) -> ElfImage | None:
    """`path` as an ELF image if it exists, parses, and has `build_id` (when one is given)."""
    if not os.path.isfile(path):
        return None
    try:
        image = open_image(path)
    except ElfFormatError:
        return None
    if build_id is not None and image.build_id != build_id:
        return None
    return image


def _crc_matches(path: str, crc: int) -> bool:
    try:
        return file_crc32(path) == crc
    except OSError:
        return False
