"""symbolizer.locate: build-id tree, .gnu_debuglink (+CRC), dwz alt files, hooks."""
from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

from symbolizer.elf import ElfImage
from symbolizer.locate import DebugFiles, DebugInfoLocator, build_id_path, file_crc32

from .test_symbolizer_elf import BUILD, LIBC, LIBC_DEBUG, _need

STRIPPED = BUILD / "stripped" / "chain-stripped"
DWZ = BUILD / "dwz" / "chain-dwz"


def test_libc_debug_file_by_build_id() -> None:
    _need(LIBC, LIBC_DEBUG)
    files = DebugInfoLocator().find(ElfImage(LIBC))
    assert files.debug_path == LIBC_DEBUG


def test_file_with_dwarf_is_its_own_debug_file() -> None:
    path = BUILD / "O2-nofp" / "chain-O2-nofp"
    _need(path)
    assert DebugInfoLocator().find(ElfImage(str(path))) == DebugFiles(str(path), None)


def test_stripped_fixture_debuglink(tmp_path: Path) -> None:
    _need(STRIPPED)
    image = ElfImage(str(STRIPPED))
    assert image.debuglink is not None
    assert file_crc32(str(STRIPPED) + ".debug") == image.debuglink.crc
    empty_root = (str(tmp_path),)
    files = DebugInfoLocator(debug_roots=empty_root).find(image)
    assert files == DebugFiles(str(STRIPPED) + ".debug", None)


def _copy_stripped(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / STRIPPED.name
    shutil.copy2(STRIPPED, exe)
    return exe


def test_debuglink_in_dot_debug_and_global_dirs(tmp_path: Path) -> None:
    _need(STRIPPED)
    exe = _copy_stripped(tmp_path / "bin")
    sub = tmp_path / "bin" / ".debug"
    sub.mkdir()
    shutil.copy2(str(STRIPPED) + ".debug", sub / (STRIPPED.name + ".debug"))
    root = tmp_path / "root"
    locator = DebugInfoLocator(debug_roots=(str(root),))
    assert locator.find(ElfImage(str(exe))).debug_path == str(sub / (STRIPPED.name + ".debug"))
    shutil.rmtree(sub)
    mirrored = Path(str(root) + os.path.realpath(exe.parent))
    mirrored.mkdir(parents=True)
    shutil.copy2(str(STRIPPED) + ".debug", mirrored / (STRIPPED.name + ".debug"))
    assert locator.find(ElfImage(str(exe))).debug_path == \
        str(mirrored / (STRIPPED.name + ".debug"))


def test_debuglink_with_wrong_crc_is_rejected(tmp_path: Path) -> None:
    _need(STRIPPED)
    exe = _copy_stripped(tmp_path)
    bad = tmp_path / (STRIPPED.name + ".debug")
    data = bytearray(Path(str(STRIPPED) + ".debug").read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert zlib.crc32(bytes(data)) != ElfImage(str(exe)).debuglink.crc  # type: ignore[union-attr]
    locator = DebugInfoLocator(debug_roots=(str(tmp_path / "root"),))
    assert locator.find(ElfImage(str(exe))) == DebugFiles(None, None)


def test_origin_names_the_debuglink_directory(tmp_path: Path) -> None:
    _need(STRIPPED)
    elsewhere = _copy_stripped(tmp_path)
    locator = DebugInfoLocator(debug_roots=(str(tmp_path / "root"),))
    assert locator.find(ElfImage(str(elsewhere))).debug_path is None
    found = locator.find(ElfImage(str(elsewhere)), origin=str(STRIPPED))
    assert found.debug_path == str(STRIPPED) + ".debug"


def test_dwz_alt_file() -> None:
    _need(DWZ, DWZ.parent / "common.debug")
    files = DebugInfoLocator().find(ElfImage(str(DWZ)))
    assert files == DebugFiles(str(DWZ), str(DWZ.parent / "common.debug"))


def test_dwz_alt_file_with_wrong_build_id(tmp_path: Path) -> None:
    _need(DWZ)
    exe = tmp_path / DWZ.name
    shutil.copy2(DWZ, exe)
    shutil.copy2(BUILD / "O2-nofp" / "libchain.so", tmp_path / "common.debug")
    files = DebugInfoLocator(debug_roots=(str(tmp_path / "root"),)).find(ElfImage(str(exe)))
    assert files == DebugFiles(str(exe), None)


def test_alt_file_by_build_id_in_debug_root(tmp_path: Path) -> None:
    _need(DWZ)
    exe = tmp_path / DWZ.name
    shutil.copy2(DWZ, exe)
    alt_id = ElfImage(str(exe)).altlink.build_id  # type: ignore[union-attr]
    root = tmp_path / "root"
    target = Path(build_id_path(str(root), alt_id))
    target.parent.mkdir(parents=True)
    shutil.copy2(DWZ.parent / "common.debug", target)
    files = DebugInfoLocator(debug_roots=(str(root),)).find(ElfImage(str(exe)))
    assert files == DebugFiles(str(exe), str(target))


def test_hooks_are_last_and_verified(tmp_path: Path) -> None:
    _need(STRIPPED)
    exe = _copy_stripped(tmp_path)
    build_id = ElfImage(str(exe)).build_id
    calls: list[tuple[str, str]] = []

    def hook(bid: str, kind: str) -> str | None:
        calls.append((bid, kind))
        return str(STRIPPED) + ".debug"

    def broken(bid: str, kind: str) -> str | None:
        raise RuntimeError("network down")

    locator = DebugInfoLocator(debug_roots=(str(tmp_path / "root"),), hooks=[broken])
    locator.add_hook(hook)
    assert locator.find(ElfImage(str(exe))).debug_path == str(STRIPPED) + ".debug"
    assert calls == [(build_id, "debuginfo")]
    wrong = DebugInfoLocator(debug_roots=(str(tmp_path / "root"),),
                             hooks=[lambda bid, kind: LIBC_DEBUG])
    assert wrong.find(ElfImage(str(exe))).debug_path is None  # build-id mismatch


def test_missing_debug_info(tmp_path: Path) -> None:
    _need("/bin/ls")
    files = DebugInfoLocator(debug_roots=(str(tmp_path),)).find(ElfImage("/bin/ls"))
    assert files == DebugFiles(None, None)
