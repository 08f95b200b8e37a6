"""ubt's client against the real elfutils `debuginfod` server, and its cache against
`debuginfod-find`'s: what one fetched, the other finds offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from symbolizer.elf import ElfImage
from tests.debuginfod.servers import UNSERVED, Corpus, DebuginfodServer, env_for, free_port
from tests.oracle.elfutils import eu_addr2line

pytestmark = [pytest.mark.integration]

FUNCTIONS = ("fx_leaf", "fx_recurse", "fx_with_inline", "fx_vla", "fx_big_frame", "main")


def ubt_argv() -> list[str]:
    script = Path(sys.executable).with_name("ubt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ubt.cli"]


def run_ubt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ubt_argv(), *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def debuginfod_find(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["debuginfod-find", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def sample_addresses(debug_file: Path) -> list[int]:
    """One address inside each of `FUNCTIONS` (a third of the way in)."""
    table = ElfImage(str(debug_file)).symbols
    out = []
    for sym in sorted(table.raw(), key=lambda s: s.addr):
        if sym.name in FUNCTIONS:
            out.append(sym.addr + max(1, sym.size // 3))
    assert len(out) == len(FUNCTIONS), f"fixture symbols missing: {out}"
    return out


def chains_of(stdout: str) -> list[list[tuple[str | None, str | None, int | None]]]:
    """``ubt symbolize --format json`` → per address: (function, file name, line) per frame."""
    out = []
    for line in stdout.splitlines():
        doc = json.loads(line)
        out.append([(f["function"], f["file"] and os.path.basename(f["file"]), f["line"])
                    for f in doc["frames"]])
    return out


def test_find_every_kind(real_server: DebuginfodServer, corpus: Corpus, tmp_path: Path) -> None:
    env = env_for(real_server.url, tmp_path / "cache")
    bid = corpus.build_ids["chain-stripped"]
    binary = str(corpus.binary("chain-stripped"))
    got = run_ubt(env, "debuginfod", "find", "debuginfo", bid)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(tmp_path / "cache" / bid / "debuginfo")
    assert Path(got.stdout.strip()).read_bytes() == corpus.debug_file("chain-stripped") \
        .read_bytes()
    got = run_ubt(env, "debuginfod", "find", "executable", binary)  # PATH: its build-id
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()).read_bytes() == Path(binary).read_bytes()
    source = str(Path(__file__).resolve().parents[2] / "fixtures" / "src" / "chain.c")
    got = run_ubt(env, "debuginfod", "find", "source", bid, source)
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()).name == "source" + source.replace("/", "##")
    assert Path(got.stdout.strip()).read_text() == Path(source).read_text()
    got = run_ubt(env, "debuginfod", "find", "section", bid, ".debug_line")
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()).name == "section-.debug_line"
    missing = run_ubt(env, "debuginfod", "find", "debuginfo", corpus.build_ids[UNSERVED])
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and corpus.build_ids[UNSERVED] in missing.stderr
    assert (tmp_path / "cache" / corpus.build_ids[UNSERVED] / "debuginfo").stat().st_size == 0
    bad = run_ubt(env, "debuginfod", "find", "debuginfo", "not-hex")
    assert bad.returncode == 2 and bad.stderr.startswith("ubt: ") and "Traceback" not in \
        bad.stderr


def test_symbolize_stripped_then_offline(start_server: Callable[[], DebuginfodServer],
                                         corpus: Corpus, tmp_path: Path) -> None:
    server = start_server()
    env = env_for(server.url, tmp_path / "cache")
    addrs = sample_addresses(corpus.debug_file("chain-stripped"))
    words = [hex(a) for a in addrs]
    unserved = str(corpus.binary(UNSERVED))

    first = run_ubt(env, "symbolize", "-e", str(corpus.binary("chain-stripped")),
                    "--format", "json", *words)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    oracle = eu_addr2line(str(corpus.debug_file("chain-stripped")), addrs)
    expected = [[(f.function, f.file and os.path.basename(f.file), f.line) for f in chain]
                for chain in oracle]
    assert all(chain[-1][0] and chain[-1][2] for chain in expected), expected
    assert chains_of(first.stdout) == expected
    miss = run_ubt(env, "symbolize", "-e", unserved, "0x1000")
    assert miss.returncode == 0
    assert miss.stderr.splitlines() == [
        f"ubt: debuginfod: no debuginfo for build-id {corpus.build_ids[UNSERVED]} on any "
        "server"]

    server.stop()  # everything again, from the cache alone: same answers, no network
    env["UBT_CACHE_DIR"] = str(tmp_path / "fresh-ubt-cache")  # no DWARF index to reuse
    second = run_ubt(env, "symbolize", "-e", str(corpus.binary("chain-stripped")),
                     "--format", "json", *words)
    assert (second.returncode, second.stderr, second.stdout) == (0, "", first.stdout)
    again = run_ubt(env, "symbolize", "-e", unserved, "0x1000")
    assert (again.stdout, again.stderr) == (miss.stdout, miss.stderr)  # negative hit: no GET
    assert "cannot reach" not in again.stderr


def test_cache_shared_with_debuginfod_find(start_server: Callable[[], DebuginfodServer],
                                           corpus: Corpus, tmp_path: Path) -> None:
    server = start_server()
    cache = tmp_path / "cache"
    env = env_for(server.url, cache)
    by_ubt, by_elfutils = corpus.build_ids["chain-stripped"], corpus.build_ids["cxx-stripped"]
    assert run_ubt(env, "debuginfod", "find", "debuginfo", by_ubt).returncode == 0
    assert run_ubt(env, "debuginfod", "find", "executable", by_ubt).returncode == 0
    elf = debuginfod_find(env, "debuginfo", by_elfutils)
    assert elf.returncode == 0, elf.stderr
    assert debuginfod_find(env, "debuginfo", corpus.build_ids[UNSERVED]).returncode != 0
    nowhere = "00" * 20
    assert run_ubt(env, "debuginfod", "find", "debuginfo", nowhere).returncode == 1
    server.stop()

    neg = debuginfod_find(env, "debuginfo", nowhere)  # ubt's negative hit: no connection tried
    assert neg.returncode != 0 and "No such file" in neg.stderr, neg.stderr

    for kind in ("debuginfo", "executable"):  # elfutils reads what ubt wrote
        got = debuginfod_find(env, kind, by_ubt)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == str(cache / by_ubt / kind)
    got = run_ubt(env, "debuginfod", "find", "debuginfo", by_elfutils)  # and the other way
    assert (got.returncode, got.stdout.strip()) == (0, elf.stdout.strip())
    assert got.stderr == ""
    neg = run_ubt(env, "debuginfod", "find", "debuginfo", corpus.build_ids[UNSERVED])
    assert neg.returncode == 1 and "on any server" in neg.stderr  # elfutils' negative hit
    assert "cannot reach" not in neg.stderr


def test_server_down_is_one_line(corpus: Corpus, tmp_path: Path) -> None:
    env = env_for(f"http://127.0.0.1:{free_port()}", tmp_path / "cache")
    binaries: Sequence[str] = [str(corpus.binary(n)) for n in ("chain-stripped", UNSERVED)]
    got = run_ubt(env, "symbolize", "-e", binaries[0], "0x1000", "0x11d0")
    assert got.returncode == 0
    assert len(got.stdout.splitlines()) == 2
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ubt: debuginfod: cannot reach "), lines
    found = run_ubt(env, "debuginfod", "find", "debuginfo", corpus.build_ids["chain-stripped"])
    assert found.returncode == 1 and found.stdout == ""
    assert len(found.stderr.splitlines()) == 1 and "no debuginfod server reachable" in \
        found.stderr
