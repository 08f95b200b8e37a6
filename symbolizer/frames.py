"""Values the symbolizer hands out: one source-level frame per function at an address.

`SourceFrame` is what the DWARF index knows; `SymFrame` is what `Symbolizer.symbolize` returns
after filling gaps from ELF symbol tables. Both are innermost first: the inlined instances at an
address, then the subprogram that contains them, as gdb, `addr2line -i` and `eu-addr2line -i`
show them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One function at an address, from DWARF.

    :param function: the name to show (demangled when the DWARF name is a linkage name).
    :param entry: ELF address of the function's entry (its ``DW_AT_low_pc`` or the lowest range
        start of an out-of-line subprogram); None for an inlined instance.
    :param size: bytes of the containing range of the subprogram, None for inlined instances.
    :param file: the full path, include directory and comp_dir joined as eu-addr2line prints it.
    :param line, column: for the innermost frame the line-table row covering the address;
        for an outer frame the call site (``DW_AT_call_file/line/column``) of the frame inside it.
    :param inlined: True when this frame is an inlined instance (``DW_TAG_inlined_subroutine``).
    """

    function: str | None
    entry: int | None
    size: int | None
    file: str | None
    line: int | None
    column: int | None
    inlined: bool


class SymbolReason(enum.Enum):
    """Why a frame carries less than a full answer (None when it is complete)."""

    NO_DEBUG_INFO = "no debug info"          # name from the symbol table only, no file:line
    NO_SYMBOL = "no symbol"                  # nothing covers the address
    NOT_IN_MODULE = "outside every module"
    CORRUPT_DEBUG_INFO = "corrupt debug info"
    UNREADABLE_FILE = "unreadable file"


@dataclass(frozen=True, slots=True)
class SymFrame:
    """One frame as `Symbolizer.symbolize` returns it.

    :param func_offset: address minus the function's entry (None for inlined frames and when
        unknown); `func_size` the function's size.
    :param reason: None when the frame is as complete as the debug info allows.
    """

    function: str | None
    func_offset: int | None
    func_size: int | None
    file: str | None
    line: int | None
    column: int | None
    inlined: bool
    reason: SymbolReason | None = None
