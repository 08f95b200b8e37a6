"""Names, cache states, control files and cleaning, without a network."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from debuginfod.artifact import Artifact, BadRequest, escape_name
from debuginfod.cache import DebuginfodCache, State
from debuginfod.config import ClientConfig, ConfigError, default_cache_path, parse_urls

BID = "8dfd144fee9d6608b73bae1cfd8e2ab9fb5193b2"


def test_names_match_elfutils() -> None:
    # spellings observed from debuginfod-find 0.188 (cache names) and on the wire (URLs)
    src = Artifact.make(BID, "source", "/a/./b/../c d#e~%f+g@h:i.c")
    assert src.cache_name == "source##a##.##b##..##c d#_e~%f+g@h:i.c"
    assert src.url_path == f"/buildid/{BID}/source/a/./b/../c%20d%23e~%25f%2Bg%40h%3Ai.c"
    sec = Artifact.make(BID.upper(), "section", ".debug_line")
    assert (sec.build_id, sec.cache_name) == (BID, "section-.debug_line")
    assert sec.url_path == f"/buildid/{BID}/section/.debug_line"
    assert Artifact.make(BID, "executable").url_path == f"/buildid/{BID}/executable"
    assert "/" not in escape_name("/../../etc/passwd")


@pytest.mark.parametrize("args", [
    ("xyz", "debuginfo", None), (BID[:-1], "debuginfo", None), (BID, "core", None),
    (BID, "source", None), (BID, "source", "relative.c"), (BID, "debuginfo", "x"),
    (BID, "section", ""), (BID, "source", "/" + "a" * 300)])
def test_bad_requests(args: tuple[str, str, str | None]) -> None:
    with pytest.raises(BadRequest):
        Artifact.make(*args)


def test_source_path_cannot_escape(tmp_path: Path) -> None:
    cache = DebuginfodCache(str(tmp_path))
    path = cache.path(Artifact.make(BID, "source", "/../../../../etc/passwd"))
    assert os.path.dirname(path) == str(tmp_path / BID)


def test_negative_hit_expires(tmp_path: Path) -> None:
    cache = DebuginfodCache(str(tmp_path))
    art = Artifact.make(BID, "debuginfo")
    assert cache.lookup(art).state is State.MISS
    cache.record_miss(art)
    now = time.time()
    assert cache.lookup(art, now).state is State.NEGATIVE
    assert (tmp_path / "cache_miss_s").read_text() == "600"
    assert cache.lookup(art, now + 601).state is State.MISS
    assert not (tmp_path / BID / "debuginfo").exists()
    (tmp_path / "cache_miss_s").write_text("5")
    cache.record_miss(art)
    assert cache.lookup(art, time.time() + 6).state is State.MISS


def test_writer_is_atomic_and_miss_never_replaces_a_file(tmp_path: Path) -> None:
    cache = DebuginfodCache(str(tmp_path))
    art = Artifact.make(BID, "executable")
    with pytest.raises(RuntimeError):
        with cache.writer(art) as pending:
            pending.file.write(b"half")
            raise RuntimeError("download failed")
    assert os.listdir(tmp_path / BID) == []  # the temporary file is gone, no target
    with cache.writer(art) as pending:
        pending.file.write(b"\x7fELF...")
        pending.mtime = 1_000_000_000.0
        path = pending.commit()
    st = os.stat(path)
    assert (st.st_mode & 0o777, st.st_mtime) == (0o400, 1_000_000_000.0)
    cache.record_miss(art)
    assert cache.lookup(art).state is State.HIT


def test_concurrent_writers_leave_one_whole_file(tmp_path: Path) -> None:
    cache = DebuginfodCache(str(tmp_path))
    art = Artifact.make(BID, "debuginfo")
    blobs = [bytes([n]) * 200_000 for n in range(8)]

    def write(blob: bytes) -> None:
        with cache.writer(art) as pending:
            for i in range(0, len(blob), 4096):
                pending.file.write(blob[i:i + 4096])
            pending.commit()

    threads = [threading.Thread(target=write, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tmp_path / BID / "debuginfo").read_bytes() in blobs
    assert os.listdir(tmp_path / BID) == ["debuginfo"]


def test_cleaning_follows_the_control_files(tmp_path: Path) -> None:
    cache = DebuginfodCache(str(tmp_path))
    old, fresh = Artifact.make(BID, "debuginfo"), Artifact.make("ab" * 20, "debuginfo")
    for art in (old, fresh):
        with cache.writer(art) as pending:
            pending.file.write(b"x")
            pending.commit()
    now = time.time()
    os.utime(cache.path(old), (now - 8 * 86400, now - 8 * 86400))
    (tmp_path / "unrelated").write_text("keep")
    assert cache.clean_if_due(now) == 0  # the interval file was just created: not due
    assert (tmp_path / "cache_clean_interval_s").read_text() == "86400"
    os.utime(tmp_path / "cache_clean_interval_s", (now - 86401, now - 86401))
    assert cache.clean_if_due(now) == 1
    assert (tmp_path / "max_unused_age_s").read_text() == "604800"
    assert not (tmp_path / BID).exists() and os.path.exists(cache.path(fresh))
    assert (tmp_path / "unrelated").exists()
    assert os.stat(tmp_path / "cache_clean_interval_s").st_mtime == pytest.approx(now)


def test_config_from_env(tmp_path: Path) -> None:
    headers = tmp_path / "headers"
    headers.write_text("Authorization: Bearer x\nnot a header\nX-Two:  2 \n")
    cfg = ClientConfig.from_env({
        "DEBUGINFOD_URLS": "http://a/ https://b  http://a", "HOME": str(tmp_path),
        "DEBUGINFOD_TIMEOUT": "5", "DEBUGINFOD_MAXSIZE": "1000", "DEBUGINFOD_MAXTIME": "0",
        "DEBUGINFOD_RETRY_LIMIT": "0", "DEBUGINFOD_HEADERS_FILE": str(headers)})
    assert cfg.urls == ("http://a", "https://b")
    assert (cfg.timeout_s, cfg.maxsize, cfg.maxtime_s, cfg.retry_limit) == (5, 1000, None, 0)
    assert cfg.headers == {"Authorization": "Bearer x", "X-Two": "2"}
    assert cfg.cache_path == str(tmp_path / ".cache" / "debuginfod_client")
    assert default_cache_path({"HOME": "/h", "XDG_CACHE_HOME": "/x"}) == "/x/debuginfod_client"
    assert default_cache_path({"DEBUGINFOD_CACHE_PATH": "/c", "HOME": "/h"}) == "/c"
    (tmp_path / ".debuginfod_client_cache").mkdir()
    assert default_cache_path({"HOME": str(tmp_path)}) == str(
        tmp_path / ".debuginfod_client_cache")
    assert parse_urls("") == ()
    with pytest.raises(ConfigError):
        ClientConfig.from_env({"DEBUGINFOD_TIMEOUT": "soon"})


def test_locator_gets_the_hook_only_with_urls(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from debuginfod.hook import DebuginfodHook
    from symbolizer.locate import DebugInfoLocator

    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)
    assert DebugInfoLocator().hooks == []
    monkeypatch.setenv("DEBUGINFOD_URLS", "http://127.0.0.1:9 ")
    monkeypatch.setenv("DEBUGINFOD_CACHE_PATH", str(tmp_path))
    hooks = DebugInfoLocator().hooks
    assert len(hooks) == 1 and isinstance(hooks[0], DebuginfodHook)
    assert DebugInfoLocator().hooks == hooks  # one client per run, shared
    assert DebugInfoLocator(hooks=[]).hooks == []
