"""The client against a server of our own that misbehaves: slow, failing, lying, too big."""
from __future__ import annotations

import dataclasses
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from debuginfod.client import DebuginfodClient, FetchFailed, NoServer, NotFound
from debuginfod.config import ClientConfig
from debuginfod.hook import DebuginfodHook
from debuginfod.progress import ProgressLine
from tests.debuginfod.servers import UNSERVED, Corpus, FaultServer, free_port


def client_for(urls: list[str], cache: Path, lines: list[str] | None = None,
               **settings: Any) -> DebuginfodClient:
    config = dataclasses.replace(ClientConfig(urls=tuple(urls), cache_path=str(cache)),
                                 **settings)
    report = (lines.append if lines is not None else lambda _: None)
    return DebuginfodClient(config, report=report, progress=None)


def cached_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()
                  and p.parent != cache)


def test_good_answer_is_checked_and_kept(fault_server: FaultServer, corpus: Corpus,
                                         tmp_path: Path) -> None:
    headers = tmp_path / "headers"
    headers.write_text("X-Ubt-Test: yes\n")
    bid = corpus.build_ids["chain-stripped"]
    config = ClientConfig.from_env({"DEBUGINFOD_URLS": fault_server.url + "/ok",
                                    "DEBUGINFOD_CACHE_PATH": str(tmp_path / "c"),
                                    "DEBUGINFOD_HEADERS_FILE": str(headers),
                                    "DEBUGINFOD_MAXSIZE": "1000000"})
    out = io.StringIO()
    client = DebuginfodClient(config, report=lambda _: None, progress=ProgressLine(out))
    path = client.find(bid, "debuginfo")
    assert Path(path).read_bytes() == fault_server.payload
    assert os.stat(path).st_mtime == 1672628645.0  # Last-Modified, as curl's filetime
    assert os.stat(path).st_mode & 0o777 == 0o400
    assert fault_server.last_headers["X-Ubt-Test"] == "yes"
    assert fault_server.last_headers["X-DEBUGINFOD-MAXSIZE"] == "1000000"
    assert "ubt: debuginfod: debuginfo" in out.getvalue() and out.getvalue().endswith("\r")
    before = fault_server.hits["ok"]
    assert client.find(bid, "debuginfo") == path  # remembered: no second request
    assert fault_server.hits["ok"] == before


def test_slow_first_byte_honours_timeout(fault_server: FaultServer, corpus: Corpus,
                                         tmp_path: Path) -> None:
    lines: list[str] = []
    client = client_for([fault_server.url + "/slow"], tmp_path, lines, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(NoServer):
        client.find(corpus.build_ids["chain-stripped"], "debuginfo")
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 1.1, elapsed
    assert len(lines) == 1 and "cannot reach" in lines[0] and "1 s" in lines[0]
    started = time.monotonic()  # the dead server is not asked again in this run
    with pytest.raises(NoServer):
        client.find(corpus.build_ids["cxx-stripped"], "debuginfo")
    assert time.monotonic() - started < 0.1 and len(lines) == 1


def test_trickling_body_honours_timeout(fault_server: FaultServer, corpus: Corpus,
                                        tmp_path: Path) -> None:
    client = client_for([fault_server.url + "/trickle"], tmp_path, timeout_s=1.0,
                        retry_limit=0)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="DEBUGINFOD_TIMEOUT"):
        client.find(corpus.build_ids["chain-stripped"], "debuginfo")
    assert 0.9 <= time.monotonic() - started <= 1.3
    assert cached_files(tmp_path) == []


def test_server_error_is_retried_not_cached(fault_server: FaultServer, corpus: Corpus,
                                            tmp_path: Path) -> None:
    client = client_for([fault_server.url + "/e500"], tmp_path, retry_limit=2)
    before = fault_server.hits.get("e500", 0)
    with pytest.raises(FetchFailed, match="HTTP 500"):
        client.find(corpus.build_ids["chain-stripped"], "debuginfo")
    assert fault_server.hits["e500"] - before == 3
    assert cached_files(tmp_path) == []  # no negative hit: the server may have it


