"""C type names from DWARF type DIEs, spelled the way SystemTap prints them in ``stap -L``.

SystemTap builds a name by walking the type chain from the variable outwards and *prepending*
each level: a qualifier adds `` const`` / `` volatile`` after what it qualifies, a pointer adds
``*``, an array ``[]`` (no bounds), and the walk ends at a named type (base type, typedef,
``struct X``, ``union X``, ``enum X``). So ``const char *const`` is ``char const* const`` and
``volatile char buf[8]`` is ``char volatile[]``. A pointer to a function is
``int (*) (int, ...)``: the return type, the declarator, the parameter types (``void`` when a
prototype has none, ``...`` when it is variadic or unprototyped). Anonymous aggregates are
``struct {...}``; a pointer without a target type is ``void*``.

    namer = TypeNamer(reader)
    namer.name(reader.integrated_ref(var_die, AT_TYPE))     # 'char const*'
"""
from __future__ import annotations

from symbolizer.dwarf_attrs import AT_NAME, AT_PROTOTYPED, AT_TYPE, Die, DieReader

TAG_ARRAY, TAG_CLASS, TAG_ENUM, TAG_PARAMETER, TAG_POINTER = 0x01, 0x02, 0x04, 0x05, 0x0F
TAG_REFERENCE, TAG_STRUCT, TAG_SUBROUTINE, TAG_TYPEDEF, TAG_UNION = 0x10, 0x13, 0x15, 0x16, 0x17
TAG_UNSPECIFIED_PARAMETERS, TAG_PTR_TO_MEMBER, TAG_BASE, TAG_CONST = 0x18, 0x1F, 0x24, 0x26
TAG_VOLATILE, TAG_RESTRICT, TAG_UNSPECIFIED_TYPE = 0x35, 0x37, 0x3B
TAG_RVALUE_REFERENCE, TAG_ATOMIC = 0x42, 0x47

_AGGREGATES = {TAG_STRUCT: "struct", TAG_UNION: "union", TAG_ENUM: "enum", TAG_CLASS: "class"}
#: Levels that are written after what they apply to, then the walk goes on to their target.
_MODIFIERS = {TAG_CONST: " const", TAG_VOLATILE: " volatile", TAG_POINTER: "*",
              TAG_REFERENCE: "&", TAG_RVALUE_REFERENCE: "&&", TAG_RESTRICT: " restrict",
              TAG_ATOMIC: " _Atomic", TAG_ARRAY: "[]"}
_MAX_DEPTH = 32             # deeper chains are cycles in corrupt data
UNKNOWN = "?"


class TypeNamer:
    """Names type DIEs (memoized per DIE) for one `DieReader`."""

    def __init__(self, reader: DieReader) -> None:
        self._reader = reader
        self._memo: dict[tuple[int, int], str] = {}

    def name(self, type_die: Die | None) -> str:
        """The stap-style name of `type_die`; ``void`` for None (no ``DW_AT_type``)."""
        if type_die is None:
            return "void"
        key = (id(type_die.dfile), type_die.offset)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._spell(type_die, "", 0)
        return found

    def _spell(self, die: Die | None, suffix: str, depth: int) -> str:
        """The name of `die` followed by `suffix` (what the outer levels already wrote)."""
        if depth > _MAX_DEPTH:
            return UNKNOWN + suffix
        if die is None:
            return "void" + suffix
        tag = die.tag
        if tag in (TAG_BASE, TAG_TYPEDEF, TAG_UNSPECIFIED_TYPE):
            return (die.str_attr(AT_NAME) or UNKNOWN) + suffix
        if tag in _AGGREGATES:
            return f"{_AGGREGATES[tag]} {die.str_attr(AT_NAME) or '{...}'}{suffix}"
        if tag == TAG_SUBROUTINE:
            declarator = f"({suffix})" if suffix else ""
            ret = self._spell(self._reader.ref(die, AT_TYPE), "", depth + 1)
            return f"{ret} {declarator} ({self._parameters(die, depth)})"
        modifier = _MODIFIERS.get(tag)
        if modifier is None:
            return UNKNOWN + suffix
        return self._spell(self._reader.ref(die, AT_TYPE), modifier + suffix, depth + 1)

    def _parameters(self, die: Die, depth: int) -> str:
        """The parameter list of a subroutine type as stap writes it."""
        params = []
        variadic = False
        for child in self._reader.children(die):
            if child.tag == TAG_PARAMETER:
                params.append(self._spell(self._reader.ref(child, AT_TYPE), "", depth + 1))
            elif child.tag == TAG_UNSPECIFIED_PARAMETERS:
                variadic = True
        if variadic or not die.attrs.get(AT_PROTOTYPED):
            params.append("...")
        return ", ".join(params) if params else "void"
