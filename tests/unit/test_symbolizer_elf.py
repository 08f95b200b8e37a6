"""symbolizer.elf / symbolizer.symtab against readelf and nm on real files."""
from __future__ import annotations

import lzma
import os
import random
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from symbolizer.elf import ElfFormatError, ElfImage
from symbolizer.symtab import RawSymbol, SymbolTable

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBC_BUILD_ID = "93ac61ec5a8eb1396f9fbd350e3169a558528a40"
LIBC_DEBUG = f"/usr/lib/debug/.build-id/{LIBC_BUILD_ID[:2]}/{LIBC_BUILD_ID[2:]}.debug"
BUILD = Path(__file__).resolve().parents[2] / "fixtures" / "build"


def _need(*paths: str | Path) -> None:
    for p in paths:
        if not os.path.exists(p):
            pytest.skip(f"{p} not present")


def nm_code_symbols(path: str | Path, dynamic: bool = False) -> dict[int, tuple[int, set[str]]]:
    """{start: (largest size, names)} of nm's text symbols (T t W i)."""
    argv = ["nm", "-S", "--defined-only"] + (["-D"] if dynamic else []) + [str(path)]
    out: dict[int, tuple[int, set[str]]] = {}
    for line in subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split("\n"):
        f = line.split()
        if len(f) == 4 and f[2] in "TtWi":
            start, size, name = int(f[0], 16), int(f[1], 16), f[3].split("@")[0]
            have = out.get(start, (0, set()))
            out[start] = (max(have[0], size), have[1] | {name})
    return out


def readelf_build_id(path: str | Path) -> str:
    text = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True).stdout
    return text.split("Build ID:")[1].split()[0]


@pytest.mark.parametrize("path", ["/bin/ls", LIBC, LIBC_DEBUG])
def test_build_id_matches_readelf(path: str) -> None:
    _need(path)
    assert ElfImage(path).build_id == readelf_build_id(path)


def test_libc_links_and_dwarf() -> None:
    _need(LIBC, LIBC_DEBUG)
    libc = ElfImage(LIBC)
    assert libc.debuglink is not None and libc.debuglink.name.endswith(".debug")
    assert not libc.has_dwarf
    assert libc.elf_type == "ET_DYN"
    assert ElfImage(LIBC_DEBUG).has_dwarf


def test_fixture_links() -> None:
    _need(BUILD / "dwz" / "chain-dwz", BUILD / "stripped" / "chain-stripped")
    dwz = ElfImage(str(BUILD / "dwz" / "chain-dwz"))
    assert dwz.altlink is not None and dwz.altlink.name == "common.debug"
    assert dwz.altlink.build_id == readelf_build_id(BUILD / "dwz" / "common.debug")
    stripped = ElfImage(str(BUILD / "stripped" / "chain-stripped"))
    assert stripped.debuglink is not None
    assert stripped.debuglink.name == "chain-stripped.debug"
    assert not stripped.has_dwarf
    assert ElfImage(str(BUILD / "gz" / "chain-gz")).has_dwarf  # SHF_COMPRESSED .debug_info
    assert ElfImage(str(BUILD / "nopie" / "chain-nopie")).elf_type == "ET_EXEC"


def _sample_and_check(table: SymbolTable, nm: dict[int, tuple[int, set[str]]],
                      count: int = 400) -> None:
    starts = sorted(nm)
    rng = random.Random(1)
    candidates = [(s, starts[i + 1] if i + 1 < len(starts) else None)
                  for i, s in enumerate(starts) if nm[s][0] > 0]
    checked = 0
    for start, following in rng.sample(candidates, min(count, len(candidates))):
        size = nm[start][0]
        if following is not None and following < start + size:
            continue  # a nested symbol: nm cannot say which one "the" answer is
        addr = start + rng.randrange(size)
        sym = table.lookup(addr)
        assert sym is not None, f"{addr:#x} not covered, nm has {nm[start]}"
        assert sym.addr == start and sym.name in nm[start][1], (hex(addr), sym, nm[start])
        checked += 1
    assert checked > min(count, len(candidates)) // 2


def test_libc_debug_symtab_matches_nm() -> None:
    _need(LIBC_DEBUG)
    _sample_and_check(ElfImage(LIBC_DEBUG).symbols, nm_code_symbols(LIBC_DEBUG))


def test_libc_dynsym_matches_nm() -> None:
    _need(LIBC)
    _sample_and_check(ElfImage(LIBC).symbols, nm_code_symbols(LIBC, dynamic=True))


def test_prefers_global_function_over_local_alias() -> None:
    _need(LIBC_DEBUG)
    table = ElfImage(LIBC_DEBUG).symbols
    nm = nm_code_symbols(LIBC_DEBUG)
    globals_by_start: dict[int, set[str]] = defaultdict(set)
    for line in subprocess.run(["nm", "--defined-only", LIBC_DEBUG], capture_output=True,
                               text=True, check=True).stdout.splitlines():
        f = line.split()
        if len(f) == 3 and f[1] == "T":
            globals_by_start[int(f[0], 16)].add(f[2].split("@")[0])
    mixed = [s for s, names in globals_by_start.items() if len(nm[s][1] - names) > 0]
    assert mixed
    for start in mixed[:200]:
        sym = table.lookup(start)
        assert sym is not None and sym.name in globals_by_start[start], (sym, nm[start])


