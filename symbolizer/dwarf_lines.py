"""Line-number programs (DWARF 2–5) decoded into compact sorted arrays.

`read_file_table` decodes only a program's header (for ``DW_AT_call_file``); `read_line_table`
runs the whole program once and keeps one row per distinct address: parallel `array` columns of
address, file index, line and column, the sequences sorted by address, each sequence closed by an
end row (file `NO_FILE`). A lookup is then one bisect. File names are joined with their include
directory and the unit's ``comp_dir`` the way libdw (and so ``eu-addr2line``) joins them.
`read_line_rows` keeps every row and its ``is_stmt`` flag instead: the statement listing needs
all the lines that share an address, in program order, as libdw's ``dwarf_getsrclines`` has them.
"""
from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass

from symbolizer.dwarf_forms import (
    FORM_BLOCK, FORM_DATA1, FORM_DATA2, FORM_DATA4, FORM_DATA8, FORM_DATA16, FORM_LINE_STRP,
    FORM_STRING, FORM_STRP, FORM_STRX, FORM_STRX1, FORM_STRX2, FORM_STRX3, FORM_STRX4,
    FORM_UDATA, read_sleb, read_uleb,
)
from symbolizer.dwarf_sections import DwarfError, DwarfSections

NO_FILE = 0xFFFFFFFF
LNCT_PATH, LNCT_DIRECTORY_INDEX = 1, 2
LNS_COPY, LNS_ADVANCE_PC, LNS_ADVANCE_LINE, LNS_SET_FILE, LNS_SET_COLUMN = 1, 2, 3, 4, 5
LNS_NEGATE_STMT, LNS_SET_BASIC_BLOCK, LNS_CONST_ADD_PC, LNS_FIXED_ADVANCE_PC = 6, 7, 8, 9
LNE_END_SEQUENCE, LNE_SET_ADDRESS = 1, 2


def tail_match(path: str, other: str) -> bool:
    """perf's ``strtailcmp``: the shorter of two file names is a tail of the longer one (so
    ``ls.c`` and ``src/ls.c`` both name ``/build/coreutils/src/ls.c``)."""
    n = min(len(path), len(other))
    return n > 0 and path[-n:] == other[-n:]


@dataclass(frozen=True, slots=True)
class LineTable:
    """One unit's line rows as parallel columns sorted by address.

    :param files: full path of each file index the program uses (None for a bad index).
    """

    addrs: array[int]
    file_idx: array[int]
    lines: array[int]
    columns: array[int]
    files: tuple[str | None, ...]

    def row_for(self, elf_addr: int) -> tuple[str | None, int, int] | None:
        """(file, line, column) of the row covering `elf_addr`, None outside every sequence."""
        i = bisect.bisect_right(self.addrs, elf_addr) - 1
        if i < 0:
            return None
        f = self.file_idx[i]
        if f == NO_FILE:
            return None
        return (self.files[f] if f < len(self.files) else None), self.lines[i], self.columns[i]


@dataclass(frozen=True, slots=True)
class LineRows:
    """Every row of one unit's line program, sorted by address (program order among rows at the
    same address), each sequence closed by an end row (file `NO_FILE`).

    :param is_stmt: 1 where the row begins a statement (``DW_LNS_negate_stmt`` state).
    """

    addrs: array[int]
    file_idx: array[int]
    lines: array[int]
    is_stmt: array[int]
    files: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class _Header:
    program: int
    end: int
    min_inst: int
    line_base: int
    line_range: int
    opcode_base: int
    opcode_lengths: bytes
    files: tuple[str | None, ...]
    default_is_stmt: bool


def read_file_table(sections: DwarfSections, offset: int, comp_dir: str | None,
                    cu_name: str | None) -> tuple[str | None, ...]:
    """The full paths of the file table of the line program at `offset` of `.debug_line`."""
    return _header(sections, offset, comp_dir, cu_name).files


