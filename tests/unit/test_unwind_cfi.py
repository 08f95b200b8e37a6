"""CFI compilation checked against binutils: for sampled pcs of real binaries, the compiled
table's CFA and register rules must equal what ``readelf --debug-dump=frames-interp`` prints."""
from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from unwind.cfi import compile_table
from unwind.cfi import parse_section
from unwind.cfi_parse import RowSink, SectionInfo
from unwind.regs import NAMES, RA
from unwind.table import RuleKind, UnwindRow, UnwindTable

ROOT = Path(__file__).resolve().parents[2]
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LS = "/bin/ls"
DEBUGFRAME = ROOT / "fixtures/build/debugframe/chain-debugframe"

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils readelf")

_FDE = re.compile(r"^[0-9a-f]+ [0-9a-f]+ [0-9a-f]+ FDE cie=[0-9a-f]+ "
                  r"pc=([0-9a-f]+)\.\.([0-9a-f]+)")
_SECTION = re.compile(r"^Contents of the (\.\w+) section")
_COLUMN = {name: num for num, name in NAMES.items()} | {"ra": RA}


@dataclass(frozen=True)
class ReadelfRow:
    section: str
    start: int
    end: int
    cfa: str
    regs: dict[int, str]


def readelf_rows(path: str | Path) -> list[ReadelfRow]:
    """Every interpreted row readelf prints, with the address range it covers."""
    # readelf exits 1 on some libcs without saying why; its output is complete all the same.
    out = subprocess.run(["readelf", "--debug-dump=frames-interp", str(path)],
                         capture_output=True, text=True).stdout
    assert "Contents of the" in out
    rows: list[ReadelfRow] = []
    section = ""
    lines = out.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if m := _SECTION.match(line):
            section = m.group(1)
            continue
        m = _FDE.match(line)
        if not m or i >= len(lines) or not lines[i].startswith("   LOC"):
            continue
        lo, hi = int(m.group(1), 16), int(m.group(2), 16)
        columns = [_COLUMN[c] for c in lines[i].split()[2:]]
        i += 1
        parsed: list[tuple[int, str, dict[int, str]]] = []
        while i < len(lines) and lines[i].strip():
            tokens: list[str] = []
            for tok in lines[i].split():
                if tok.startswith("(") and tokens:
                    tokens[-1] += " " + tok  # "r9 (r9)": a register rule and its name
                else:
                    tokens.append(tok)
            parsed.append((int(tokens[0], 16), tokens[1], dict(zip(columns, tokens[2:]))))
            i += 1
        for n, (loc, cfa, regs) in enumerate(parsed):
            end = parsed[n + 1][0] if n + 1 < len(parsed) else hi
            if loc < end:
                rows.append(ReadelfRow(section, loc, end, cfa, regs))
    return rows


def render_cfa(row: UnwindRow) -> str:
    if row.cfa.reg is None:
        return "exp"
    return f"{NAMES[row.cfa.reg]}{row.cfa.offset:+d}"


def render_reg(row: UnwindRow, reg: int) -> str:
    """The rule of `reg` as readelf spells it ("u" also for registers without a rule)."""
    rule = row.regs.get(reg)
    if rule is None or rule.kind == RuleKind.UNDEFINED:
        return "u"
    if rule.kind == RuleKind.REGISTER:
        return f"r{rule.value} ({NAMES[rule.value]})"
    if rule.kind in (RuleKind.OFFSET, RuleKind.VAL_OFFSET):
        return f"{'c' if rule.kind == RuleKind.OFFSET else 'v'}{rule.value:+d}"
    return {RuleKind.SAME_VALUE: "s", RuleKind.EXPRESSION: "exp",
            RuleKind.VAL_EXPRESSION: "vexp"}[rule.kind]


def check_against_readelf(table: UnwindTable, expected: list[ReadelfRow], samples: int,
                          seed: int) -> int:
    """Compare `samples` random pcs (plus each sampled row's first and last pc)."""
    rnd = random.Random(seed)
    chosen = expected if len(expected) <= samples else rnd.sample(expected, samples)
    checked = 0
    for exp in chosen:
        for pc in {exp.start, exp.end - 1, rnd.randrange(exp.start, exp.end)}:
            row = table.row_for(pc)
            assert row is not None, f"{exp.section}: no row for {pc:#x}"
            assert render_cfa(row) == exp.cfa, f"CFA at {pc:#x}"
            got = {reg: render_reg(row, reg) for reg in exp.regs}
            assert got == exp.regs, f"register rules at {pc:#x}"
            # Registers readelf has no column for must have no rule in the table either.
            assert set(row.regs) <= set(exp.regs), f"extra rules at {pc:#x}"
            checked += 1
    return checked


