"""``/section/NAME`` answered from a cached debuginfo or executable, as libdebuginfod 0.188 does,
before (and instead of) asking a server. The oracles: the section's bytes as they are in the ELF
file (pyelftools, raw, at sh_offset), and `debuginfod-find` extracting from the same cache."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.debuginfod.servers import ConnectionCounter, Corpus, DebuginfodServer, env_for
from tests.debuginfod.test_debuginfod_server import debuginfod_find, run_ubt

pytestmark = [pytest.mark.integration]


def raw_section(path: Path, name: str) -> bytes:
    """The bytes of section `name` in the file at `path`, as stored (compressed or not)."""
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        assert sec is not None and sec["sh_type"] != "SHT_NOBITS", f"{path} has no {name}"
        f.seek(sec["sh_offset"])
        return f.read(sec["sh_size"])


def test_sections_from_the_cache_without_a_server(
        start_server: Callable[[], DebuginfodServer], counter: ConnectionCounter,
        corpus: Corpus, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    server = start_server()
    env = env_for(server.url, cache)
    chain, cxx = corpus.build_ids["chain-stripped"], corpus.build_ids["cxx-stripped"]
    for build_id, kind in ((chain, "debuginfo"), (cxx, "debuginfo"), (cxx, "executable")):
        assert run_ubt(env, "debuginfod", "find", kind, build_id).returncode == 0
    server.stop()
    shutil.copytree(cache, tmp_path / "elfutils-cache")  # the same cache, for debuginfod-find
    env = env_for(counter.url, cache)
    elfutils_env = env_for(counter.url, tmp_path / "elfutils-cache")

    # in the debuginfo: extracted there, byte for byte what the file holds and what elfutils
    # extracts from its copy of the cache
    got = run_ubt(env, "debuginfod", "find", "section", chain, ".debug_line")
    assert (got.returncode, got.stderr) == (0, ""), got.stderr
    assert got.stdout.strip() == str(cache / chain / "section-.debug_line")
    data = Path(got.stdout.strip()).read_bytes()
    assert data == raw_section(corpus.debug_file("chain-stripped"), ".debug_line")
    elf = debuginfod_find(elfutils_env, "section", chain, ".debug_line")
    assert elf.returncode == 0, elf.stderr
    assert Path(elf.stdout.strip()).read_bytes() == data
    # NOBITS in the debuginfo (.text stays in the executable): the cached executable has it
    got = run_ubt(env, "debuginfod", "find", "section", cxx, ".text")
    assert (got.returncode, got.stderr) == (0, ""), got.stderr
    assert Path(got.stdout.strip()).read_bytes() == raw_section(corpus.binary("cxx-stripped"),
                                                                ".text")
    # a section the cached debuginfo does not have at all is confirmed absent, like elfutils
    got = run_ubt(env, "debuginfod", "find", "section", chain, ".no_such_section")
    assert got.returncode == 1 and got.stdout == ""
    assert got.stderr.splitlines() == [
        f"ubt: debuginfod: no section .no_such_section in the debuginfo of build-id {chain}"]
    assert debuginfod_find(elfutils_env, "section", chain, ".no_such_section").returncode != 0
    assert counter.connections == 0  # all of it without one connection attempt

    # NOBITS in the debuginfo and no executable cached: only a server can answer
    got = run_ubt(env, "debuginfod", "find", "section", chain, ".text")
    assert got.returncode == 1 and "no debuginfod server reachable" in got.stderr
    assert counter.connections == 1
    server = start_server()
    got = run_ubt(env_for(server.url, cache), "debuginfod", "find", "section", chain, ".text")
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()).read_bytes() == raw_section(
        corpus.binary("chain-stripped"), ".text")
    assert f"/buildid/{chain}/section/.text" in server.log.read_text(errors="replace")