def read_line_table(sections: DwarfSections, offset: int, comp_dir: str | None,
                    cu_name: str | None) -> LineTable:
    """Decode the line program at `offset`; DwarfError when it is truncated or malformed."""
    hdr = _header(sections, offset, comp_dir, cu_name)
    addrs, files, lines, cols = _columns(sections, offset, hdr, False)
    return LineTable(addrs, files, lines, cols, hdr.files)


def read_line_rows(sections: DwarfSections, offset: int, comp_dir: str | None,
                   cu_name: str | None) -> LineRows:
    """Decode the line program at `offset` keeping every row; DwarfError when it is malformed."""
    hdr = _header(sections, offset, comp_dir, cu_name)
    addrs, files, lines, stmts = _columns(sections, offset, hdr, True)
    return LineRows(addrs, files, lines, stmts, hdr.files)


def _columns(sections: DwarfSections, offset: int, hdr: _Header,
             all_rows: bool) -> tuple[array[int], array[int], array[int], array[int]]:
    """Address, file, line and column (or is_stmt with `all_rows`) columns, sequences sorted."""
    try:
        seqs = _run(sections.line, hdr, all_rows)
    except IndexError:
        raise DwarfError(f"{sections.path}: line program at 0x{offset:x} is truncated") from None
    seqs.sort(key=lambda s: s[0][0] if s[0] else 0)
    addrs: array[int] = array("Q")
    files: array[int] = array("I")
    lines: array[int] = array("I")
    last: array[int] = array("I")
    for a, f, ln, c in seqs:
        addrs.extend(a)
        files.extend(f)
        lines.extend(ln)
        last.extend(c)
    return addrs, files, lines, last


_Seq = tuple[list[int], list[int], list[int], list[int]]


