"""One HTTP GET from one server into an open file, within libdebuginfod's limits.

- DEBUGINFOD_TIMEOUT: the connection must be made, and the first 100 KiB (or the whole body, if
  smaller) must arrive, within that many seconds;
- DEBUGINFOD_MAXTIME: the whole download must end within that many seconds;
- DEBUGINFOD_MAXSIZE: a larger file is refused, by its Content-Length before any body is read and
  by counting while streaming (a server may not send a length). The limit is also sent as the
  ``X-DEBUGINFOD-MAXSIZE`` header, as libdebuginfod does, so a server can refuse early.

The body is read with ``read1`` (at most one socket read per call), so a server trickling bytes
cannot hold a download past its deadline by more than one socket timeout. Every failure is a
`FetchError` that says whether the server itself looks unreachable (then the client stops
asking it for the rest of the run) and whether trying again could help.
"""
from __future__ import annotations

import email.utils
import http.client
import time
from dataclasses import dataclass
from typing import BinaryIO

import requests
import urllib3

from .config import FIRST_BYTES
from .progress import Progress

_CHUNK = 64 * 1024
_TRANSFER_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
_REASONS = ("connection refused", "name or service not known", "timed out",
            "temporary failure in name resolution", "connection reset", "incompleteread",
            "no route to host", "network is unreachable")


class FetchError(Exception):
    """A failed GET. `str()` is one line.

    :param unreachable: the server did not accept a connection or answer at all.
    :param retryable: another attempt might succeed (5xx, a connection lost mid-body).
    """

    def __init__(self, message: str, *, unreachable: bool = False,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.retryable = retryable


class NotOnServer(FetchError):
    """HTTP 404: the server does not have it (the one answer that is cached as a miss)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Time and size limits of one download; None means no limit."""

    timeout_s: float
    maxtime_s: float | None = None
    maxsize: int | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A completed download: its size and the server's Last-Modified (epoch seconds)."""

    size: int
    last_modified: float | None


def fetch(session: requests.Session, url: str, out: BinaryIO, limits: Limits,
          headers: dict[str, str], progress: Progress | None = None,
          label: str = "") -> Fetched:
    """GET `url` into `out`. :raises FetchError: any failure, `NotOnServer` for a 404."""
    start = time.monotonic()
    headers = dict(headers)
    headers.setdefault("Accept-Encoding", "identity")  # sizes on the wire = sizes on disk
    if limits.maxsize is not None:
        headers["X-DEBUGINFOD-MAXSIZE"] = str(limits.maxsize)
    read_timeout = limits.timeout_s if limits.maxtime_s is None \
        else min(limits.timeout_s, limits.maxtime_s)
    try:
        response = session.get(url, headers=headers, stream=True,
                               timeout=(limits.timeout_s, read_timeout), allow_redirects=True)
    except requests.exceptions.ConnectTimeout:
        raise FetchError(f"no connection within {limits.timeout_s:g} s",
                         unreachable=True) from None
    except requests.exceptions.ReadTimeout:
        raise FetchError(f"no answer within {read_timeout:g} s", unreachable=True) from None
    except requests.exceptions.ConnectionError as e:
        raise FetchError(f"cannot connect ({_reason(e)})", unreachable=True) from None
    except requests.exceptions.RequestException as e:
        raise FetchError(f"request failed ({_reason(e)})") from None
    with response:
        return _receive(response, out, limits, start, progress, label)


def _receive(response: requests.Response, out: BinaryIO, limits: Limits, start: float,
             progress: Progress | None, label: str) -> Fetched:
    status = response.status_code
    if status == 404:
        raise NotOnServer("not found (HTTP 404)")
    if status != 200:
        raise FetchError(f"HTTP {status} {response.reason or ''}".rstrip(),
                         retryable=status >= 500 or status == 429)
    length = _content_length(response)
    if limits.maxsize is not None and length is not None and length > limits.maxsize:
        raise FetchError(f"file of {length} bytes exceeds DEBUGINFOD_MAXSIZE={limits.maxsize}")
    received = 0
    if progress is not None:
        progress.start(label, length)
    try:
        while True:
            try:
                chunk = response.raw.read1(_CHUNK)
            except _TRANSFER_ERRORS as e:  # timeouts, resets, bodies shorter than announced
                raise FetchError(f"transfer failed ({_reason(e)})", retryable=True) from None
            if not chunk:
                break
            received += len(chunk)
            _check(received, limits, start)
            out.write(chunk)
            if progress is not None:
                progress.update(received)
    finally:
        if progress is not None:
            progress.finish()
    if length is not None and received != length:
        raise FetchError(f"truncated: {received} of {length} bytes", retryable=True)
    return Fetched(received, _last_modified(response))


def _check(received: int, limits: Limits, start: float) -> None:
    """Raise when a limit has been passed after `received` bytes."""
    elapsed = time.monotonic() - start
    if limits.maxsize is not None and received > limits.maxsize:
        raise FetchError(f"file exceeds DEBUGINFOD_MAXSIZE={limits.maxsize} bytes")
    if limits.maxtime_s is not None and elapsed > limits.maxtime_s:
        raise FetchError(f"download exceeds DEBUGINFOD_MAXTIME={limits.maxtime_s:g} s")
    if received < FIRST_BYTES and elapsed > limits.timeout_s:
        raise FetchError(f"fewer than {FIRST_BYTES // 1024} KiB within "
                         f"DEBUGINFOD_TIMEOUT={limits.timeout_s:g} s", retryable=True)


def _content_length(response: requests.Response) -> int | None:
    text = response.headers.get("Content-Length")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _last_modified(response: requests.Response) -> float | None:
    text = response.headers.get("Last-Modified")
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _reason(error: BaseException) -> str:
    """The useful words of a requests/urllib3 error chain, on one line."""
    text = " ".join(str(error).split())
    lower = text.lower()
    for marker in _REASONS:
        if marker in lower:
            return "body shorter than announced" if marker == "incompleteread" else marker
    return text[:200] or type(error).__name__
