"""What a client asks a debuginfod server for, and the two names each request has.

A request is (build-id, kind, argument): ``debuginfo`` and ``executable`` take none, ``source``
an absolute source path, ``section`` a section name. It has a URL path on the server and a file
name in the cache; both are spelt exactly as elfutils 0.188 spells them (checked against
`debuginfod-find`), so the two clients share one cache:

- URL: ``/buildid/ID/KIND`` plus, for a source, the path percent-escaped like
  ``curl_easy_escape`` with '/' kept, and for a section ``/NAME``;
- cache: ``ID/debuginfo``, ``ID/executable``, ``ID/source`` + escaped path,
  ``ID/section-`` + escaped name, where escaping turns '/' into ``##`` and '#' into ``#_``.
  No escaped name contains '/', so no argument can point outside its build-id directory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

KINDS = ("debuginfo", "executable", "source", "section")
_HEX = re.compile(r"[0-9a-f]+")
#: longest file name most Linux file systems accept (NAME_MAX)
NAME_MAX = 255


class BadRequest(ValueError):
    """The build-id, kind or argument cannot form a request; the message says why."""


def normalize_build_id(text: str) -> str:
    """A build-id as lowercase hex. :raises BadRequest: not an even number of hex digits."""
    build_id = text.strip().lower()
    if not _HEX.fullmatch(build_id) or len(build_id) % 2:
        raise BadRequest(f"not a build-id (hex digits): {text!r}")
    return build_id


def escape_name(text: str) -> str:
    """elfutils' cache-name escaping: '/' → ``##``, '#' → ``#_``; the result has no '/'."""
    return text.replace("#", "#_").replace("/", "##")


@dataclass(frozen=True, slots=True)
class Artifact:
    """One thing to fetch; build with `Artifact.make`, which validates."""

    build_id: str
    kind: str
    arg: str | None = None

    @classmethod
    def make(cls, build_id: str, kind: str, arg: str | None = None) -> Artifact:
        """A validated request. :raises BadRequest: unknown kind, missing or bad argument."""
        if kind not in KINDS:
            raise BadRequest(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
        needs_arg = kind in ("source", "section")
        if needs_arg and not arg:
            raise BadRequest(f"{kind} needs a {'path' if kind == 'source' else 'section name'}")
        if not needs_arg and arg is not None:
            raise BadRequest(f"{kind} takes no argument")
        if kind == "source" and arg is not None and not arg.startswith("/"):
            raise BadRequest(f"source path must be absolute: {arg!r}")
        if arg is not None and "\0" in arg:
            raise BadRequest("argument contains a NUL byte")
        artifact = cls(normalize_build_id(build_id), kind, arg)
        if len(artifact.cache_name.encode()) > NAME_MAX:
            raise BadRequest(f"{kind} name too long to cache: {arg!r}")
        return artifact

    @property
    def url_path(self) -> str:
        """The server path, e.g. ``/buildid/ID/source/usr/src/a%20b.c``."""
        base = f"/buildid/{self.build_id}/{self.kind}"
        if self.arg is None:
            return base
        tail = quote(self.arg, safe="/")  # unreserved characters and '/' stay, like curl's
        return base + (tail if tail.startswith("/") else "/" + tail)

    @property
    def cache_name(self) -> str:
        """The file name inside ``<cache>/<build-id>/``."""
        if self.kind == "source":
            return "source" + escape_name(self.arg or "")
        if self.kind == "section":
            return "section-" + escape_name(self.arg or "")
        return self.kind

    @property
    def has_build_id(self) -> bool:
        """Whether the file is an ELF file that must carry this build-id (checked on download)."""
        return self.kind in ("debuginfo", "executable")

    def describe(self) -> str:
        """Short human name: ``debuginfo``, ``source /a/b.c``, ``section .text``."""
        return self.kind if self.arg is None else f"{self.kind} {self.arg}"
