"""symbolizer.maps / symbolizer.module: parsing, grouping and load biases of live processes.

Biases are checked through an independent oracle: for addresses inside known ELF symbols,
``eu-addr2line --pid`` (which does its own /proc/PID/maps reporting) must name the same function
at ``elf_addr + bias``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from symbolizer.elf import ElfImage
from symbolizer.locate import build_id_path
from symbolizer.maps import MapEntry, ProcessMaps
from symbolizer.module import Module, ModuleSet

from .test_symbolizer_elf import BUILD, nm_code_symbols

pytestmark = pytest.mark.skipif(shutil.which("eu-addr2line") is None, reason="no eu-addr2line")

SAMPLE = """\
55d0c8a00000-55d0c8a04000 r--p 00000000 fe:00 1234    /usr/bin/prog
55d0c8a04000-55d0c8a10000 r-xp 00004000 fe:00 1234    /usr/bin/prog
55d0c8a10000-55d0c8a12000 rw-p 00010000 fe:00 1234    /usr/bin/prog
55d0c8a12000-55d0c8a14000 rw-p 00000000 00:00 0
55d0ca000000-55d0ca021000 rw-p 00000000 00:00 0       [heap]
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
7f0000100000-7f0000101000 r-xp 00001000 fe:00 99      /tmp/my lib.so (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0       [stack]
7ffc00100000-7ffc00102000 r-xp 00000000 00:00 0       [vdso]
"""


def test_parse_maps_text() -> None:
    maps = ProcessMaps.from_text(SAMPLE)
    assert len(maps) == 9
    first = maps.find(0x55D0C8A04123)
    assert first == MapEntry(0x55D0C8A04000, 0x55D0C8A10000, "r-xp", 0x4000, "fe:00", 1234,
                             "/usr/bin/prog")
    assert first.is_file and not first.is_deleted
    deleted = maps.find(0x7F0000100000)
    assert deleted is not None and deleted.is_deleted and deleted.file_path == "/tmp/my lib.so"
    anon = maps.find(0x7F0000000800)
    assert anon is not None and not anon.is_file and anon.path == ""
    assert maps.find(0x7F0000001000) is None
    assert maps.find(0) is None
    with pytest.raises(ValueError):
        ProcessMaps.from_text("garbage\n")


def _eu_names(pid: int, addrs: list[int]) -> list[str]:
    out = subprocess.run(["eu-addr2line", f"--pid={pid}", "-f"],
                         input="".join(f"{a:#x}\n" for a in addrs),
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return out.splitlines()[0::2]


def _check_module_bias(pid: int, module: Module, symbol_files: list[str],
                       limit: int = 40) -> int:
    """Sample nm symbols of the module; eu-addr2line --pid must name them at elf + bias."""
    nm: dict[int, set[str]] = {}
    debug = build_id_path("/usr/lib/debug", module.build_id or "none")
    for path in symbol_files + ([debug] if os.path.exists(debug) else []):
        for dynamic in (False, True):
            for start, (size, names) in nm_code_symbols(path, dynamic).items():
                if size:
                    nm.setdefault(start, set()).update(names)
    starts = sorted(nm)[:: max(1, len(nm) // limit)]
    assert starts, f"no symbols to check {module.path}"
    answers = _eu_names(pid, [s + 1 + module.bias for s in starts])
    matched = sum(1 for s, name in zip(starts, answers) if name in nm[s])
    assert matched >= len(starts) * 0.8, (module, list(zip(starts, answers))[:10])
    return matched


def _modules(pid: int) -> ModuleSet:
    return ModuleSet.from_maps(ProcessMaps.from_pid(pid), pid)


def _by_name(modules: ModuleSet, suffix: str) -> Module:
    found = [m for m in modules if m.path.endswith(suffix)]
    assert len(found) == 1, [m.path for m in modules]
    return found[0]


def test_sleep_process(spawn_blocked: Callable[..., Any]) -> None:
    proc = spawn_blocked(["sleep", "600"], ready=None)
    modules = _modules(proc.pid)
    libc = _by_name(modules, "/libc.so.6")
    assert libc.build_id == ElfImage(libc.file).build_id
    _check_module_bias(proc.pid, libc, [libc.file])
    ld = _by_name(modules, "/ld-linux-x86-64.so.2")
    _check_module_bias(proc.pid, ld, [ld.file])
    exe = _by_name(modules, "/sleep")
    maps = ProcessMaps.from_pid(proc.pid)
    assert exe.bias == min(e.start for e in maps if e.path == exe.path)  # PIE, first p_vaddr 0
    for m in modules:  # every mapping of the file lies inside its module
        for e in maps:
            if e.path == m.path:
                assert m.start <= e.start < e.end <= m.end
    assert modules.find(libc.start) == libc and modules.find(libc.end - 1) == libc
    heap = next((e for e in maps if e.path == "[heap]"), None)
    if heap is not None:
        assert modules.find(heap.start) is None


def test_vdso_module(spawn_blocked: Callable[..., Any]) -> None:
    proc = spawn_blocked(["sleep", "600"], ready=None)
    vdso = _by_name(_modules(proc.pid), "[vdso]")
    image = ElfImage(vdso.file)
    assert image.build_id and vdso.build_id == image.build_id
    sym = next(s for s in ("__vdso_clock_gettime", "clock_gettime")
               if image.symbols.lookup(_dynsym_start(vdso.file, s)) is not None)
    start = _dynsym_start(vdso.file, sym)
    assert image.symbols.lookup(start + 1).name in (sym, "clock_gettime",  # type: ignore[union-attr]
                                                    "__vdso_clock_gettime")
    [name] = _eu_names(proc.pid, [start + 1 + vdso.bias])
    assert name in ("__vdso_clock_gettime", "clock_gettime")
    assert ModuleSet.from_maps(ProcessMaps.from_pid(proc.pid), None).find(vdso.start) is not None


def _dynsym_start(path: str, name: str) -> int:
    return next(s for s, (_, names) in nm_code_symbols(path, dynamic=True).items()
                if name in names)


def test_python_process(spawn_blocked: Callable[..., Any]) -> None:
    proc = spawn_blocked([sys.executable, "-c",
                          "import time; print('ready', flush=True); time.sleep(600)"])
    modules = _modules(proc.pid)
    exe = _by_name(modules, os.path.basename(os.path.realpath(sys.executable)))
    _check_module_bias(proc.pid, exe, [exe.file])


@pytest.mark.parametrize("variant,pie", [("O2-nofp", True), ("nopie", False),
                                         ("stripped", True)])
def test_fixture_process(spawn_blocked: Callable[..., Any], variant: str, pie: bool) -> None:
    exe_path = BUILD / variant / f"chain-{variant}"
    if not exe_path.exists():
        pytest.skip(f"{exe_path} not built")
    proc = spawn_blocked([str(exe_path)])
    modules = _modules(proc.pid)
    exe = _by_name(modules, f"/chain-{variant}")
    if not pie:
        assert exe.bias == 0
    symbols = [exe.file] + ([str(exe_path) + ".debug"] if variant == "stripped" else [])
    _check_module_bias(proc.pid, exe, symbols)
    lib = _by_name(modules, "/libchain.so")
    _check_module_bias(proc.pid, lib, [lib.file])


def test_deleted_file(spawn_blocked: Callable[..., Any], tmp_path: Path) -> None:
    src = BUILD / "O2-nofp" / "chain-O2-nofp"
    if not src.exists():
        pytest.skip(f"{src} not built")
    copy = tmp_path / "chain-copy"
    shutil.copy2(src, copy)
    shutil.copy2(src.parent / "libchain.so", tmp_path / "libchain.so")  # found via $ORIGIN
    proc = spawn_blocked([str(copy)])
    copy.unlink()
    modules = _modules(proc.pid)
    exe = _by_name(modules, "/chain-copy")
    assert exe.path == str(copy)
    assert exe.file.startswith(f"/proc/{proc.pid}/map_files/")
    assert exe.build_id == ElfImage(str(src)).build_id
    # eu-addr2line cannot open a deleted file: check the bias against the maps directly
    first = min(e.start for e in ProcessMaps.from_pid(proc.pid) if e.file_path == str(copy))
    assert exe.bias == first
    sym = ElfImage(exe.file).symbols.lookup(_symtab_start(src, "fx_leaf") + 1)
    assert sym is not None and sym.name == "fx_leaf"


def _symtab_start(path: Path, name: str) -> int:
    return next(s for s, (_, names) in nm_code_symbols(path).items() if name in names)


def test_offline_maps_without_pid() -> None:
    """From a saved maps text: data files and JIT memfds are not modules; a deleted file that
    cannot be opened keeps its range with an assumed bias."""
    text = (
        "7f0000000000-7f0000001000 r--p 00000000 fe:00 5 /usr/lib/locale/C.utf8/LC_CTYPE\n"
        "7f0000100000-7f0000101000 r-xp 00000000 00:01 7 /memfd:jit (deleted)\n"
        "7f0000200000-7f0000201000 r--p 00000000 fe:00 9 /opt/app/libgone.so (deleted)\n"
        "7f0000201000-7f0000203000 r-xp 00001000 fe:00 9 /opt/app/libgone.so (deleted)\n"
    )
    modules = ModuleSet.from_maps(ProcessMaps.from_text(text), None)
    assert modules.find(0x7F0000000000) is None
    assert modules.find(0x7F0000100000) is None
    gone = modules.find(0x7F0000202000)
    assert gone is not None and gone.path == "/opt/app/libgone.so"
    assert (gone.bias, gone.start, gone.end, gone.build_id) == (
        0x7F0000200000, 0x7F0000200000, 0x7F0000203000, None)
