"""`--print` expressions → what to read at each hit of one probe, and the printed values.

    ubt process BIN 'fx_walk@vars.c:59' --print '$name $r->depth $pt$ $$parms'

Each expression names a variable in scope at the probe's address (`$name`), optionally followed
by member and element accesses (``->field``, ``.field``, ``[N]``) and a trailing ``$`` (a
pointer to a struct prints the struct, one level deep, like stap); ``$$vars``, ``$$locals`` and ``$$parms`` stand for every
variable, local or parameter in scope (innermost first). `plan_probe` resolves them with the
variables' DWARF locations and types into a `ProbePlan`: items to print and the fetches
(`symbolizer.var_fetch.Fetch`) the BPF program makes at the hit. `values_at` turns the bytes
of one hit back into ``(label, text)`` pairs.

Mistakes in an expression (an unknown variable or member, ``->`` on a non-pointer) are
`UbtError`s naming what is there; a value that is not available at the pc is printed ``?``.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bpf_progs.fetch_gen import Layout, layout
from symbolizer.dwarf_scopes import Variable
from symbolizer.dwarf_call_sites import CALL_VALUE_REGISTERS, relocate
from symbolizer.var_fetch import (
    Computed, EntryValue, Fetch, FetchMode, Located, PcContext, Source, Unavailable, locate, member,
    pointer_value,
)
from symbolizer.var_types import CType, TypeKind, TypeReader
from unwind.expr import ExprError, evaluate
from unwind.memory import MemoryFault, MemoryReader
from unwind.regs import RA
from unwind.unwinder import CallerFrame

from .errors import UbtError, UsageError
from .values import STRING_FETCH, Shape, format_value, shape_of

_ITEM = re.compile(r"\$\$(?P<group>vars|locals|parms)(?P<pretty1>\$?)$|"
                   r"\$(?P<name>[A-Za-z_]\w*)(?P<path>(?:->\w+|\.\w+|\[\d+\])*)(?P<pretty>\$?)$")
_STEP = re.compile(r"->(\w+)|\.(\w+)|\[(\d+)\]")
#: Largest object read whole at a hit (a bigger one prints `?`).
MAX_OBJECT = 4096

#: Where one piece of an item comes from: index of a fetch, bytes known now, a user-space
#: computation (of the hit, or of the caller's call site: an entry value), or unavailable.
Ref = int | bytes | Computed | EntryValue | None
#: Frame 1 of a hit, computed when an entry value needs it.
Caller = Callable[[], CallerFrame | None]


@dataclass(frozen=True, slots=True)
class Item:
    """One printed value of a probe.

    :param parts: (size, ref) pieces whose concatenation holds the value; `window` the
        value's (start, size) in them.
    :param string: fetch of the string a ``char *`` points to.
    :param address: fetch of the value's address (for a type the printer does not know).
    :param member_strings: for a struct: fetches of the strings its ``char *`` members point
        to, by member name.
    :param error: why the value is not available at the pc (printed ``?``).
    """

    label: str
    shape: Shape
    parts: tuple[tuple[int, Ref], ...] = ()
    window: tuple[int, int] = (0, 0)
    string: int | None = None
    address: int | None = None
    member_strings: tuple[tuple[str, int], ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProbePlan:
    """The items of one probe and the fetches its hits make (`layout`: where they land)."""

    items: tuple[Item, ...]
    fetches: tuple[Fetch, ...]
    layout: Layout
    elf_addr: int = 0           # the probe's address (a hit's rip minus it: the load bias)


def parse_prints(texts: Sequence[str]) -> list[str]:
    """The expressions of every ``--print`` argument (whitespace separated), checked."""
    out = []
    for text in texts:
        for word in text.split():
            if not _ITEM.match(word):
                raise UsageError(f"cannot parse --print {word!r}: expected $name, $name->field, "
                                 "$name.field, $name[N] (a trailing $ pretty-prints), $$vars, "
                                 "$$locals or $$parms")
            out.append(word)
    return out


class _Planner:
    def __init__(self, probe: str, in_scope: Sequence[tuple[Variable, CType]],
                 available: set[int], elf_addr: int, ctx: PcContext,
                 types: TypeReader) -> None:
        self.probe = probe
        self.in_scope = in_scope
        self.available = available
        self.elf_addr = elf_addr
        self.ctx = ctx
        self.types = types
        self.fetches: list[Fetch] = []

    def fetch(self, f: Fetch) -> int:
        if f not in self.fetches:
            self.fetches.append(f)
        return self.fetches.index(f)

    def items(self, word: str) -> list[Item]:
        m = _ITEM.match(word)
        assert m is not None
        if m["group"]:
            want = {"vars": (True, False), "locals": (False,), "parms": (True,)}[m["group"]]
            return [self.item(v.name, v, t, "", bool(m["pretty1"]))
                    for v, t in self.in_scope if v.is_parameter in want]
        found = next(((v, t) for v, t in self.in_scope if v.name == m["name"]), None)
        if found is None:
            names = " ".join("$" + v.name for v, _ in self.in_scope) or "none"
            raise UbtError(f"no variable ${m['name']} at {self.probe}; in scope: {names}")
        return [self.item(word[1:], found[0], found[1], m["path"], bool(m["pretty"]))]

    def item(self, label: str, var: Variable, t: CType, path: str, pretty: bool) -> Item:
        loc: Located | None = None
        error = None
        try:
            loc = self._locate(var, t)
        except Unavailable as e:
            error = str(e)
        for arrow, field, index in _STEP.findall(path):
            t, loc, error = self._step(label, t, loc, error, arrow, field, index)
        if pretty and t.kind is TypeKind.POINTER and t.die is not None \
                and self.types.target(t).kind in (TypeKind.STRUCT, TypeKind.UNION):
            target = self.types.target(t)       # stap's $ptr$: the struct pointed to
            t, (loc, error) = target, self._access(loc, error, True, 0, target.size)
        shape = shape_of(self.types, t)
        if loc is None or error is not None:
            return Item(label, shape, error=error or "unavailable")
        if loc.memory is None and loc.window[1] > MAX_OBJECT or t.size > MAX_OBJECT:
            return Item(label, shape, error="too large")
        parts = tuple((n, self._ref(src)) for n, src in loc.pieces)
        if any(isinstance(src, EntryValue) for _, src in parts) and (
                shape.is_string or any(m.is_string for _, _, m in shape.members)):
            # the string behind it would need a read at the hit, which an entry value (known
            # after the hit, from the caller) cannot have
            return Item(label, shape, error="a string behind an entry value")
        string = address = None
        if shape.is_string:
            string = self._string(loc)
        if t.kind in (TypeKind.UNKNOWN, TypeKind.FUNCTION) and loc.memory is not None:
            address = self.fetch(Fetch(loc.memory, 8, FetchMode.VALUE))
        strings = []
        if t.kind is TypeKind.STRUCT:
            for name, off, mshape in shape.members:
                if mshape.is_string:
                    ref = self._string(member(loc, off, 8))
                    if ref is not None:
                        strings.append((name, ref))
        return Item(label, shape, parts, loc.window, string, address, tuple(strings))

    def _locate(self, var: Variable, t: CType) -> Located:
        if var.die_offset not in self.available:
            raise Unavailable("optimized out")
        if var.const_value is not None:
            value = var.const_value
            data = value if isinstance(value, bytes) else (
                int(value) & ((1 << (8 * max(t.size, 1))) - 1)).to_bytes(max(t.size, 1),
                                                                          "little") \
                if isinstance(value, int) else b""
            return Located(((len(data), data),), None, (0, len(data)))
        expr = var.location_at(self.elf_addr)
        if expr is None:
            raise Unavailable("optimized out")
        return locate(expr, t.size, self.ctx)

    def _step(self, label: str, t: CType, loc: Located | None, error: str | None, arrow: str,
              field: str, index: str) -> tuple[CType, Located | None, str | None]:
        """One access of an expression: the new type, location and unavailability."""
        if index:
            if t.kind not in (TypeKind.ARRAY, TypeKind.POINTER) or t.die is None:
                raise UbtError(f"${label}: {t.name} is not an array or pointer")
            elem = self.types.target(t)
            if elem.kind is TypeKind.VOID or not elem.size:
                raise UbtError(f"${label}: cannot index {t.name}: its elements have no "
                               f"known size ({elem.name})")
            n = int(index)
            if t.kind is TypeKind.ARRAY and t.count is not None and n >= t.count:
                raise UbtError(f"${label}: index {n} is past the end of {t.name} "
                               f"({t.count} elements)")
            return elem, *self._access(loc, error, t.kind is TypeKind.POINTER,
                                       n * elem.size, elem.size)
        agg = t
        if arrow:
            if t.kind is not TypeKind.POINTER or t.die is None:
                raise UbtError(f"${label}: -> on {t.name}, which is not a pointer")
            agg = self.types.target(t)
            if agg.kind is TypeKind.VOID:
                raise UbtError(f"${label}: -> on {t.name}, a pointer to void")
        if agg.kind not in (TypeKind.STRUCT, TypeKind.UNION):
            raise UbtError(f"${label}: {agg.name} has no members"
                           + (" (use -> for a pointer)" if agg.kind is TypeKind.POINTER else ""))
        name = arrow or field
        members = self.types.members(agg)
        found = next((m for m in members if m.name == name), None)
        if found is None:
            raise UbtError(f"${label}: {agg.name} has no member {name!r}; members: "
                           + ", ".join(m.name for m in members if m.name))
        if found.offset is None:
            return found.type, loc, error or "a bit field"
        return found.type, *self._access(loc, error, bool(arrow), found.offset,
                                         found.type.size)

    @staticmethod
    def _access(loc: Located | None, error: str | None, through_pointer: bool, offset: int,
                size: int) -> tuple[Located | None, str | None]:
        if loc is None or error is not None:
            return None, error
        try:
            if through_pointer:
                address = pointer_value(loc).plus(offset)
                return Located(((size, Fetch(address, size, FetchMode.MEMORY)),), address,
                               (0, size)), None
            return member(loc, offset, size), None
        except Unavailable as e:
            return None, str(e)

    def _string(self, loc: Located) -> int | None:
        """The fetch of the string the ``char *`` at `loc` points to (None: not followable)."""
        try:
            return self.fetch(Fetch(pointer_value(loc), STRING_FETCH, FetchMode.STRING))
        except Unavailable:
            return None

    def _ref(self, src: Source) -> Ref:
        return self.fetch(src) if isinstance(src, Fetch) else src


def plan_probe(probe: str, words: Sequence[str], in_scope: Sequence[tuple[Variable, CType]],
               available: set[int], elf_addr: int, ctx: PcContext,
               types: TypeReader) -> ProbePlan:
    """The plan of one probe at `elf_addr`.

    :param in_scope: every variable in scope there with its type, innermost first.
    :param available: die offsets of those with a location (or constant) there.
    """
    planner = _Planner(probe, in_scope, available, elf_addr, ctx, types)
    items = tuple(item for word in words for item in planner.items(word))
    fetches = tuple(planner.fetches)
    return ProbePlan(items, fetches, layout(fetches), elf_addr)


def values_at(plan: ProbePlan, area: bytes, regs: Mapping[int, int],
              stack: MemoryReader, caller: Caller | None = None) -> list[tuple[str, str]]:
    """(label, printed value) of every item at one hit, from its vars `area`, registers and
    captured stack; `caller` gives frame 1 for entry values (without it they print ``?``)."""
    frame1 = _Frame1(caller, regs.get(RA, 0) - plan.elf_addr)
    got: list[bytes | None] = []
    for i, (f, off) in enumerate(zip(plan.fetches, plan.layout.offsets)):
        ok = i < len(area) and area[i] == 1
        got.append(area[off:off + f.size] if ok else None)
    out = []
    for item in plan.items:
        if item.error is not None:
            out.append((item.label, "?"))
            continue
        data = _window(item, got, regs, stack, frame1)
        string = got[item.string] if item.string is not None else None
        address = got[item.address] if item.address is not None else None
        strings = {name: got[ref] for name, ref in item.member_strings}
        text = format_value(item.shape, data, string,
                            int.from_bytes(address, "little") if address else None, strings)
        out.append((item.label, text))
    return out


class _Frame1:
    """Frame 1 of one hit, walked once when the first entry value asks."""

    def __init__(self, caller: Caller | None, bias: int) -> None:
        self._caller = caller
        self.bias = bias
        self._done = False
        self._frame: CallerFrame | None = None

    def get(self) -> CallerFrame | None:
        if not self._done:
            self._done = True
            self._frame = self._caller() if self._caller is not None else None
        return self._frame


def _window(item: Item, got: list[bytes | None], regs: Mapping[int, int],
            stack: MemoryReader, frame1: _Frame1) -> bytes | None:
    """The bytes of the item's window, None when a piece it needs is unavailable."""
    start, size = item.window
    data = b""
    for n, ref in item.parts:
        if len(data) >= start + size:
            break
        piece: bytes | None
        if isinstance(ref, int):
            piece = got[ref]
        elif isinstance(ref, Computed):
            piece = _computed(ref, regs, stack)
        elif isinstance(ref, EntryValue):
            piece = _entry_value(ref, frame1, stack)
        else:
            piece = ref
        if piece is None:
            if len(data) + n > start:
                return None
            piece = bytes(n)
        data += piece[:n].ljust(n, b"\0")
    return data[start:start + size] if len(data) >= start + size else None


