"""Line programs: a hand-assembled DWARF 4 program, and range lists (DWARF 4 and 5)."""
from __future__ import annotations

import struct

import pytest

from symbolizer.dwarf_forms import V_INT, V_RNGLISTX
from symbolizer.dwarf_lines import read_file_table, read_line_table
from symbolizer.dwarf_ranges import read_ranges
from symbolizer.dwarf_sections import DwarfError, DwarfSections


def _sections(**kw: bytes) -> DwarfSections:
    names = ("info", "abbrev", "str", "line_str", "line", "aranges", "ranges", "rnglists",
             "addr", "str_offsets")
    return DwarfSections(path="test", **{n: kw.get(n, b"") for n in names})


def _set_address(addr: int) -> bytes:
    return b"\x00\x09\x02" + struct.pack("<Q", addr)


END_SEQUENCE = b"\x00\x01\x01"


def _v4_program() -> bytes:
    header_rest = (
        bytes([1, 1, 1, 0xFB, 14, 13])                  # min_inst, max_ops, is_stmt, -5, 14, 13
        + bytes([0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1])   # standard opcode lengths
        + b"inc\0\0"                                    # include directories
        + b"a.c\0\0\0\0" + b"b.h\0\x01\0\0" + b"\0")    # files: a.c in dir 0, b.h in dir 1
    program = (
        _set_address(0x1000) + b"\x03\x09" + b"\x05\x04" + b"\x01"  # line 10 col 4: row
        + bytes([75])                                   # special: addr +4, line +1: row
        + b"\x04\x02" + b"\x02\x04" + b"\x01"           # file 2, addr +4: row (0x1008, 11)
        + b"\x03\x01" + b"\x01"                         # line 12 at the same address: row
        + b"\x02\x08" + END_SEQUENCE                    # ends at 0x1010
        + _set_address(0x800) + b"\x01" + b"\x02\x10" + END_SEQUENCE)
    body = struct.pack("<H", 4) + struct.pack("<I", len(header_rest)) + header_rest + program
    return struct.pack("<I", len(body)) + body


def test_v4_rows_and_files() -> None:
    sections = _sections(line=_v4_program())
    table = read_line_table(sections, 0, "/comp", "a.c")
    assert table.files == ("/comp/a.c", "/comp/a.c", "/comp/inc/b.h")
    assert read_file_table(sections, 0, "/comp", "a.c") == table.files
    expect = {
        0x7FF: None, 0x800: ("/comp/a.c", 1, 0), 0x80F: ("/comp/a.c", 1, 0), 0x810: None,
        0x1000: ("/comp/a.c", 10, 4), 0x1003: ("/comp/a.c", 10, 4),
        0x1004: ("/comp/a.c", 11, 4), 0x1008: ("/comp/inc/b.h", 12, 4),
        0x100F: ("/comp/inc/b.h", 12, 4), 0x1010: None, 0x5000: None,
    }
    assert {a: table.row_for(a) for a in expect} == expect


def test_truncated_program() -> None:
    data = _v4_program()
    with pytest.raises(DwarfError):
        read_line_table(_sections(line=data[:-30]), 0, "/comp", "a.c")
    with pytest.raises(DwarfError):
        read_line_table(_sections(line=data[:20]), 0, "/comp", "a.c")


def test_ranges_v4_with_base_selection() -> None:
    ranges = struct.pack("<QQQQQQQQ", 0x10, 0x20, 2**64 - 1, 0x5000, 0x1, 0x8, 0, 0)
    found = read_ranges(_sections(ranges=ranges), 4, 8, 4, 0x1000, 0, 0, V_INT, 0)
    assert found == [(0x1010, 0x1020), (0x5001, 0x5008)]


def test_rnglists_v5() -> None:
    addr = struct.pack("<IHBB", 0, 5, 8, 0) + struct.pack("<QQ", 0x7000, 0x7100)
    lst = (b"\x04\x10\x20"                              # offset_pair from the base
           + b"\x05" + struct.pack("<Q", 0x3000) + b"\x04\x00\x08"  # new base, offset pair
           + b"\x07" + struct.pack("<Q", 0x9000) + b"\x10"          # start_length
           + b"\x03\x01\x04"                            # startx_length: addr[1] + 4
           + b"\x00")
    header = struct.pack("<IHBBI", 0, 5, 8, 0, 1) + struct.pack("<I", 4)  # one offset: 4
    rnglists = header + lst
    sections = _sections(rnglists=rnglists, addr=addr)
    want = [(0x1010, 0x1020), (0x3000, 0x3008), (0x9000, 0x9010), (0x7100, 0x7104)]
    assert read_ranges(sections, 5, 8, 4, 0x1000, 8, 12, V_RNGLISTX, 0) == want
    assert read_ranges(sections, 5, 8, 4, 0x1000, 8, 0, V_INT, 16) == want
    with pytest.raises(DwarfError):
        read_ranges(_sections(rnglists=rnglists[:20], addr=addr), 5, 8, 4, 0, 8, 0, V_INT, 16)
