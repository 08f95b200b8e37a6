"""Sections from files already in the cache: libdebuginfod 0.188's ``cache_find_section``.

A ``/section/NAME`` request is answered locally when the cache holds the build-id's
``debuginfo`` or ``executable`` and that file has the section with contents: the section's raw
bytes (compressed ones stay compressed, as ``elf_rawdata`` gives them) are written to
``<build-id>/section-NAME``, where the server's answer would have gone. The order and the
meaning of each outcome are elfutils':

1. the debuginfo, when cached: the section there is the answer; a section it does not have at
   all is *confirmed absent* (no server is asked); one it has as NOBITS (stripped into the
   executable, e.g. ``.text``) sends us on to
2. the executable, when cached: the section there is the answer; a section it lacks is absent
   only if the debuginfo was there too (else the debuginfo, not yet fetched, may have it);
3. otherwise (nothing cached, NOBITS everywhere, an unreadable file) the servers are asked.

A cached file whose build-id is not the one asked for (put there by another tool) is not read.
"""
from __future__ import annotations

from enum import Enum

from symbolizer.elf import ElfFormatError, ElfImage

from .artifact import Artifact
from .cache import DebuginfodCache, State


class Outcome(Enum):
    """What the cache can say about a section without a server."""

    ABSENT = "absent"    # confirmed: the cached debuginfo has no such section
    UNKNOWN = "unknown"  # ask the servers


def _parent(cache: DebuginfodCache, build_id: str, kind: str) -> ElfImage | None:
    """The cached debuginfo or executable of `build_id` as an ELF image, if usable."""
    found = cache.lookup(Artifact.make(build_id, kind))
    if found.state is not State.HIT:
        return None
    try:
        image = ElfImage(found.path)
    except ElfFormatError:
        return None
    return image if image.build_id == build_id else None


def _extract(cache: DebuginfodCache, image: ElfImage, artifact: Artifact) -> str | None:
    """Write the section's bytes to its cache file; None when `image` has no contents for it."""
    name = artifact.arg or ""
    if image.section_type(name) in (None, "SHT_NOBITS"):
        return None
    try:
        data = image.section_data(name)
    except ElfFormatError:
        return None
    if data is None:
        return None
    with cache.writer(artifact) as pending:
        pending.file.write(data)
        return pending.commit()


def cached_section(cache: DebuginfodCache, artifact: Artifact) -> str | Outcome:
    """The path of the section file extracted from a cached parent, or why there is none.

    :raises OSError: the section file cannot be written.
    """
    name = artifact.arg or ""
    debuginfo = _parent(cache, artifact.build_id, "debuginfo")
    if debuginfo is not None:
        path = _extract(cache, debuginfo, artifact)
        if path is not None:
            return path
        if debuginfo.section_type(name) is None:
            return Outcome.ABSENT
    executable = _parent(cache, artifact.build_id, "executable")
    if executable is not None:
        path = _extract(cache, executable, artifact)
        if path is not None:
            return path
        if debuginfo is not None and executable.section_type(name) is None:
            return Outcome.ABSENT
    return Outcome.UNKNOWN