def test_size_zero_symbol_covers_to_next() -> None:
    table = SymbolTable([
        RawSymbol("asm_entry", 0x1000, 0, 0, 0, 0x2000),
        RawSymbol("next_func", 0x1100, 0x20, 1, 2, 0x2000),
        RawSymbol("tail_label", 0x1200, 0, 0, 0, 0x1300),
    ])
    assert table.lookup(0x10FF).name == "asm_entry"  # type: ignore[union-attr]
    assert table.lookup(0x1100).name == "next_func"  # type: ignore[union-attr]
    assert table.lookup(0x1120) is None
    assert table.lookup(0x12FF).name == "tail_label"  # type: ignore[union-attr]
    assert table.lookup(0x1300) is None
    assert table.lookup(0xFFF) is None


def _eu_addr2line_names(elf: str, addrs: list[int]) -> list[str]:
    out = subprocess.run(["eu-addr2line", "-f", "-e", elf], input="".join(f"{a:#x}\n" for a in addrs),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return out[0::2]


@pytest.mark.skipif(shutil.which("eu-addr2line") is None, reason="eu-addr2line missing")
def test_symtab_only_binary_matches_eu_addr2line(tmp_path: Path) -> None:
    src = BUILD / "O2-nofp" / "cxx-O2-nofp"
    _need(src)
    nodebug = tmp_path / "cxx-nodebug"
    subprocess.run(["objcopy", "--strip-debug", str(src), str(nodebug)], check=True)
    table = ElfImage(str(nodebug)).symbols
    nm = nm_code_symbols(nodebug)
    addrs = [s + k for s, (size, _) in sorted(nm.items()) for k in (0, size // 2) if size]
    for addr, name in zip(addrs, _eu_addr2line_names(str(nodebug), addrs)):
        sym = table.lookup(addr)
        assert sym is not None and sym.name == name, (hex(addr), sym, name)


def _make_minidebuginfo(src: Path, out: Path, tmp: Path) -> None:
    """Fedora's recipe: the local FUNC symbols missing from .dynsym, in an xz'ed ELF."""
    keep = tmp / "keep"
    keep.write_text("\n".join(sorted(n for _, names in nm_code_symbols(src).values()
                                     for n in names)) + "\n")
    mini = tmp / "mini.debug"
    subprocess.run(["objcopy", "-S", "--remove-section", ".gdb_index", "--remove-section",
                    ".comment", f"--keep-symbols={keep}", str(src), str(mini)], check=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(mini), str(mini)], check=True)
    xz = tmp / "mini.xz"
    xz.write_bytes(lzma.compress(mini.read_bytes(), format=lzma.FORMAT_XZ))
    stripped = tmp / "stripped"
    subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(src)], check=True)
    subprocess.run(["objcopy", "--add-section", f".gnu_debugdata={xz}", str(stripped), str(out)],
                   check=True)


def test_minidebuginfo(tmp_path: Path) -> None:
    src = BUILD / "O2-nofp" / "chain-O2-nofp"
    _need(src)
    target = tmp_path / "chain-mini"
    _make_minidebuginfo(src, target, tmp_path)
    image = ElfImage(str(target))
    assert image.symbols.lookup(_nm_start(src, "fx_leaf")) is None  # not in .dynsym
    mini = image.minidebuginfo()
    assert mini is not None
    sym = mini.symbols.lookup(_nm_start(src, "fx_leaf") + 1)
    assert sym is not None and sym.name == "fx_leaf"
    assert ElfImage(str(src)).minidebuginfo() is None


def _nm_start(path: Path, name: str) -> int:
    return next(s for s, (_, names) in nm_code_symbols(path).items() if name in names)


@pytest.mark.parametrize("cut", [0.5, 0.95, 64])
def test_truncated_file_is_format_error(tmp_path: Path, cut: float) -> None:
    _need(LIBC)
    data = Path(LIBC).read_bytes()
    bad = tmp_path / "libc-truncated.so"
    bad.write_bytes(data[:int(len(data) * cut) if cut < 1 else int(cut)])
    with pytest.raises(ElfFormatError) as e:
        ElfImage(str(bad)).symbols.lookup(0x1000)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_random_bytes_and_non_elf(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(random.Random(2).randbytes(4096))
    with pytest.raises(ElfFormatError, match="not an ELF file"):
        ElfImage(str(junk))
    fake = tmp_path / "fake-elf"
    fake.write_bytes(b"\x7fELF" + random.Random(3).randbytes(4096))
    with pytest.raises(ElfFormatError) as e:
        ElfImage(str(fake)).symbols
    assert str(fake) in str(e.value)
    with pytest.raises(ElfFormatError, match="cannot read"):
        ElfImage(str(tmp_path / "missing"))
    assert issubclass(ElfFormatError, ValueError)


def test_corrupt_section_header_fields(tmp_path: Path) -> None:
    _need(LIBC)
    data = bytearray(Path(LIBC).read_bytes())
    shoff = int.from_bytes(data[0x28:0x30], "little")
    data[shoff + 64 * 5 + 24:shoff + 64 * 5 + 32] = (1 << 40).to_bytes(8, "little")  # sh_offset
    bad = tmp_path / "libc-badsection.so"
    bad.write_bytes(bytes(data))
    with pytest.raises(ElfFormatError, match="truncated|corrupt"):
        ElfImage(str(bad))
