"""The client's settings, read from the environment variables libdebuginfod documents.

Using the same variables (and defaults) as elfutils 0.188 means one set-up serves gdb,
`debuginfod-find`, `eu-stack` and ubt alike, and all of them share one cache.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_TIMEOUT_S = 90
DEFAULT_RETRY_LIMIT = 2
#: DEBUGINFOD_TIMEOUT bounds the connection and the arrival of this many bytes (libdebuginfod's
#: "100K in TIMEOUT seconds" low-speed rule).
FIRST_BYTES = 100 * 1024


class ConfigError(ValueError):
    """A DEBUGINFOD_* variable holds something unusable; the message names it."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything that steers one client.

    :param urls: server base URLs (DEBUGINFOD_URLS split on whitespace, trailing '/' dropped).
    :param cache_path: the cache root, shared with libdebuginfod.
    :param timeout_s: seconds to connect, and again to receive the first `FIRST_BYTES`.
    :param maxtime_s: seconds a whole download may take; None: no limit.
    :param maxsize: bytes a file may have; None: no limit.
    :param retry_limit: extra attempts per server after a failure other than 404.
    :param progress: whether a progress line is forced on (DEBUGINFOD_PROGRESS set).
    :param verbose: whether every request and cache decision is reported (DEBUGINFOD_VERBOSE).
    :param headers: extra request headers (DEBUGINFOD_HEADERS_FILE lines ``Name: value``).
    """

    urls: tuple[str, ...]
    cache_path: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    maxtime_s: float | None = None
    maxsize: int | None = None
    retry_limit: int = DEFAULT_RETRY_LIMIT
    progress: bool = False
    verbose: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """The configuration libdebuginfod would use in `environ` (``os.environ`` if None).

        :raises ConfigError: a numeric variable is not a number, or the headers file is
            unreadable.
        """
        env = os.environ if environ is None else environ
        maxtime = _number(env, "DEBUGINFOD_MAXTIME", 0)
        maxsize = int(_number(env, "DEBUGINFOD_MAXSIZE", 0))
        return cls(
            urls=parse_urls(env.get("DEBUGINFOD_URLS", "")),
            cache_path=default_cache_path(env),
            timeout_s=_number(env, "DEBUGINFOD_TIMEOUT", DEFAULT_TIMEOUT_S) or DEFAULT_TIMEOUT_S,
            maxtime_s=maxtime if maxtime > 0 else None,
            maxsize=maxsize if maxsize > 0 else None,
            retry_limit=max(0, int(_number(env, "DEBUGINFOD_RETRY_LIMIT", DEFAULT_RETRY_LIMIT))),
            progress=bool(env.get("DEBUGINFOD_PROGRESS")),
            verbose=bool(env.get("DEBUGINFOD_VERBOSE")),
            headers=read_headers_file(env.get("DEBUGINFOD_HEADERS_FILE", "")),
        )


def parse_urls(text: str) -> tuple[str, ...]:
    """DEBUGINFOD_URLS → base URLs, in order, without duplicates or trailing slashes."""
    urls: list[str] = []
    for word in text.split():
        url = word.rstrip("/")
        if url and url not in urls:
            urls.append(url)
    return tuple(urls)


def default_cache_path(environ: Mapping[str, str]) -> str:
    """The cache root as elfutils 0.188 picks it.

    DEBUGINFOD_CACHE_PATH; else the legacy ``~/.debuginfod_client_cache`` if it exists; else
    ``$XDG_CACHE_HOME/debuginfod_client``; else ``~/.cache/debuginfod_client``.
    """
    if environ.get("DEBUGINFOD_CACHE_PATH"):
        return environ["DEBUGINFOD_CACHE_PATH"]
    home = environ.get("HOME") or os.path.expanduser("~")
    legacy = os.path.join(home, ".debuginfod_client_cache")
    if os.path.isdir(legacy):
        return legacy
    xdg = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(xdg, "debuginfod_client")


def read_headers_file(path: str) -> dict[str, str]:
    """Extra headers from DEBUGINFOD_HEADERS_FILE: one ``Name: value`` per line.

    Lines without a colon are skipped, as libdebuginfod ignores malformed headers.

    :raises ConfigError: the file cannot be read.
    """
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"DEBUGINFOD_HEADERS_FILE {path}: {e.strerror}") from None
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip() and not any(c.isspace() for c in name.strip()):
            headers[name.strip()] = value.strip()
    return headers


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number") from None
