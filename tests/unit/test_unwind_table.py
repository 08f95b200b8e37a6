"""UnwindTable: lookup by bisect, serialization, and the on-disk cache by build-id."""
from __future__ import annotations

import os
import shutil
import time
from array import array
from pathlib import Path

import pytest

from unwind.cfi import UnwindTableCache, cache_root, compile_table
from unwind.regs import RA, RBP, RSP
from unwind.table import RuleKind, TableFormatError, UnwindTable, make_rule

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
ROOT = Path(__file__).resolve().parents[2]
DEBUGFRAME = ROOT / "fixtures/build/debugframe/chain-debugframe"
STRIPPED = ROOT / "fixtures/build/stripped/chain-stripped"


def small_table() -> UnwindTable:
    entry = make_rule(RSP, 8, None, ((RA, RuleKind.OFFSET, -8),), False)
    pushed = make_rule(RSP, 16, None, ((RBP, RuleKind.OFFSET, -16), (RA, RuleKind.OFFSET, -8)),
                       False)
    expr = make_rule(-1, 0, b"\x77\x08", ((RA, RuleKind.EXPRESSION, b"\x77\x10"),), True)
    return UnwindTable(array("Q", [0x1000, 0x1001, 0x2000]), array("Q", [0x1001, 0x1010, 0x2004]),
                       array("I", [0, 1, 2]), (entry, pushed, expr))


def test_row_for_covers_half_open_ranges_and_gaps() -> None:
    t = small_table()
    assert t.row_for(0xFFF) is None
    row = t.row_for(0x1000)
    assert row is not None and (row.start, row.end) == (0x1000, 0x1001)
    assert row.cfa.reg == RSP and row.cfa.offset == 8 and row.regs[RA].value == -8
    row = t.row_for(0x100F)
    assert row is not None and row.regs[RBP].kind is RuleKind.OFFSET
    assert t.row_for(0x1010) is None and t.row_for(0x1FFF) is None
    row = t.row_for(0x2003)
    assert row is not None and row.signal_frame and row.cfa.reg is None
    assert row.cfa.expr == b"\x77\x08" and row.regs[RA].expr == b"\x77\x10"
    assert t.row_for(0x2004) is None
    assert t.raw_for(0x1000) == t.rules[0] and t.raw_for(0x1010) is None
    assert t.raw_for(0x1010) is None  # memoized miss


def test_simple_flag() -> None:
    t = small_table()
    assert t.rules[0][5] and t.rules[1][5] and not t.rules[2][5]
    assert not make_rule(RSP, 8, None, ((RBP, RuleKind.OFFSET, -16),), False)[5]  # no RA rule
    assert not make_rule(RSP, 8, None, ((RA, RuleKind.OFFSET, -8), (3, RuleKind.SAME_VALUE, 0)),
                         False)[5]


def test_round_trip_bytes() -> None:
    t = small_table()
    back = UnwindTable.from_bytes(t.to_bytes())
    assert list(back.rows()) == list(t.rows())
    libc = compile_table(LIBC)
    again = UnwindTable.from_bytes(libc.to_bytes())
    assert len(again) == len(libc) > 10_000
    assert again.starts == libc.starts and again.index == libc.index and again.rules == libc.rules


@pytest.mark.parametrize("data", [b"", b"garbage", small_table().to_bytes()[:-7],
                                  small_table().to_bytes()[:40]])
def test_corrupt_bytes_raise_table_format_error(data: bytes) -> None:
    with pytest.raises(TableFormatError):
        UnwindTable.from_bytes(data)


def test_rows_are_sorted_and_disjoint() -> None:
    t = compile_table(LIBC)
    assert all(s < e for s, e in zip(t.starts, t.ends))
    assert all(e <= s for e, s in zip(t.ends, t.starts[1:]))


def test_cache_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UBT_CACHE_DIR", "/x/ubt")
    assert cache_root() == "/x/ubt"
    assert cache_root("/given") == "/given"
    monkeypatch.delenv("UBT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_root() == "/xdg/ubt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert cache_root() == "/home/u/.cache/ubt"


def test_cache_miss_then_hit_then_warm_load(tmp_path: Path) -> None:
    build_id = "ABCDEF0123"
    cache = UnwindTableCache(str(tmp_path))
    table = cache.get(build_id, LIBC)
    path = tmp_path / "unwind" / "abcdef0123.v1"
    assert path.is_file()
    assert [p.name for p in (tmp_path / "unwind").iterdir()] == ["abcdef0123.v1"]
    assert cache.get(build_id, LIBC) is table  # memory hit
    t0 = time.perf_counter()
    warm = UnwindTableCache(str(tmp_path)).get(build_id, LIBC)  # disk hit
    assert time.perf_counter() - t0 < 0.05
    assert warm.starts == table.starts and warm.rules == table.rules


def test_cache_disk_hit_does_not_read_the_elf(tmp_path: Path) -> None:
    UnwindTableCache(str(tmp_path)).get("feed", LIBC)
    table = UnwindTableCache(str(tmp_path)).get("feed", "/nonexistent/file")
    assert len(table) > 10_000


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "unwind" / "beef.v1"
    path.parent.mkdir()
    for junk in (b"", b"UBTUNW1\x00garbage", b"something else entirely"):
        path.write_bytes(junk)
        table = UnwindTableCache(str(tmp_path)).get("beef", str(DEBUGFRAME))
        assert len(table) > 0
        assert UnwindTable.from_bytes(path.read_bytes()[8:]).starts == table.starts


def test_file_without_build_id_keyed_by_path_size_mtime(tmp_path: Path) -> None:
    copy = tmp_path / "prog"
    shutil.copy(DEBUGFRAME, copy)
    cache = UnwindTableCache(str(tmp_path / "c"))
    first = cache.path_for(None, str(copy))
    cache.get(None, str(copy))
    assert os.path.isfile(first)
    os.utime(copy, ns=(1, 1))
    assert cache.path_for(None, str(copy)) != first


def test_table_without_debug_file_is_rebuilt_once_one_is_given(tmp_path: Path) -> None:
    cache = UnwindTableCache(str(tmp_path))
    bare = cache.get("cafe", str(STRIPPED))
    full = cache.get("cafe", str(STRIPPED), str(STRIPPED) + ".debug")
    assert len(full) >= len(bare)
    assert UnwindTableCache(str(tmp_path)).get("cafe", "/nonexistent", "/also/not") is not None


def test_unwritable_cache_still_returns_the_table(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert len(UnwindTableCache(str(blocker)).get("aa", str(DEBUGFRAME))) > 0
