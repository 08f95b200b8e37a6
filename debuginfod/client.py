"""The debuginfod client: cache first, then each server in turn, every answer checked.

Semantics follow libdebuginfod 0.188 where it has them (variables, cache, negative hits,
retries), with these choices of ours:

- servers are asked **in DEBUGINFOD_URLS order**, one at a time, and the first good answer
  wins (libdebuginfod races them; in order is predictable, and the usual set-up has one server);
- a server that cannot be reached (refused, no answer within DEBUGINFOD_TIMEOUT) is reported
  once and not asked again during the run: one dead server must not cost a timeout per module;
- a failure other than 404 is retried up to DEBUGINFOD_RETRY_LIMIT times on that server;
- a negative hit is recorded only when every server asked answered 404: an unreachable or
  failing server may well have the file;
- a debuginfo or executable whose build-id differs from the one asked for is deleted, reported
  and never used;
- a section is first extracted from the build-id's cached debuginfo or executable, as
  libdebuginfod does (`debuginfod.section`); the servers are asked only when neither settles it;
- answers (paths and failures) are remembered in memory for the run, so one build-id costs at
  most one look-up however many addresses or frames need it.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

import requests
from lru import LRU

from .artifact import Artifact
from .cache import DebuginfodCache, State
from .config import ClientConfig
from .download import FetchError, Limits, NotOnServer, fetch
from .elfid import mismatch
from .progress import Progress, make_progress
from .section import Outcome, cached_section

USER_AGENT = "ubt-debuginfod/0.1 (like elfutils/0.188)"

#: Receives one line for the user (without the ``ubt: `` prefix).
Reporter = Callable[[str], None]


class DebuginfodError(Exception):
    """A look-up that gave no file; `str()` is the one line to show."""


class NotFound(DebuginfodError):
    """Every server asked said 404 (now or, as a negative hit, recently)."""


class NoServer(DebuginfodError):
    """No server to ask: DEBUGINFOD_URLS is empty, or every server is unreachable."""


class FetchFailed(DebuginfodError):
    """Servers answered, but not with a usable file (errors, limits, wrong build-id)."""


def stderr_reporter(line: str) -> None:
    """Print ``ubt: LINE`` on stderr."""
    print(f"ubt: {line}", file=sys.stderr, flush=True)


class DebuginfodClient:
    """Finds files by build-id in the cache or on the configured servers.

    :param config: settings (`ClientConfig.from_env()`).
    :param report: where user-facing lines go (stderr by default).
    :param progress: download progress display; by default one on stderr when it is a
        terminal or DEBUGINFOD_PROGRESS is set.
    :param session: HTTP session (connection reuse across look-ups).
    """

    def __init__(self, config: ClientConfig, report: Reporter = stderr_reporter,
                 progress: Progress | None = None,
                 session: requests.Session | None = None) -> None:
        self.config = config
        self.cache = DebuginfodCache(config.cache_path)
        self._report = report
        self._progress = progress if progress is not None else make_progress(config.progress)
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._down: set[str] = set()
        self._memo: LRU[Artifact, str | DebuginfodError] = LRU(1024)
        self._cleaned = False

    def find(self, build_id: str, kind: str, arg: str | None = None) -> str:
        """The path of the cached file for (build-id, kind, arg), fetching it if needed.

        :raises BadRequest: malformed build-id or argument.
        :raises DebuginfodError: `NotFound`, `NoServer` or `FetchFailed`.
        """
        return self.find_artifact(Artifact.make(build_id, kind, arg))

    def find_artifact(self, artifact: Artifact) -> str:
        """As `find`, for a validated `Artifact`."""
        known = self._memo.get(artifact)
        if isinstance(known, str):
            return known
        if isinstance(known, DebuginfodError):
            raise known
        try:
            path = self._find(artifact)
        except NoServer:
            raise  # not remembered: nothing was learnt about the artifact itself
        except DebuginfodError as e:
            self._memo[artifact] = e
            raise
        self._memo[artifact] = path
        return path

    # -- the look-up ---------------------------------------------------------------------------

    def _find(self, artifact: Artifact) -> str:
        self._clean_once()
        try:
            found = self.cache.lookup(artifact)
        except OSError as e:
            raise FetchFailed(f"cache {self.cache.root}: {e.strerror}") from None
        if found.state is State.HIT:
            self._verbose(f"{artifact.describe()} {artifact.build_id}: cached {found.path}")
            return found.path
        if found.state is State.NEGATIVE:
            self._verbose(f"{artifact.describe()} {artifact.build_id}: cached miss")
            raise NotFound(_not_found(artifact))
        if artifact.kind == "section":
            local = self._section_from_cache(artifact)
            if local is not None:
                return local
        servers = [url for url in self.config.urls if url not in self._down]
        if not servers:
            raise NoServer("DEBUGINFOD_URLS is not set" if not self.config.urls
                           else "no debuginfod server reachable")
        return self._from_servers(artifact, servers)

    def _section_from_cache(self, artifact: Artifact) -> str | None:
        """The section extracted from the cached debuginfo or executable (`section`); None
        when the servers must be asked. :raises NotFound: the cached debuginfo lacks it."""
        try:
            found = cached_section(self.cache, artifact)
        except OSError as e:
            raise FetchFailed(f"cannot write to the cache {self.cache.root}: "
                              f"{e.strerror or e}") from None
        if found is Outcome.ABSENT:
            self._verbose(f"{artifact.describe()} {artifact.build_id}: not in the cached "
                          "debuginfo")
            raise NotFound(f"no {artifact.describe()} in the debuginfo of build-id "
                           f"{artifact.build_id}")
        if found is Outcome.UNKNOWN:
            return None
        self._verbose(f"{artifact.describe()} {artifact.build_id}: extracted from the cache "
                      f"→ {found}")
        return found

    def _from_servers(self, artifact: Artifact, servers: list[str]) -> str:
        failures: list[str] = []
        unreachable: list[str] = []
        answered_404 = 0
        for server in servers:
            try:
                return self._from_server(artifact, server)
            except NotOnServer:
                answered_404 += 1
            except FetchError as e:
                if e.unreachable:
                    self._down.add(server)
                    self._report(f"debuginfod: cannot reach {server}: {e}; going on without it")
                    unreachable.append(f"{server}: {e}")
                else:
                    failures.append(f"{server}: {e}")
        if answered_404 == len(servers):
            try:
                self.cache.record_miss(artifact)
            except OSError:
                pass  # the negative hit only saves a request next time
            raise NotFound(_not_found(artifact))
        if failures:
            raise FetchFailed(f"{artifact.describe()} of build-id {artifact.build_id}: "
                              + "; ".join(failures))
        if answered_404:
            raise NotFound(_not_found(artifact))
        raise NoServer("no debuginfod server reachable (" + "; ".join(unreachable) + ")")

    def _from_server(self, artifact: Artifact, server: str) -> str:
        """One server, with retries. :raises FetchError: the last failure."""
        attempts = 1 + self.config.retry_limit
        for attempt in range(1, attempts + 1):
            try:
                return self._download(artifact, server)
            except NotOnServer:
                raise
            except FetchError as e:
                if e.unreachable or not e.retryable or attempt == attempts:
                    raise
                self._verbose(f"{server}: {e}; retrying ({attempt}/{attempts - 1})")
        raise AssertionError("unreachable")

    def _download(self, artifact: Artifact, server: str) -> str:
        url = server + artifact.url_path
        limits = Limits(self.config.timeout_s, self.config.maxtime_s, self.config.maxsize)
        label = f"{artifact.describe()} {artifact.build_id[:12]}"
        started = time.monotonic()
        try:
            with self.cache.writer(artifact) as pending:
                try:
                    got = fetch(self._session, url, pending.file, limits,
                                dict(self.config.headers), self._progress, label)
                except FetchError as e:
                    self._verbose(f"GET {url}: {e}")
                    raise
                pending.file.flush()
                if artifact.has_build_id:
                    wrong = mismatch(pending.tmp_path, artifact.build_id)
                    if wrong is not None:
                        raise FetchError(f"served a file that {wrong}; discarded")
                pending.mtime = got.last_modified
                path = pending.commit()
        except OSError as e:
            raise FetchError(f"cannot write to the cache {self.cache.root}: "
                             f"{e.strerror or e}") from None
        self._verbose(f"GET {url}: {got.size} bytes in {time.monotonic() - started:.2f} s "
                      f"→ {path}")
        return path

    # -- housekeeping ---------------------------------------------------------------------------

    def _clean_once(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        try:
            removed = self.cache.clean_if_due()
        except OSError:
            return
        if removed:
            self._verbose(f"cleaned {removed} unused files from {self.cache.root}")

    def _verbose(self, line: str) -> None:
        if self.config.verbose:
            self._report(f"debuginfod: {line}")


def _not_found(artifact: Artifact) -> str:
    return f"no {artifact.describe()} for build-id {artifact.build_id} on any server"