def test_truncated_body_is_discarded(fault_server: FaultServer, corpus: Corpus,
                                     tmp_path: Path) -> None:
    client = client_for([fault_server.url + "/truncated"], tmp_path, retry_limit=0)
    with pytest.raises(FetchFailed, match="shorter|truncated"):
        client.find(corpus.build_ids["chain-stripped"], "debuginfo")
    assert cached_files(tmp_path) == []


def test_wrong_build_id_is_rejected(fault_server: FaultServer, corpus: Corpus,
                                    tmp_path: Path) -> None:
    client = client_for([fault_server.url + "/ok"], tmp_path)
    wanted = corpus.build_ids[UNSERVED]  # the server sends chain-stripped's debug file
    with pytest.raises(FetchFailed, match="has build-id " + corpus.build_ids["chain-stripped"]):
        client.find(wanted, "debuginfo")
    assert cached_files(tmp_path) == []
    source = client.find(wanted, "source", "/any/file.c")  # sources carry no build-id
    assert Path(source).name == "source##any##file.c"


@pytest.mark.parametrize("fault", ["big", "bignolen"])
def test_oversized_is_refused(fault: str, fault_server: FaultServer, corpus: Corpus,
                              tmp_path: Path) -> None:
    client = client_for([fault_server.url + "/" + fault], tmp_path, maxsize=1 << 20)
    before = fault_server.hits.get(fault, 0)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="DEBUGINFOD_MAXSIZE"):
        client.find(corpus.build_ids["chain-stripped"], "debuginfo")
    assert time.monotonic() - started < 2 and fault_server.hits[fault] - before == 1
    assert cached_files(tmp_path) == []


def test_servers_in_order_first_good_wins(fault_server: FaultServer, corpus: Corpus,
                                          tmp_path: Path) -> None:
    lines: list[str] = []
    dead = f"http://127.0.0.1:{free_port()}"
    client = client_for([dead, fault_server.url + "/missing", fault_server.url + "/ok"],
                        tmp_path, lines)
    path = client.find(corpus.build_ids["chain-stripped"], "executable")
    assert Path(path).read_bytes() == fault_server.payload  # the debug file has the build-id
    assert len(lines) == 1 and lines[0].startswith(f"debuginfod: cannot reach {dead}")


def test_negative_hit_only_when_every_server_says_404(fault_server: FaultServer,
                                                      corpus: Corpus, tmp_path: Path) -> None:
    bid = corpus.build_ids["chain-stripped"]
    mixed = client_for([fault_server.url + "/missing", fault_server.url + "/e500"],
                       tmp_path / "a", retry_limit=0)
    with pytest.raises(FetchFailed):
        mixed.find(bid, "debuginfo")
    assert cached_files(tmp_path / "a") == []
    only404 = client_for([fault_server.url + "/missing"], tmp_path / "b")
    with pytest.raises(NotFound):
        only404.find(bid, "debuginfo")
    assert (tmp_path / "b" / bid / "debuginfo").stat().st_size == 0
    before = fault_server.hits["missing"]
    again = client_for([fault_server.url + "/missing"], tmp_path / "b")
    with pytest.raises(NotFound):
        again.find(bid, "debuginfo")
    assert fault_server.hits["missing"] == before


def test_hook_reports_each_build_id_once(fault_server: FaultServer, corpus: Corpus,
                                         tmp_path: Path) -> None:
    lines: list[str] = []
    hook = DebuginfodHook(client_for([fault_server.url + "/missing"], tmp_path, lines),
                          report=lines.append)
    for _ in range(3):
        assert hook(corpus.build_ids[UNSERVED], "debuginfo") is None
    assert hook("zz", "debuginfo") is None
    assert lines == [f"debuginfod: no debuginfo for build-id {corpus.build_ids[UNSERVED]} on "
                     "any server", "debuginfod: not a build-id (hex digits): 'zz'"]


def test_maxtime_bounds_the_whole_download(fault_server: FaultServer, corpus: Corpus,
                                           tmp_path: Path) -> None:
    client = client_for([fault_server.url + "/trickle"], tmp_path, timeout_s=30.0,
                        maxtime_s=0.6, retry_limit=0)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="DEBUGINFOD_MAXTIME"):
        client.find(corpus.build_ids["chain-stripped"], "debuginfo")
    assert time.monotonic() - started < 1.0
