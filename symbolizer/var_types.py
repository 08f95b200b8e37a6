"""C types of variables as the value printer needs them: kind, size, pointee, members, bounds.

`symbolizer.dwarf_types` only *names* types (for ``ubt list``); reading a value needs more: how
many bytes it has, whether an integer is signed, where each struct member sits, how many
elements an array holds, what an enum's numbers are called. `TypeReader` turns a type DIE into a
`CType` with those facts, seeing through typedefs and qualifiers (a ``const fx_count_t`` is an
unsigned long of 8 bytes) but keeping the stap spelling of the declared type for messages.
Pointee, element and member types are resolved on demand (`target`, `members`), so
self-referencing structs (``struct fx_record *next``) cost nothing until followed.

    types = TypeReader(reader, namer)
    t = types.of(type_die)                     # CType(kind=POINTER, size=8, name='char const*')
    types.target(t).kind                       # TypeKind.CHAR
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from symbolizer.dwarf_attrs import (
    AT_BYTE_SIZE, AT_CONST_VALUE, AT_COUNT, AT_NAME, AT_TYPE, AT_UPPER_BOUND, AttrValue, Die,
    DieReader,
)
from symbolizer.dwarf_forms import read_uleb
from symbolizer.dwarf_types import (
    TAG_ARRAY, TAG_ATOMIC, TAG_BASE, TAG_CLASS, TAG_CONST, TAG_ENUM, TAG_POINTER, TAG_REFERENCE,
    TAG_RESTRICT, TAG_RVALUE_REFERENCE, TAG_STRUCT, TAG_SUBROUTINE, TAG_TYPEDEF, TAG_UNION,
    TAG_VOLATILE, TypeNamer,
)

AT_ENCODING, AT_DATA_MEMBER_LOCATION, AT_BIT_SIZE, AT_DATA_BIT_OFFSET = 0x3E, 0x38, 0x0D, 0x6B
TAG_MEMBER, TAG_ENUMERATOR, TAG_SUBRANGE = 0x0D, 0x28, 0x21
_ATE_BOOLEAN, _ATE_FLOAT, _ATE_SIGNED, _ATE_SIGNED_CHAR = 0x02, 0x04, 0x05, 0x06
_ATE_UNSIGNED, _ATE_UNSIGNED_CHAR, _ATE_UTF = 0x07, 0x08, 0x10
_TRANSPARENT = (TAG_TYPEDEF, TAG_CONST, TAG_VOLATILE, TAG_RESTRICT, TAG_ATOMIC)
_MAX_DEPTH = 32


class TypeKind(enum.Enum):
    """What a value of the type looks like to the printer."""

    SIGNED = "signed"
    UNSIGNED = "unsigned"
    CHAR = "char"            # a 1-byte character type (signed or not): printed with its glyph
    BOOL = "bool"
    FLOAT = "float"
    ENUM = "enum"
    POINTER = "pointer"      # also C++ references
    ARRAY = "array"
    STRUCT = "struct"        # struct or class
    UNION = "union"
    FUNCTION = "function"
    VOID = "void"
    UNKNOWN = "unknown"      # a type the printer does not know (bit fields, vectors, ...)


@dataclass(frozen=True, slots=True)
class CType:
    """One type, typedefs and qualifiers seen through.

    :param name: the declared type as ``stap -L`` spells it (typedef names kept).
    :param size: bytes of a value (an array: all its elements); 0 when unknown.
    :param count: elements of an array (its first dimension), None when unbounded.
    :param signed: for integers, enums and characters.
    """

    kind: TypeKind
    name: str
    size: int
    count: int | None = None
    signed: bool = False
    die: Die | None = field(default=None, repr=False, compare=False)
    dims: tuple[int | None, ...] = ()


@dataclass(frozen=True, slots=True)
class Member:
    """A struct or union member at byte `offset` of its aggregate (None: a bit field)."""

    name: str
    offset: int | None
    type: CType


class TypeReader:
    """`CType`s from type DIEs of one `DieReader` (memoized per DIE)."""

    def __init__(self, reader: DieReader, namer: TypeNamer) -> None:
        self._reader = reader
        self._namer = namer
        self._memo: dict[tuple[int, int], CType] = {}

    def of(self, type_die: Die | None) -> CType:
        """The type a ``DW_AT_type`` points to (None: ``void``)."""
        if type_die is None:
            return CType(TypeKind.VOID, "void", 0)
        key = (id(type_die.dfile), type_die.offset)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._build(type_die, self._namer.name(type_die))
        return found

    def _build(self, die: Die, name: str) -> CType:
        real: Die | None = die
        for _ in range(_MAX_DEPTH):
            if real is None or real.tag not in _TRANSPARENT:
                break
            real = self._reader.ref(real, AT_TYPE)
        if real is None:
            return CType(TypeKind.VOID, name, 0)
        size = real.int_attr(AT_BYTE_SIZE) or 0
        tag = real.tag
        if tag == TAG_BASE:
            return _base(real, name, size)
        if tag == TAG_ENUM:
            return CType(TypeKind.ENUM, name, size, signed=self._enum_signed(real), die=real)
        if tag in (TAG_POINTER, TAG_REFERENCE, TAG_RVALUE_REFERENCE):
            return CType(TypeKind.POINTER, name, size or 8, die=real)
        if tag in (TAG_STRUCT, TAG_CLASS, TAG_UNION):
            kind = TypeKind.UNION if tag == TAG_UNION else TypeKind.STRUCT
            return CType(kind, name, size, die=real)
        if tag == TAG_ARRAY:
            return self._array(real, name)
        if tag == TAG_SUBROUTINE:
            return CType(TypeKind.FUNCTION, name, 0, die=real)
        return CType(TypeKind.UNKNOWN, name, size, die=real)

    def _enum_signed(self, die: Die) -> bool:
        """Whether an enum's values are signed: its own ``DW_AT_encoding``, else its
        underlying type's (typedefs seen through), else whether an enumerator is negative."""
        encoding = die.int_attr(AT_ENCODING)
        under = self._reader.ref(die, AT_TYPE)
        for _ in range(_MAX_DEPTH):
            if encoding is not None or under is None:
                break
            if under.tag in _TRANSPARENT:
                under = self._reader.ref(under, AT_TYPE)
            else:
                encoding = under.int_attr(AT_ENCODING) if under.tag == TAG_BASE else None
                break
        if encoding is not None:
            return encoding in (_ATE_SIGNED, _ATE_SIGNED_CHAR)
        return any(child.tag == TAG_ENUMERATOR and (child.int_attr(AT_CONST_VALUE) or 0) < 0
                   for child in self._reader.children(die))

    def _array(self, die: Die, name: str) -> CType:
        dims: list[int | None] = []
        for child in self._reader.children(die):
            if child.tag == TAG_SUBRANGE:
                # A reference form names the variable holding the bound (a VLA): unknown.
                count, upper = (None if self._reader.is_reference(child, code) else
                                child.int_attr(code) for code in (AT_COUNT, AT_UPPER_BOUND))
                dims.append(count if count is not None else
                            None if upper is None or upper >= 1 << 62 else upper + 1)
        elem = self.of(self._reader.ref(die, AT_TYPE))
        total = elem.size
        for d in dims:
            total = total * d if d is not None and total else 0
        return CType(TypeKind.ARRAY, name, total, dims[0] if dims else None, die=die,
                     dims=tuple(dims) or (None,))

    def target(self, t: CType) -> CType:
        """What a pointer points to, or an array's element (a row, for a 2-D array)."""
        assert t.die is not None and t.kind in (TypeKind.POINTER, TypeKind.ARRAY)
        inner = self.of(self._reader.ref(t.die, AT_TYPE))
        if t.kind is TypeKind.ARRAY and len(t.dims) > 1:
            rest = t.dims[1:]
            size = inner.size
            for d in rest:
                size = size * d if d is not None else 0
            return CType(TypeKind.ARRAY, inner.name + "[]", size, rest[0], die=t.die,
                         dims=rest)
        return inner

    def members(self, t: CType) -> tuple[Member, ...]:
        """The members of a struct or union, in declaration order."""
        assert t.die is not None and t.kind in (TypeKind.STRUCT, TypeKind.UNION)
        out = []
        for child in self._reader.children(t.die):
            if child.tag != TAG_MEMBER:
                continue
            name = child.str_attr(AT_NAME) or ""
            mtype = self.of(self._reader.ref(child, AT_TYPE))
            where = child.attrs.get(AT_DATA_MEMBER_LOCATION)
            bitfield = AT_BIT_SIZE in child.attrs or AT_DATA_BIT_OFFSET in child.attrs
            offset = None if bitfield else _member_offset(where, t.kind)
            out.append(Member(name, offset, mtype))
        return tuple(out)

    def enumerators(self, t: CType) -> dict[int, str]:
        """An enum's values → names."""
        assert t.die is not None and t.kind is TypeKind.ENUM
        out: dict[int, str] = {}
        bits = 8 * t.size if 0 < t.size <= 8 else 64
        for child in self._reader.children(t.die):
            value = child.attrs.get(AT_CONST_VALUE)
            name = child.str_attr(AT_NAME)
            if child.tag == TAG_ENUMERATOR and isinstance(value, int) and name:
                value &= (1 << bits) - 1            # as the enum's bytes read: data4 or sdata
                if t.signed and value >> (bits - 1):
                    value -= 1 << bits
                out.setdefault(value, name)
        return out