@pytest.fixture(scope="module")
def libc_table() -> UnwindTable:
    return compile_table(LIBC)


@pytest.fixture(scope="module")
def libc_readelf() -> list[ReadelfRow]:
    return readelf_rows(LIBC)


def test_libc_matches_readelf(libc_table: UnwindTable, libc_readelf: list[ReadelfRow]) -> None:
    expected = libc_readelf
    assert len(expected) > 10_000
    assert check_against_readelf(libc_table, expected, 400, seed=1) >= 800


def test_libc_special_rows_match_readelf(libc_table: UnwindTable,
                                        libc_readelf: list[ReadelfRow]) -> None:
    """Every row with expressions, register rules or a CFA other than rsp: the rare cases."""
    special = [r for r in libc_readelf
               if not r.cfa.startswith("rsp") or any(not v.startswith(("c", "u"))
                                                     for v in r.regs.values())]
    assert len(special) > 100
    check_against_readelf(libc_table, special, len(special), seed=2)


def test_ls_matches_readelf() -> None:
    expected = readelf_rows(LS)
    check_against_readelf(compile_table(LS), expected, 300, seed=3)


def test_debug_frame_fills_what_eh_frame_does_not_cover() -> None:
    expected = readelf_rows(DEBUGFRAME)
    eh = [r for r in expected if r.section == ".eh_frame"]
    debug = [r for r in expected if r.section == ".debug_frame"]
    assert debug, "the fixture's own code should be described by .debug_frame only"
    table = compile_table(str(DEBUGFRAME))
    check_against_readelf(table, eh, len(eh), seed=4)
    eh_spans = [(r.start, r.end) for r in eh]
    only_debug = [r for r in debug if not any(s < r.end and r.start < e for s, e in eh_spans)]
    assert only_debug
    check_against_readelf(table, only_debug, len(only_debug), seed=5)


def test_signal_trampoline_row_is_a_signal_frame(libc_table: UnwindTable) -> None:
    """__restore_rt's CIE has the S augmentation; its rules read the ucontext by expressions."""
    signal_rows = [row for row in libc_table.rows() if row.signal_frame]
    assert len(signal_rows) == 1
    row = signal_rows[0]
    assert row.cfa.expr is not None
    assert {reg for reg, rule in row.regs.items() if rule.kind == RuleKind.EXPRESSION} \
        == set(range(17))  # every general-purpose register and rip


def test_outermost_frames_have_undefined_return_address(libc_table: UnwindTable) -> None:
    undefined = [row for row in libc_table.rows()
                 if RA in row.regs and row.regs[RA].kind == RuleKind.UNDEFINED]
    assert undefined, "clone/clone3 mark the return address undefined"


def _eh(data: bytes) -> SectionInfo:
    return SectionInfo(data, 0x1000, True)


def _cie(instructions: bytes, aug: bytes = b"zR", aug_data: bytes = b"\x1b") -> bytes:
    body = (b"\0\0\0\0" + b"\x01" + aug + b"\0" + b"\x01" + b"\x78" + b"\x10"
            + (bytes((len(aug_data),)) + aug_data if aug.startswith(b"z") else b"")
            + instructions)
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<I", len(body)) + body


def _fde(at: int, cie_at: int, pc: int, size: int, instructions: bytes) -> bytes:
    """An FDE at section offset `at` with a pcrel sdata4 pc_begin (section loaded at 0x1000)."""
    field_addr = 0x1000 + at + 8
    body = (struct.pack("<I", at + 4 - cie_at) + struct.pack("<iI", pc - field_addr, size)
            + b"\0" + instructions)
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<I", len(body)) + body


_CIE_INIT = b"\x0c\x07\x08\x90\x01"  # def_cfa rsp+8; offset ra at cfa-8


