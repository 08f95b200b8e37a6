"""Plugging the client into `symbolizer.locate.DebugInfoLocator` as a hook.

The locator tries local files first (the binary, the build-id tree, `.gnu_debuglink`) and calls
hooks only for what is still missing, so the network is used for nothing found locally. The hook
is added by `symbolizer.locate.default_hooks` only when DEBUGINFOD_URLS is set, like every
elfutils tool.

It never raises: a module whose debug info cannot be had is reported in one line naming its
build-id, once per build-id per run, and is symbolized with what it has (its symbol tables). A
dead server is reported once by the client; after that the hook stays silent.

All locators of a process share one hook and client (`shared_hook`), so the in-memory memo and the
"said once" promises hold for the whole run.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .artifact import BadRequest
from .client import DebuginfodClient, DebuginfodError, NoServer, Reporter, stderr_reporter
from .config import ClientConfig, ConfigError


class DebuginfodHook:
    """``hook(build_id, kind) -> path | None`` over a client, reporting each failure once."""

    def __init__(self, client: DebuginfodClient, report: Reporter = stderr_reporter) -> None:
        self.client = client
        self._report = report
        self._said: set[tuple[str, str]] = set()

    def __call__(self, build_id: str, kind: str) -> str | None:
        try:
            return self.client.find(build_id, kind)
        except NoServer:
            return None  # the client said so once, when each server failed
        except (DebuginfodError, BadRequest) as e:
            if (build_id, kind) not in self._said:
                self._said.add((build_id, kind))
                self._report(f"debuginfod: {e}")
            return None


_shared: dict[str, DebuginfodHook | None] = {}


def shared_hook(environ: Mapping[str, str] | None = None,
                report: Reporter = stderr_reporter) -> DebuginfodHook | None:
    """The process-wide hook, created on first use; None when DEBUGINFOD_URLS is unset.

    A bad DEBUGINFOD_* setting is reported once and leaves debuginfod off.
    """
    env = os.environ if environ is None else environ
    key = env.get("DEBUGINFOD_URLS", "")
    if key not in _shared:
        _shared[key] = _make_hook(env, report)
    return _shared[key]


def _make_hook(env: Mapping[str, str], report: Reporter) -> DebuginfodHook | None:
    try:
        config = ClientConfig.from_env(env)
    except ConfigError as e:
        report(f"debuginfod: {e}; not using debuginfod")
        return None
    if not config.urls:
        return None
    return DebuginfodHook(DebuginfodClient(config, report), report)
