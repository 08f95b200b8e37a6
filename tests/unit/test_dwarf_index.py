"""DwarfIndex: persistence, cache keys, entry/size, compressed sections and corrupt DWARF."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import symbolizer.dwarf_index as dwarf_index
from symbolizer.dwarf_index import DwarfError, DwarfIndex, cache_root
from symbolizer.dwarf_sections import load_sections
from symbolizer.dwarf_units import parse_unit_headers
from symbolizer.frames import SourceFrame


def _elf_sections(path: str) -> dict[str, tuple[int, int, int, int]]:
    """name → (section header offset, file offset, size, address) of each section."""
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        elf = ELFFile(f)
        shoff, entsize = elf["e_shoff"], elf["e_shentsize"]
        return {s.name: (shoff + i * entsize, s["sh_offset"], s["sh_size"], s["sh_addr"])
                for i, s in enumerate(elf.iter_sections())}


def _all_lookups(index: DwarfIndex, start: int, size: int) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for addr in range(start, start + size):
        try:
            out[addr] = index.lookup(addr)
        except DwarfError as exc:
            out[addr] = exc
    return out


@pytest.fixture()
def chain_elf(fixture_build: Any) -> str:
    return str(fixture_build.program_path("chain", "O2-nofp"))


def test_warm_index_equals_cold_and_needs_no_dwarf(chain_elf: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, size, start = _elf_sections(chain_elf)[".text"]
    cold = DwarfIndex.load_or_build(chain_elf, None, "00ab", str(tmp_path))
    expected = _all_lookups(cold, start, size)
    cold.save()
    assert (tmp_path / "dwarf" / "00ab.v1").is_file()
    assert not [p for p in os.listdir(tmp_path / "dwarf") if p.startswith(".tmp")]

    def no_dwarf(path: str) -> None:
        raise AssertionError(f"warm index read DWARF from {path}")

    monkeypatch.setattr(dwarf_index, "load_sections", no_dwarf)
    warm = DwarfIndex.load_or_build(chain_elf, None, "00ab", str(tmp_path))
    assert _all_lookups(warm, start, size) == expected
    assert any(expected.values())


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UBT_CACHE_DIR", "/a")
    monkeypatch.setenv("XDG_CACHE_HOME", "/b")
    assert cache_root("/explicit") == "/explicit"
    assert cache_root() == "/a"
    monkeypatch.delenv("UBT_CACHE_DIR")
    assert cache_root() == "/b/ubt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == os.path.expanduser("~/.cache/ubt")


def test_without_build_id_keyed_by_path_size_mtime(chain_elf: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy.elf"
    shutil.copy(chain_elf, copy)
    cache = tmp_path / "cache"
    DwarfIndex.load_or_build(str(copy), None, None, str(cache)).save()
    first = set(os.listdir(cache / "dwarf"))
    assert len(first) == 1
    os.utime(copy, ns=(1, 1))
    DwarfIndex.load_or_build(str(copy), None, None, str(cache)).save()
    assert len(set(os.listdir(cache / "dwarf")) - first) == 1


def test_units_built_later_are_added_to_the_cache(chain_elf: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, size, start = _elf_sections(chain_elf)[".text"]
    DwarfIndex.load_or_build(chain_elf, None, "cd", str(tmp_path)).save()   # map only
    warm = DwarfIndex.load_or_build(chain_elf, None, "cd", str(tmp_path))
    expected = _all_lookups(warm, start, size)                              # builds the unit
    warm.save()

    def no_dwarf(path: str) -> None:
        raise AssertionError(f"warm index read DWARF from {path}")

    monkeypatch.setattr(dwarf_index, "load_sections", no_dwarf)
    again = DwarfIndex.load_or_build(chain_elf, None, "cd", str(tmp_path))
    assert _all_lookups(again, start, size) == expected


def test_outside_every_unit_is_empty(chain_elf: str, tmp_path: Path) -> None:
    index = DwarfIndex.load_or_build(chain_elf, None, None, str(tmp_path))
    assert index.lookup(0) == ()
    assert index.lookup(1 << 60) == ()
    assert index.function_at(1 << 60) is None


def test_entry_and_size_match_the_symbol_table(chain_elf: str, tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile
    index = DwarfIndex.load_or_build(chain_elf, None, None, str(tmp_path))
    checked = 0
    with open(chain_elf, "rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or not sym["st_size"]:
                continue
            addr, size = sym["st_value"], sym["st_size"]
            frames = index.lookup(addr)
            if not frames or frames[-1].function is None:
                continue                    # crt code without DWARF
            outer = frames[-1]
            assert (outer.entry, outer.size, outer.inlined) == (addr, size, False), sym.name
            found = index.function_at(addr + size - 1)
            assert found is not None and (found.entry, found.size) == (addr, size)
            checked += 1
    assert checked >= 5


def test_inline_chain_shape(chain_elf: str, tmp_path: Path) -> None:
    """Inlined frames carry no entry; the outermost frame is the subprogram."""
    index = DwarfIndex.load_or_build(chain_elf, None, None, str(tmp_path))
    _, _, size, start = _elf_sections(chain_elf)[".text"]
    chains = [c for c in _all_lookups(index, start, size).values() if len(c) > 1]
    assert chains, "the O2 fixture has inlined calls"
    for chain in chains:
        assert all(f.inlined and f.entry is None for f in chain[:-1])
        assert not chain[-1].inlined and chain[-1].entry is not None
        assert all(isinstance(f, SourceFrame) and f.line for f in chain)


def test_zdebug_sections(chain_elf: str, tmp_path: Path) -> None:
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy is not installed")
    zdebug = tmp_path / "z.elf"
    subprocess.run(["objcopy", "--compress-debug-sections=zlib-gnu", chain_elf, str(zdebug)],
                   check=True)
    assert ".zdebug_info" in _elf_sections(str(zdebug))
    _, _, size, start = _elf_sections(chain_elf)[".text"]
    plain = DwarfIndex.load_or_build(chain_elf, None, None, str(tmp_path / "a"))
    packed = DwarfIndex.load_or_build(str(zdebug), None, None, str(tmp_path / "b"))
    assert _all_lookups(packed, start, size) == _all_lookups(plain, start, size)


# ---- corrupt DWARF ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_units(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A shared object with two compilation units: one.c (first) and two.c."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("two")
    (d / "one.c").write_text("int one(int x) { return x * 3 + 1; }\n")
    (d / "two.c").write_text("int two(int x) { return x * 5 + 2; }\n")
    out = d / "libtwo.so"
    subprocess.run(["gcc", "-g", "-O1", "-shared", "-fPIC", "-o", str(out), str(d / "one.c"),
                    str(d / "two.c")], check=True)
    return str(out)


def _function_addrs(path: str) -> dict[str, int]:
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        return {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab")
                .iter_symbols() if s.name in ("one", "two")}


def _patched(src: str, dst: Path, edits: dict[int, bytes]) -> str:
    data = bytearray(Path(src).read_bytes())
    for offset, raw in edits.items():
        data[offset:offset + len(raw)] = raw
    dst.write_bytes(bytes(data))
    return str(dst)


def test_garbled_unit_fails_alone(two_units: str, tmp_path: Path) -> None:
    _, info_off, _, _ = _elf_sections(two_units)[".debug_info"]
    units, _ = parse_unit_headers(load_sections(two_units).info)
    second = units[1]
    # A run of 0xff bytes after the root DIE of two.c's unit: an impossible abbrev code.
    bad = _patched(two_units, tmp_path / "garbled.so",
                   {info_off + second.die_offset + 1: b"\xff" * 6 + b"\x7f"})
    addrs = _function_addrs(two_units)
    index = DwarfIndex.load_or_build(bad, None, None, str(tmp_path / "c"))
    assert index.lookup(addrs["one"])[0].function == "one"
    with pytest.raises(DwarfError):
        index.lookup(addrs["two"])
    with pytest.raises(DwarfError):                 # the failure is remembered, and persisted
        index.lookup(addrs["two"])
    index.save()
    warm = DwarfIndex.load_or_build(bad, None, None, str(tmp_path / "c"))
    with pytest.raises(DwarfError):
        warm.lookup(addrs["two"])


def test_truncated_debug_info(two_units: str, tmp_path: Path) -> None:
    header, _, size, _ = _elf_sections(two_units)[".debug_info"]
    units, _ = parse_unit_headers(load_sections(two_units).info)
    cut = units[1].offset + (units[1].end - units[1].offset) // 2
    assert cut < size
    # sh_size is at offset 32 of an ELF64 section header.
    bad = _patched(two_units, tmp_path / "cut.so", {header + 32: cut.to_bytes(8, "little")})
    addrs = _function_addrs(two_units)
    index = DwarfIndex.load_or_build(bad, None, None, str(tmp_path / "c"))
    assert index.lookup(addrs["one"])[0].function == "one"
    with pytest.raises(DwarfError):
        index.lookup(addrs["two"])


@pytest.mark.parametrize("section", [".debug_info", ".debug_abbrev", ".debug_line",
                                     ".debug_aranges", ".debug_rnglists"])
def test_random_damage_raises_only_dwarf_error(chain_elf: str, tmp_path: Path,
                                               section: str) -> None:
    sections = _elf_sections(chain_elf)
    if section not in sections:
        pytest.skip(f"no {section}")
    _, offset, size, _ = sections[section]
    _, _, text_size, text_start = sections[".text"]
    rng = random.Random(section)
    for trial in range(25):
        edits = {offset + rng.randrange(size): bytes([rng.randrange(256)])
                 for _ in range(rng.randint(1, 6))}
        bad = _patched(chain_elf, tmp_path / "bad.elf", edits)
        try:
            index = DwarfIndex.load_or_build(bad, None, None, str(tmp_path / f"c{trial}"))
        except DwarfError:
            continue
        for addr in range(text_start, text_start + text_size, 7):
            try:
                index.lookup(addr)
                index.function_at(addr)
            except DwarfError:
                pass


def test_not_elf(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf file at all" * 10)
    with pytest.raises(DwarfError):
        DwarfIndex.load_or_build(str(junk), None, None, str(tmp_path))


def test_saved_at_exit_without_explicit_save(chain_elf: str, tmp_path: Path) -> None:
    _, _, _, start = _elf_sections(chain_elf)[".text"]
    script = ("import sys\nfrom symbolizer.dwarf_index import DwarfIndex\n"
              "index = DwarfIndex.load_or_build(sys.argv[1], None, 'ee', sys.argv[2])\n"
              "index.lookup(int(sys.argv[3]))\n")
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script, chain_elf, str(tmp_path), str(start + 64)],
                   check=True, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert (tmp_path / "dwarf" / "ee.v1").is_file()
