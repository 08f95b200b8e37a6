"""`ubt debuginfod find KIND BUILDID|PATH [ARG]`: debuginfod-find, on ubt's client.

Prints the path of the cached file and exits 0, or prints one line on stderr and exits 1 (2 for
a malformed request). BUILDID|PATH is a hex build-id or an ELF file whose build-id is used. The
cache is the one libdebuginfod uses, so what either tool fetched, the other finds.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from debuginfod.artifact import KINDS, BadRequest
from debuginfod.config import ClientConfig, ConfigError
from debuginfod.elfid import build_id_of

EXAMPLES = """examples:
  ubt debuginfod find debuginfo 8dfd144fee9d6608b73bae1cfd8e2ab9fb5193b2
  ubt debuginfod find executable /usr/bin/ls
  ubt debuginfod find source ./prog /usr/src/prog/main.c
  ubt debuginfod find section ./prog .debug_line
"""


def add_parser(subparsers: Any) -> None:
    """Add `debuginfod` to the `ubt` subcommands (`subparsers` from `add_subparsers`)."""
    p = subparsers.add_parser(
        "debuginfod", help="fetch debug files from debuginfod servers (like debuginfod-find)",
        description="Fetch files by build-id from the servers in DEBUGINFOD_URLS into the "
        "cache libdebuginfod shares, and print their paths.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="debuginfod_action", required=True)
    find = actions.add_parser("find", help="print the cached path of a file, fetching it")
    find.add_argument("kind", choices=KINDS)
    find.add_argument("build_id", metavar="BUILDID|PATH",
                      help="hex build-id, or an ELF file whose build-id is used")
    find.add_argument("arg", nargs="?", metavar="ARG",
                      help="source: absolute source path; section: section name")
    find.add_argument("-v", "--verbose", action="store_true",
                      help="report each request (as DEBUGINFOD_VERBOSE=1)")


def run(args: argparse.Namespace) -> int:
    """Run `ubt debuginfod find`; returns the exit status."""
    try:
        config = ClientConfig.from_env()
    except ConfigError as e:
        return _fail(str(e), 2)
    if args.verbose:
        config = dataclasses.replace(config, verbose=True)
    from debuginfod.client import (DebuginfodClient, DebuginfodError,  # imports requests
                                   stderr_reporter)

    try:
        build_id = _build_id(args.build_id)
        client = DebuginfodClient(config, report=stderr_reporter if config.verbose else _quiet)
        path = client.find(build_id, args.kind, args.arg)
    except BadRequest as e:
        return _fail(str(e), 2)
    except DebuginfodError as e:
        return _fail(str(e), 1)
    print(path)
    return 0


def _build_id(word: str) -> str:
    """A build-id from the command line: the word itself, or the build-id of that file."""
    if os.path.exists(word):
        try:
            return build_id_of(word)
        except ValueError as e:
            raise BadRequest(str(e)) from None
    return word


def _quiet(line: str) -> None:
    """Drop what the client reports on the way: without -v, a failure is its one last line."""


def _fail(message: str, status: int) -> int:
    print(f"ubt: debuginfod: {message}", file=sys.stderr)
    return status