def _member_offset(where: AttrValue | None, kind: TypeKind) -> int | None:
    """A member's byte offset: a constant, a DWARF 2 ``DW_OP_plus_uconst N`` block, or 0 for
    a union member without one; None for what cannot be a fixed offset."""
    if isinstance(where, int):
        return where
    if isinstance(where, bytes) and where[:1] == b"\x23":
        return read_uleb(where, 1)[0]
    return 0 if where is None and kind is TypeKind.UNION else None


def _base(die: Die, name: str, size: int) -> CType:
    encoding = die.int_attr(AT_ENCODING)
    if encoding == _ATE_BOOLEAN:
        return CType(TypeKind.BOOL, name, size)
    if encoding == _ATE_FLOAT:
        return CType(TypeKind.FLOAT, name, size)
    if encoding in (_ATE_SIGNED_CHAR, _ATE_UNSIGNED_CHAR) and size == 1:
        return CType(TypeKind.CHAR, name, 1, signed=encoding == _ATE_SIGNED_CHAR)
    if encoding in (_ATE_SIGNED, _ATE_SIGNED_CHAR):
        return CType(TypeKind.SIGNED, name, size, signed=True)
    if encoding in (_ATE_UNSIGNED, _ATE_UNSIGNED_CHAR, _ATE_UTF):
        return CType(TypeKind.UNSIGNED, name, size)
    return CType(TypeKind.UNKNOWN, name, size)
