"""Fixtures for the debuginfod tests (the servers themselves are in servers.py).

- `corpus` (session): the stripped fixture programs; they and their `.debug` files are copied
  into a directory the server indexes (all but `threads-stripped.debug`: a build-id whose
  debuginfo no server has), the binaries alone into another (without the `.debug` files next
  to them, `.gnu_debuglink` cannot find anything locally). Under ``debugframe/`` the same for
  `chain-debugframe` and its `libchain.so`, split here: their own code has no `.eh_frame`, so
  once stripped its CFI (`.debug_frame`) is only in the served debug files.
- `debug_tree` (session): every served debug file under ``.build-id/xx/rest.debug``, for gdb
  (the oracle must see the debug info ubt fetches).
- `real_server` (session) / `start_server` (function, for tests that stop it): ``debuginfod -F``
  on a free port of 127.0.0.1, ready once it serves a known build-id.
- `counter` (function): a `ConnectionCounter` (a URL where any connection attempt is counted).
- `fault_server` (session): our own HTTP server serving `chain-stripped.debug` or faults.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from debuginfod.elfid import build_id_of
from tests.debuginfod.servers import (UNSERVED, ConnectionCounter, Corpus, DebuginfodServer,
                                      FaultServer, start_fault_server)
from tests.integration import fixture_builder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    if shutil.which("debuginfod") is None or shutil.which("debuginfod-find") is None:
        pytest.fail("the debuginfod tests need elfutils' debuginfod and debuginfod-find "
                    "(Debian package `debuginfod`; run `make bootstrap`)")
    fixture_builder.build_many(["stripped", "O2-nofp", "debugframe", "O0"], jobs=2)
    src = fixture_builder.variant_dir("stripped")
    root = tmp_path_factory.mktemp("debuginfod-corpus")
    served, bins = root / "served", root / "bin"
    served.mkdir()
    bins.mkdir()
    build_ids = {}
    for debug in sorted(Path(src).glob("*.debug")):
        name = debug.name[: -len(".debug")]
        shutil.copy2(Path(src) / name, bins / name)
        build_ids[name] = build_id_of(str(bins / name))
        shutil.copy2(Path(src) / name, served / name)
        if name != UNSERVED:
            shutil.copy2(debug, served / debug.name)
    for name in ("chain-debugframe", "libchain.so"):
        for directory in (served / "debugframe", bins / "debugframe"):
            directory.mkdir(exist_ok=True)
            shutil.copy2(fixture_builder.variant_dir("debugframe") / name, directory / name)
        split_debug(served / "debugframe" / name)
        shutil.copy2(served / "debugframe" / name, bins / "debugframe" / name)
        build_ids[f"debugframe/{name}"] = build_id_of(str(bins / "debugframe" / name))
    return Corpus(served, bins, Path(src), build_ids)


def split_debug(binary: Path) -> None:
    """Move the debug sections of `binary` into ``binary.debug`` (as the `stripped` variant
    of fixtures/build.py does)."""
    debug = binary.with_name(binary.name + ".debug")
    for argv in (["objcopy", "--only-keep-debug", str(binary), str(debug)],
                 ["strip", str(binary)],
                 ["objcopy", f"--add-gnu-debuglink={debug}", str(binary)]):
        subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="session")
def debug_tree(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("debug-tree")
    for debug in corpus.served_dir.rglob("*.debug"):
        build_id = build_id_of(str(debug))
        link = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(debug)
    return root


@pytest.fixture(scope="session")
def real_server(corpus: Corpus,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebuginfodServer]:
    server = DebuginfodServer(corpus.served_dir, tmp_path_factory.mktemp("dbgd"),
                              corpus.build_ids["chain-stripped"])
    yield server
    server.stop()


@pytest.fixture
def start_server(corpus: Corpus,
                 tmp_path: Path) -> Iterator[Callable[[], DebuginfodServer]]:
    """Factory for a server of the test's own (to stop it midway); stopped at teardown."""
    started: list[DebuginfodServer] = []

    def start() -> DebuginfodServer:
        server = DebuginfodServer(corpus.served_dir, tmp_path,
                                  corpus.build_ids["chain-stripped"])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def fault_server(corpus: Corpus) -> Iterator[FaultServer]:
    """Serves the debug file of `chain-stripped` (whatever build-id is asked) or a fault."""
    state, httpd = start_fault_server(corpus.debug_file("chain-stripped").read_bytes())
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def counter() -> Iterator[ConnectionCounter]:
    """A URL that counts connection attempts: point DEBUGINFOD_URLS at it to prove none."""
    listener = ConnectionCounter()
    yield listener
    listener.close()
