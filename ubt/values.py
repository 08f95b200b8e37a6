"""Printing probe values: bytes read at a hit → text, as SystemTap prints ``$var`` / ``$var$``.

A value is printed from its bytes and its `Shape` (what the printer needs of its C type, taken
from DWARF when the probe is resolved, so printing a hit never touches DWARF):

- integers in decimal, characters as gdb does (``97 'a'``), ``bool`` as true/false, enums by
  name (the number when no enumerator has it), floats;
- pointers in hex (``0x0`` for NULL); a ``char *`` as the string it points to (``"vars"``),
  read at the hit; the pointer in hex when that read failed;
- ``char`` arrays as strings up to the first NUL, other arrays as ``[1, 2, 3]``;
- structs one level deep like stap's ``$var$``: ``{.x=1, .y=2}`` (deeper aggregates stay
  ``{...}``, unions too: which member is meant is not known); a trailing ``$`` on a pointer to
  a struct prints the struct it points to;
- a type the printer does not know as its name and address: ``<__int128 at 0x7ffd...>``;
- a value not available at the pc, or a read that failed at the hit, as ``?``.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from symbolizer.var_types import CType, TypeKind, TypeReader

#: Most characters of a string printed (SystemTap's MAXSTRINGLEN); a longer one is printed
#: cut, followed by ``...`` as gdb does.
MAX_STRING = 128
#: Bytes of a string read at the hit: one character more than printed (whether the string
#: goes on) and the NUL the BPF helper always writes.
STRING_FETCH = MAX_STRING + 2
UNAVAILABLE = "?"


@dataclass(frozen=True, slots=True)
class Shape:
    """What printing a value of one type needs.

    :param enum: (value, name) pairs of an enum.
    :param elem: an array's element shape; `count` its length.
    :param members: a struct's (name, offset, shape), for ``$var$``.
    """

    kind: TypeKind
    name: str
    size: int
    signed: bool = False
    enum: tuple[tuple[int, str], ...] = ()
    elem: Shape | None = None
    count: int | None = None
    members: tuple[tuple[str, int, Shape], ...] = ()

    @property
    def is_string(self) -> bool:
        """A ``char *`` (printed as the string it points to)."""
        return self.kind is TypeKind.POINTER and self.elem is not None \
            and self.elem.kind is TypeKind.CHAR


def shape_of(types: TypeReader, t: CType, depth: int = 1) -> Shape:
    """The shape of `t`; struct members are described `depth` levels deep."""
    elem = None
    enum: tuple[tuple[int, str], ...] = ()
    members: tuple[tuple[str, int, Shape], ...] = ()
    if t.kind is TypeKind.POINTER and t.die is not None:
        target = types.target(t)
        if target.kind is TypeKind.CHAR:
            elem = Shape(TypeKind.CHAR, target.name, 1, target.signed)
    elif t.kind is TypeKind.ARRAY and t.die is not None:
        elem = shape_of(types, types.target(t), 0)
    elif t.kind is TypeKind.ENUM:
        enum = tuple(sorted(types.enumerators(t).items()))
    elif t.kind in (TypeKind.STRUCT, TypeKind.UNION) and depth > 0:
        members = tuple((m.name, m.offset, shape_of(types, m.type, depth - 1))
                        for m in types.members(t) if m.offset is not None)
    return Shape(t.kind, t.name, t.size, t.signed, enum, elem, t.count, members)


def format_value(shape: Shape, data: bytes | None, string: bytes | None = None,
                 address: int | None = None, strings: Mapping[str, bytes | None] | None = None) -> str:
    """The text of one value.

    :param data: its bytes (None: not available).
    :param string: for a ``char *``, the bytes read at the pointer (None: not read).
    :param address: where the value lives, for types the printer does not know.
    :param strings: for a struct, the strings its ``char *`` members point to, by name.
    """
    if shape.kind is TypeKind.UNKNOWN or (shape.kind is TypeKind.FUNCTION):
        where = f"{address:#x}" if address is not None else UNAVAILABLE
        return f"<{shape.name} at {where}>"
    if data is None or len(data) < shape.size:
        return UNAVAILABLE
    kind = shape.kind
    if kind in (TypeKind.STRUCT, TypeKind.UNION):
        if kind is TypeKind.UNION or not shape.members:
            return "{...}"
        found = strings or {}
        return "{" + ", ".join(f".{name}=" + _member(m, data[off:off + m.size], found.get(name))
                               for name, off, m in shape.members) + "}"
    if kind is TypeKind.ARRAY:
        return _array(shape, data)
    if kind is TypeKind.POINTER:
        value = int.from_bytes(data[:8], "little")
        if shape.is_string and value and string is not None:
            text = string.split(b"\0", 1)[0]
            if len(text) > MAX_STRING:
                return quote(text[:MAX_STRING]) + "..."
            return quote(text)
        return f"{value:#x}"
    return _scalar(shape, data[:shape.size])


def _member(shape: Shape, data: bytes, string: bytes | None = None) -> str:
    """A struct member or an array element: aggregates one level down stay
    ``{...}``."""
    if shape.kind in (TypeKind.STRUCT, TypeKind.UNION):
        return "{...}"
    return format_value(shape, data, string)


def _array(shape: Shape, data: bytes) -> str:
    elem = shape.elem
    if elem is None or not elem.size or shape.count is None:
        return UNAVAILABLE
    if elem.kind is TypeKind.CHAR:
        return quote(data[:shape.count].split(b"\0", 1)[0])
    items = [data[i * elem.size:(i + 1) * elem.size] for i in range(shape.count)]
    return "[" + ", ".join(_member(elem, item) for item in items) + "]"


def _scalar(shape: Shape, data: bytes) -> str:
    kind = shape.kind
    if kind is TypeKind.FLOAT:
        if shape.size in (4, 8):
            return repr(struct.unpack("<f" if shape.size == 4 else "<d", data)[0])
        return f"<{shape.name}>"
    value = int.from_bytes(data, "little", signed=shape.signed)
    if kind is TypeKind.BOOL:
        return "true" if value else "false"
    if kind is TypeKind.ENUM:
        return dict(shape.enum).get(value, str(value))
    if kind is TypeKind.CHAR:
        return f"{value} {_char_literal(value & 0xFF)}"
    return str(value)


_ESCAPES = {0: "\\0", 7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f",
            13: "\\r", 34: '\\"', 39: "\\'", 92: "\\\\"}


def _char_literal(byte: int) -> str:
    if byte == 34:
        return "'\"'"
    return "'" + _escape(byte) + "'"


def _escape(byte: int) -> str:
    if byte in _ESCAPES:
        return _ESCAPES[byte]
    return chr(byte) if 0x20 <= byte < 0x7F else f"\\{byte:03o}"


def quote(raw: bytes) -> str:
    """A C string literal of `raw` (printable ASCII kept, the rest escaped)."""
    return '"' + "".join("'" if b == 39 else _escape(b) for b in raw) + '"'
