"""Build-ids of ELF files: to name what to ask for, and to check what a server sent.

A server (or anyone between it and us) may send the wrong file; a debug file for another build
would give plausible but false function names and lines. So a downloaded debuginfo or executable
is kept only if its NT_GNU_BUILD_ID note equals the build-id asked for.
"""
from __future__ import annotations

from symbolizer.elf import ElfFormatError, ElfImage


def build_id_of(path: str) -> str:
    """The hex build-id of the ELF file at `path`.

    :raises ValueError: not a readable ELF file, or it has no build-id note.
    """
    try:
        build_id = ElfImage(path).build_id
    except (ElfFormatError, OSError) as e:
        raise ValueError(str(e) or f"{path}: not an ELF file") from None
    if not build_id:
        raise ValueError(f"{path}: no build-id note")
    return build_id


def mismatch(path: str, expected: str) -> str | None:
    """None if the file at `path` has build-id `expected`; else why it must be discarded."""
    try:
        found = build_id_of(path)
    except ValueError:
        return "not an ELF file with a build-id"
    return None if found == expected else f"has build-id {found}"
