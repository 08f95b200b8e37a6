"""A saved `ubt stack` snapshot replayed after its program's files are gone or replaced: the
modules' code comes from a real debuginfod server by the build-ids the snapshot recorded
(``/executable``), so the unwind tables and names are those of the code that ran.

The live run is compared with gdb (given the served debug files by build-id); the replay must
print exactly what the live run printed.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from debuginfod.elfid import build_id_of
from tests.conftest import Ubt
from tests.debuginfod.servers import Corpus, DebuginfodServer, env_for
from tests.debuginfod.test_debuginfod_traces import stack_json
from tests.integration import fixture_builder
from tests.integration.test_stack_vs_gdb import check_expected_chain
from tests.oracle import gdb as gdb_oracle
from tests.oracle.stack_compare import compare_process

pytestmark = [pytest.mark.integration, pytest.mark.needs_root,
              pytest.mark.skipif(not gdb_oracle.available(), reason="gdb is not installed")]


def test_replay_fetches_the_executables_of_gone_modules(
        start_server: Callable[[], DebuginfodServer], corpus: Corpus, debug_tree: Path,
        tmp_path: Path, needs_root: None, spawn_blocked: Any,
        line_markers: dict[str, tuple[str, int]]) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for name in ("chain-stripped", "libchain.so"):
        shutil.copy2(corpus.binary(name), app / name)
    server = start_server()
    cache = tmp_path / "cache"
    saved = tmp_path / "stack.jsonl"
    bp = spawn_blocked([str(app / "chain-stripped")], ready=b"ready")
    live = Ubt(env_for(server.url, cache)).run("stack", "-p", str(bp.pid), "--format", "json",
                                               "--save", str(saved))
    assert (live.returncode, live.stderr) == (0, ""), live.stderr
    gdb_threads = gdb_oracle.gdb_backtrace(bp.pid, debug_dirs=[str(debug_tree)])
    assert bp.stop_signature() == bp.stop, "the target moved between ubt and gdb"
    oracle = check_expected_chain("chain", gdb_threads, line_markers)
    assert not oracle, "gdb does not see the served debug info:\n" + "\n".join(oracle)
    problems = compare_process(stack_json(live.stdout), gdb_threads, None, [str(debug_tree)])
    assert not problems, "ubt stack != gdb:\n" + "\n\n".join(problems)
    (snapshot,) = map(json.loads, saved.read_text().splitlines())
    recorded = set(snapshot["build_ids"].values())
    ours = {corpus.build_ids["chain-stripped"], corpus.build_ids["libchain.so"]}
    assert ours <= recorded

    bp.kill()
    # the program is gone; its library replaced by another build (-O0, with DWARF of its own,
    # whose names would be plausible and wrong)
    (app / "chain-stripped").unlink()
    (app / "libchain.so").unlink()
    shutil.copy2(fixture_builder.variant_dir("O0") / "libchain.so", app / "libchain.so")
    assert build_id_of(str(app / "libchain.so")) != corpus.build_ids["libchain.so"]

    alone = Ubt(env_for(None, tmp_path / "no-cache")).run("stack", "--load", str(saved),
                                                         "--format", "json")
    assert alone.returncode == 0, alone.stderr
    (thread,) = stack_json(alone.stdout).values()
    ours_frames = [f for f in thread["frames"] if f["build_id"] in ours]
    assert ours_frames and all(f["function"] is None for f in ours_frames), thread
    assert thread["stop_reason"] != "end_of_stack"

    replay = Ubt(env_for(server.url, cache, UBT_CACHE_DIR=str(tmp_path / "fresh-ubt-cache"))) \
        .run("stack", "--load", str(saved), "--format", "json")
    assert (replay.returncode, replay.stderr, replay.stdout) == (0, "", live.stdout)
    for name in ("chain-stripped", "libchain.so"):
        build_id = corpus.build_ids[name]
        assert (cache / build_id / "executable").read_bytes() == \
            corpus.binary(name).read_bytes()
        assert f"/buildid/{build_id}/executable" in server.log.read_text(errors="replace")
