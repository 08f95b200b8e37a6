"""LEB128 readers and compiled abbreviations (skip sizes, sibling offsets, slots)."""
from __future__ import annotations

import pytest

from symbolizer.dwarf_forms import (
    FORM_ADDR, FORM_DATA1, FORM_DATA8, FORM_FLAG_PRESENT, FORM_IMPLICIT_CONST, FORM_REF4,
    FORM_STRING, FORM_STRP, FORM_UDATA, SLOT_HIGH, SLOT_HIGH_OFFSET, SLOT_LOW, SLOT_NAME,
    SLOT_SIBLING, TAG_SUBPROGRAM, V_STR_INLINE, V_STRP, AbbrevCompiler, read_sleb, read_uleb,
)
from symbolizer.dwarf_sections import DwarfError


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 624485, 1 << 63])
def test_read_uleb(value: int) -> None:
    raw = b"\xaa" + _uleb(value) + b"\x01"
    assert read_uleb(raw, 1) == (value, len(raw) - 1)


@pytest.mark.parametrize("raw,value", [(b"\x02", 2), (b"\x7e", -2), (b"\xff\x00", 127),
                                       (b"\x81\x7f", -127), (b"\x80\x7f", -128)])
def test_read_sleb(raw: bytes, value: int) -> None:
    assert read_sleb(raw, 0) == (value, len(raw))


def _decl(code: int, tag: int, children: bool, attrs: list[tuple[int, int]],
          const: int | None = None) -> bytes:
    out = _uleb(code) + _uleb(tag) + bytes([1 if children else 0])
    for attr, form in attrs:
        out += _uleb(attr) + _uleb(form)
        if form == FORM_IMPLICIT_CONST:
            assert const is not None
            out += bytes([const & 0x7F])
    return out + b"\0\0"


def test_compiled_abbrevs() -> None:
    table = (
        _decl(1, TAG_SUBPROGRAM, True, [(0x03, FORM_STRP), (0x11, FORM_ADDR),
                                        (0x12, FORM_DATA8), (0x01, FORM_REF4)])
        + _decl(2, 0x05, False, [(0x03, FORM_STRING), (0x3A, FORM_IMPLICIT_CONST),
                                 (0x3F, FORM_FLAG_PRESENT)], const=3)
        + _decl(200, 0x24, False, [(0x0B, FORM_DATA1), (0x3E, FORM_UDATA)])
        + b"\0")
    abbrevs = AbbrevCompiler(8, 4, 5).compile(b"\x99" + table, 1)
    sub, param, base = abbrevs[1], abbrevs[2], abbrevs[200]
    assert (sub.tag, sub.has_children, sub.skip) == (TAG_SUBPROGRAM, True, 4 + 8 + 8 + 4)
    assert (sub.sibling_at, sub.sibling_size) == (20, 4)
    assert [a.slot for a in sub.attrs] == [SLOT_NAME, SLOT_LOW, SLOT_HIGH_OFFSET, SLOT_SIBLING]
    assert sub.meanings[SLOT_NAME] == V_STRP and sub.meanings[SLOT_HIGH] == -1
    assert param.skip == -1 and param.meanings[SLOT_NAME] == V_STR_INLINE
    assert param.attrs[1].const == 3 and param.attrs[2].const == 1
    assert base.skip == -1 and not base.wanted
    assert sub.attrs[1].slot == SLOT_LOW


def test_same_declaration_compiled_once() -> None:
    decl = _decl(1, TAG_SUBPROGRAM, False, [(0x03, FORM_STRP)])
    compiler = AbbrevCompiler(8, 4, 4)
    first = compiler.compile(decl + b"\0", 0)
    second = compiler.compile(decl + b"\0", 0)
    assert first[1] is second[1]


def test_truncated_or_bad_table() -> None:
    decl = _decl(1, TAG_SUBPROGRAM, False, [(0x03, FORM_STRP)])
    with pytest.raises(DwarfError):
        AbbrevCompiler(8, 4, 4).compile(decl[:-3], 0)
    with pytest.raises(DwarfError):                     # form 0x7e does not exist
        AbbrevCompiler(8, 4, 4).compile(_decl(1, 0x2E, False, [(0x03, 0x7E)]) + b"\0", 0)