def _computed(c: Computed, regs: Mapping[int, int], stack: MemoryReader) -> bytes | None:
    cfa = None if c.cfa is None or c.cfa[0] not in regs else regs[c.cfa[0]] + c.cfa[1]
    try:
        value = evaluate(c.expr, regs, stack, cfa=cfa)
    except (ExprError, MemoryFault):
        return None
    return value.to_bytes(8, "little")[:c.size].ljust(c.size, b"\0")


def _entry_value(e: EntryValue, frame1: _Frame1, stack: MemoryReader) -> bytes | None:
    """The value the caller passed in `e.reg`: the call value of the call site frame 1
    returns to, from what is known of the caller (its callee-saved registers, rsp, CFA and
    captured stack); None (``?``) for any other return address: an unknown caller, a call
    that is not a direct one to this function."""
    frame = frame1.get()
    if frame is None:
        return None
    expr = dict(e.sites).get((frame.pc - frame1.bias) & ((1 << 64) - 1))
    if expr is None:
        return None
    regs = {r: v for r, v in frame.regs.items() if r in CALL_VALUE_REGISTERS}
    try:
        value = evaluate(relocate(expr, frame1.bias), regs, stack, cfa=frame.cfa)
    except (ExprError, MemoryFault, Unavailable):
        return None
    return value.to_bytes(8, "little")[:e.size].ljust(e.size, b"\0")


__all__ = ["Item", "ProbePlan", "parse_prints", "plan_probe", "values_at"]
