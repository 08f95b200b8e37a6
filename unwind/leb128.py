"""LEB128, the variable-length integers of DWARF (CFI, expressions, DIEs, line programs).

Shared by `unwind` and `symbolizer`, hot in both: plain loops over `bytes`, no objects. A value
running past the end of `data` raises IndexError, which each caller turns into its own error.
"""
from __future__ import annotations


def read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 at `pos`; returns (value, position after it)."""
    result = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def read_sleb(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a signed LEB128 at `pos`; returns (value, position after it)."""
    result = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, pos