def _run(data: bytes, hdr: _Header, all_rows: bool) -> list[_Seq]:
    """Run the state machine; one (addrs, files, lines, columns) per sequence, rows deduped so
    the last row at an address wins (as in llvm-symbolizer and libdw). With `all_rows` every
    row is kept and the last column is the row's is_stmt flag instead of its column."""
    pos, end = hdr.program, hdr.end
    min_inst, line_base, line_range = hdr.min_inst, hdr.line_base, hdr.line_range
    opcode_base, lengths = hdr.opcode_base, hdr.opcode_lengths
    # Special opcodes: precomputed (address advance, line advance).
    adv_addr = [0] * 256
    adv_line = [0] * 256
    for op in range(opcode_base, 256):
        adj = op - opcode_base
        adv_addr[op] = (adj // line_range) * min_inst
        adv_line[op] = line_base + adj % line_range
    seqs: list[_Seq] = []
    a_out: list[int] = []
    f_out: list[int] = []
    l_out: list[int] = []
    c_out: list[int] = []
    address, file, line, column = 0, 1, 1, 0
    is_stmt = default_stmt = int(hdr.default_is_stmt)
    last = -1
    while pos < end:
        op = data[pos]
        pos += 1
        if op >= opcode_base:
            address += adv_addr[op]
            line += adv_line[op]
        elif op == LNS_SET_COLUMN:
            column = data[pos]
            pos += 1
            if column >= 0x80:
                column, pos = read_uleb(data, pos - 1)
            continue
        elif op == LNS_ADVANCE_LINE:
            delta, pos = read_sleb(data, pos)
            line += delta
            continue
        elif op == LNS_COPY:
            pass
        elif op == LNS_ADVANCE_PC:
            delta, pos = read_uleb(data, pos)
            address += delta * min_inst
            continue
        elif op == LNS_CONST_ADD_PC:
            address += adv_addr[255]
            continue
        elif op == LNS_SET_FILE:
            file, pos = read_uleb(data, pos)
            continue
        elif op == 0:
            size, pos = read_uleb(data, pos)
            sub = data[pos]
            nxt = pos + size
            if sub == LNE_END_SEQUENCE:
                while a_out and a_out[-1] == address:
                    a_out.pop(), f_out.pop(), l_out.pop(), c_out.pop()
                a_out.append(address)
                f_out.append(NO_FILE)
                l_out.append(0)
                c_out.append(0)
                if len(a_out) > 1:
                    seqs.append((a_out, f_out, l_out, c_out))
                a_out, f_out, l_out, c_out = [], [], [], []
                address, file, line, column, last = 0, 1, 1, 0, -1
                is_stmt = default_stmt
            elif sub == LNE_SET_ADDRESS:
                address = int.from_bytes(data[pos + 1:nxt], "little")
            pos = nxt
            continue
        elif op == LNS_FIXED_ADVANCE_PC:
            address += int.from_bytes(data[pos:pos + 2], "little")
            pos += 2
            continue
        elif op == LNS_NEGATE_STMT:
            is_stmt ^= 1
            continue
        elif op == LNS_SET_BASIC_BLOCK:
            continue
        else:
            for _ in range(lengths[op - 1]):
                _, pos = read_uleb(data, pos)
            continue
        # Emit a row.
        if all_rows:
            a_out.append(address)
            f_out.append(file)
            l_out.append(line)
            c_out.append(is_stmt)
        elif address == last:
            f_out[-1] = file
            l_out[-1] = line
            c_out[-1] = column
        else:
            a_out.append(address)
            f_out.append(file)
            l_out.append(line)
            c_out.append(column)
            last = address
    return seqs


def _header(sections: DwarfSections, offset: int, comp_dir: str | None,
            cu_name: str | None) -> _Header:
    try:
        return _parse_header(sections, offset, comp_dir, cu_name)
    except IndexError:
        raise DwarfError(f"{sections.path}: line program header at 0x{offset:x} is truncated") \
            from None


def _parse_header(sections: DwarfSections, offset: int, comp_dir: str | None,
                  cu_name: str | None) -> _Header:
    data = sections.line
    if offset + 4 > len(data):
        raise DwarfError(f"{sections.path}: line program offset 0x{offset:x} is past .debug_line")
    length = int.from_bytes(data[offset:offset + 4], "little")
    pos, offset_size = offset + 4, 4
    if length == 0xFFFFFFFF:
        length = int.from_bytes(data[pos:pos + 8], "little")
        pos, offset_size = pos + 8, 8
    end = pos + length
    if end > len(data):
        raise DwarfError(f"{sections.path}: line program at 0x{offset:x} runs past .debug_line")
    version = int.from_bytes(data[pos:pos + 2], "little")
    if version < 2 or version > 5:
        raise DwarfError(f"{sections.path}: unsupported line table version {version}")
    pos += 2
    if version >= 5:
        pos += 2                                    # address_size, segment_selector_size
    header_length = int.from_bytes(data[pos:pos + offset_size], "little")
    pos += offset_size
    program = pos + header_length
    min_inst = data[pos]
    pos += 3 if version >= 4 else 2     # min_inst, max_ops_per_instruction (v4+), is_stmt
    default_is_stmt = data[pos - 1] != 0
    line_base = data[pos] - 256 if data[pos] >= 128 else data[pos]
    line_range = data[pos + 1]
    opcode_base = data[pos + 2]
    pos += 3
    if line_range == 0 or opcode_base == 0:
        raise DwarfError(f"{sections.path}: bad line program header at 0x{offset:x}")
    opcode_lengths = data[pos:pos + opcode_base - 1]
    pos += opcode_base - 1
    if version >= 5:
        files = _files_v5(sections, pos, offset_size, comp_dir)
    else:
        files = _files_v4(data, pos, comp_dir, cu_name)
    return _Header(program, end, min_inst, line_base, line_range, opcode_base, opcode_lengths,
                   files, default_is_stmt)


def _join(directory: str | None, name: str) -> str:
    if name.startswith("/") or not directory:
        return name
    return f"{directory}/{name}"


def _files_v4(data: bytes, pos: int, comp_dir: str | None,
              cu_name: str | None) -> tuple[str | None, ...]:
    dirs: list[str | None] = [comp_dir]
    while data[pos] != 0:
        end = data.index(b"\0", pos)
        dirs.append(_join(comp_dir, data[pos:end].decode("utf-8", "replace")))
        pos = end + 1
    pos += 1
    # DWARF 2-4 file indexes start at 1; index 0 means the unit's primary file.
    files: list[str | None] = [_join(comp_dir, cu_name) if cu_name else None]
    while data[pos] != 0:
        end = data.index(b"\0", pos)
        name = data[pos:end].decode("utf-8", "replace")
        dir_index, pos = read_uleb(data, end + 1)
        _, pos = read_uleb(data, pos)               # modification time
        _, pos = read_uleb(data, pos)               # length
        directory = dirs[dir_index] if dir_index < len(dirs) else None
        files.append(_join(directory, name))
    return tuple(files)


def _files_v5(sections: DwarfSections, pos: int, offset_size: int,
              comp_dir: str | None) -> tuple[str | None, ...]:
    dir_entries, pos = _entries(sections, pos, offset_size)
    # libdw joins every relative directory, even entry 0 (the compilation directory), with the
    # unit's DW_AT_comp_dir: "./malloc" + "./malloc" gives eu-addr2line's "./malloc/./malloc".
    dirs = [None if path is None else _join(comp_dir, path) for path, _ in dir_entries]
    file_entries, _ = _entries(sections, pos, offset_size)
    files: list[str | None] = []
    for path, dir_index in file_entries:
        if path is None:
            files.append(None)
        else:
            directory = dirs[dir_index] if dir_index < len(dirs) else None
            files.append(_join(directory, path))
    return tuple(files)


def _entries(sections: DwarfSections, pos: int,
             offset_size: int) -> tuple[list[tuple[str | None, int]], int]:
    """A DWARF 5 directory or file-name table: (path, directory index) per entry."""
    data = sections.line
    count = data[pos]
    pos += 1
    formats = []
    for _ in range(count):
        kind, pos = read_uleb(data, pos)
        form, pos = read_uleb(data, pos)
        formats.append((kind, form))
    n, pos = read_uleb(data, pos)
    if not formats:
        n = 0                               # entries without fields carry nothing
    elif n > len(data) - pos:
        raise DwarfError(f"{sections.path}: line table lists {n} entries, more than its bytes")
    out = []
    for _ in range(n):
        path: str | None = None
        dir_index = 0
        for kind, form in formats:
            value, pos = _entry_value(sections, pos, form, offset_size)
            if kind == LNCT_PATH and isinstance(value, str):
                path = value
            elif kind == LNCT_DIRECTORY_INDEX and isinstance(value, int):
                dir_index = value
        out.append((path, dir_index))
    return out, pos


def _entry_value(sections: DwarfSections, pos: int, form: int,
                 offset_size: int) -> tuple[int | str | None, int]:
    data = sections.line
    if form == FORM_STRING:
        end = data.index(b"\0", pos)
        return data[pos:end].decode("utf-8", "replace"), end + 1
    if form in (FORM_LINE_STRP, FORM_STRP):
        off = int.from_bytes(data[pos:pos + offset_size], "little")
        strings = sections.line_str if form == FORM_LINE_STRP else sections.str
        end = strings.find(b"\0", off)
        if end < 0:
            raise DwarfError(f"{sections.path}: line table string 0x{off:x} out of range")
        return strings[off:end].decode("utf-8", "replace"), pos + offset_size
    if form == FORM_UDATA:
        return read_uleb(data, pos)
    sizes = {FORM_DATA1: 1, FORM_DATA2: 2, FORM_DATA4: 4, FORM_DATA8: 8, FORM_DATA16: 16,
             FORM_STRX1: 1, FORM_STRX2: 2, FORM_STRX3: 3, FORM_STRX4: 4}
    if form in sizes:
        size = sizes[form]
        return (int.from_bytes(data[pos:pos + size], "little") if size <= 8 else None), pos + size
    if form == FORM_BLOCK:
        size, pos = read_uleb(data, pos)
        return None, pos + size
    if form == FORM_STRX:
        _, pos = read_uleb(data, pos)
        return None, pos
    raise DwarfError(f"{sections.path}: unsupported line table entry form 0x{form:x}")