def test_args_size_remember_restore_and_expressions_decode() -> None:
    cie = _cie(_CIE_INIT)
    instrs = (b"\x2e\x10"            # GNU_args_size 16
              + b"\x41\x0e\x10"      # advance 1; def_cfa_offset 16
              + b"\x86\x02"          # offset rbp at cfa-16
              + b"\x0a"              # remember_state
              + b"\x41\x0d\x06"      # advance 1; def_cfa_register rbp
              + b"\x41\x0b"          # advance 1; restore_state
              + b"\x41\x0f\x03\x77\x08\x06"  # advance 1; def_cfa_expression breg7 8 deref
              + b"\x10\x03\x02\x77\x10"      # expression rbx: breg7 16
              + b"\x41\x11\x0c\x7e"          # advance; offset_extended_sf r12 at -2*-8 = +16
              + b"\x08\x0c\x07\x03\x09\x0d\x00\x14\x0e\x02")  # same r12; undef rbx;
    # register r13 <- rax; val_offset r14 = cfa-16
    fde = _fde(len(cie), 0, 0x2000, 0x20, instrs)
    sink = RowSink()
    ranges = parse_section(_eh(cie + fde), sink)
    assert ranges == [(0x2000, 0x2020)]
    assert sink.skipped == 0
    starts = [r[0] for r in sink.rows]
    assert starts == [0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005]
    rules = [sink.rules[r[2]] for r in sink.rows]
    assert rules[0][:2] == (7, 8)
    assert rules[1][:2] == (7, 16) and (6, RuleKind.OFFSET, -16) in rules[1][3]
    assert rules[2][:2] == (6, 16)
    assert rules[3][:2] == (7, 16)
    assert rules[4][0] == -1 and rules[4][2] == b"\x77\x08\x06"
    last = dict((reg, (kind, val)) for reg, kind, val in sink.rules[sink.rows[-1][2]][3])
    assert last[12] == (RuleKind.SAME_VALUE, 0)
    assert last[3] == (RuleKind.UNDEFINED, 0)
    assert last[13] == (RuleKind.REGISTER, 0)
    assert last[14] == (RuleKind.VAL_OFFSET, -16)


def test_corrupt_fde_is_skipped_and_the_rest_kept() -> None:
    cie = _cie(_CIE_INIT)
    bad = _fde(len(cie), 0, 0x2000, 0x10, b"\x41\x0b")  # restore_state without remember
    good_at = len(cie) + len(bad)
    good = _fde(good_at, 0, 0x3000, 0x10, b"\x41\x0e\x10")
    unknown_op = _fde(good_at + len(good), 0, 0x4000, 0x10, b"\x41\x3f")
    sink = RowSink()
    ranges = parse_section(_eh(cie + bad + good + unknown_op), sink)
    assert ranges == [(0x3000, 0x3010)]
    assert sink.skipped == 2
    assert [r[:2] for r in sink.rows] == [(0x3000, 0x3001), (0x3001, 0x3010)]


@pytest.mark.parametrize("cut", [3, 10, 17, 30, 41])
def test_truncated_section_never_raises(cut: int) -> None:
    cie = _cie(_CIE_INIT)
    data = cie + _fde(len(cie), 0, 0x2000, 0x10, b"\x41\x0e\x10\x86\x02")
    sink = RowSink()
    parse_section(_eh(data[:cut]), sink)  # must not raise struct.error or IndexError
    rnd = random.Random(cut)
    garbage = bytearray(data)
    for _ in range(8):
        garbage[rnd.randrange(len(garbage))] = rnd.randrange(256)
    parse_section(_eh(bytes(garbage)), RowSink())


def test_signal_augmentation_and_debug_frame_cie() -> None:
    cie = _cie(_CIE_INIT, aug=b"zRS")
    sink = RowSink()
    parse_section(_eh(cie + _fde(len(cie), 0, 0x2000, 4, b"")), sink)
    assert sink.rules[sink.rows[0][2]][4] is True
    # .debug_frame, 64-bit DWARF: CIE id 0xffffffffffffffff, version 4 with address size.
    cie_body = (b"\xff" * 8 + b"\x04" + b"\0" + b"\x08\x00" + b"\x01\x78\x10" + _CIE_INIT)
    cie64 = struct.pack("<IQ", 0xFFFFFFFF, len(cie_body)) + cie_body
    fde_body = struct.pack("<QQQ", 0, 0x5000, 0x10) + b"\x42\x0e\x20"
    fde64 = struct.pack("<IQ", 0xFFFFFFFF, len(fde_body)) + fde_body
    sink = RowSink()
    ranges = parse_section(SectionInfo(cie64 + fde64, 0, False), sink)
    assert ranges == [(0x5000, 0x5010)]
    assert [(s, e, sink.rules[r][1]) for s, e, r in sink.rows] == [
        (0x5000, 0x5002, 8), (0x5002, 0x5010, 32)]


def test_compressed_debug_frame_and_separate_debug_file(tmp_path: Path) -> None:
    """A SHF_COMPRESSED .debug_frame, alone in a separate debug file, gives the same rows."""
    if shutil.which("objcopy") is None:
        pytest.skip("needs objcopy")
    debug = tmp_path / "prog.debug"
    stripped = tmp_path / "prog"
    subprocess.run(["objcopy", "--only-keep-debug", "--compress-debug-sections=zlib",
                    str(DEBUGFRAME), str(debug)], check=True)
    subprocess.run(["objcopy", "--strip-debug", str(DEBUGFRAME), str(stripped)], check=True)
    whole = compile_table(str(DEBUGFRAME))
    assert len(compile_table(str(stripped))) < len(whole)
    split = compile_table(str(stripped), str(debug))
    assert list(split.rows()) == list(whole.rows())
