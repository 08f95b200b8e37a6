"""`ubt list` against `perf probe -L` / `-V`: the explicit, counted rules where perf and ubt
(which prints what ``stap -L`` prints) differ by design. Everything else must be equal.

Lines: the set of probe-able lines must be equal (no rule).

Variables at a line's address (ubt's first address of the line; perf prints a block for each
address, the block at the same address is compared). A ubt variable missing from perf is
accepted only under one of these rules, each counted:

- ``unsupported-op``: its location expression at the address starts with an operation perf's
  ``convert_variable_location`` does not take (it takes ``DW_OP_reg*``, ``breg*``, ``regx``,
  ``bregx``, ``fbreg`` and ``addr``): e.g. ``DW_OP_entry_value`` (the value the register had at
  entry), ``DW_OP_lit*``/``const*`` + ``stack_value``, ``DW_OP_implicit_pointer``. ubt lists it:
  the value has a location there, part 2 decides whether it can be read.
- ``fbreg-without-cfi``: the location is ``DW_OP_fbreg`` while the frame base is
  ``DW_OP_call_frame_cfa`` and the file perf reads DWARF from has no CFI (a separate debug file:
  its ``.eh_frame`` is NOBITS), so perf cannot compute the frame base; ubt has the CFA from the
  binary's own ``.eh_frame``.

A perf variable missing from ubt is accepted only as:

- ``entry-fuzz``: a parameter at the function's entry address whose location starts later
  (perf searches forward from the entry "because of fentry/mcount"; ubt says what holds at
  that address);
- ``nameless``: perf's ``(null)``, a variable the compiler made without ``DW_AT_name`` (the
  bound of a variable-length array): no ``$name`` can refer to it, ubt does not list it;
- ``shadowed``: an outer variable hidden by an inner one of the same name (perf lists both
  when their types differ, and the outer one when the inner one has no location there; the
  name means the innermost declaration, as in ``stap -L``, so ubt lists only that one).

Types are compared after turning ubt's (stap's) spelling into perf's, each step counted:
``qualifiers`` (perf drops const/volatile/restrict), ``array`` (``T[]`` is perf's ``T*``),
``function-pointer`` (``R (*) (args)`` is perf's ``(function_type)*``), ``anonymous``
(perf prints ``(unknown_type)`` for an anonymous struct/union/enum), ``void-pointer`` (perf 6.1
prints ``(unknown_type)`` for ``void*``, ``void const*``, ``void**``: a pointer DIE without
``DW_AT_type`` has no type name for it).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from symbolizer.dwarf_scopes import Variable

_PERF_OPS = frozenset([0x03, 0x90, 0x91, 0x92] + list(range(0x50, 0x80)))
DW_OP_FBREG, DW_OP_CALL_FRAME_CFA = 0x91, 0x9C
_QUALIFIERS = re.compile(r" (const|volatile|restrict|_Atomic)\b")
_VOID_POINTER = re.compile(r"^void((?: const| volatile| restrict)*\*)+(?: const| volatile)*$")
_FUNCTION_POINTER = re.compile(r"^.*\(\*\) \(.*\)$")


def perf_type(stap_type: str, applied: Counter[str]) -> str:
    """ubt's (stap's) type name as perf spells it; counts each rule that changed it."""
    if "{...}" in stap_type:
        applied["anonymous"] += 1
        return "(unknown_type)"
    if _VOID_POINTER.match(stap_type):
        applied["void-pointer"] += 1
        return "(unknown_type)"
    if _FUNCTION_POINTER.match(stap_type):
        applied["function-pointer"] += 1
        return "(function_type)*"
    text = _QUALIFIERS.sub("", stap_type)
    if text != stap_type:
        applied["qualifiers"] += 1
    if "[]" in text:
        applied["array"] += 1
        text = text.replace("[]", "*")
    return text


def compare_vars(ubt_vars: Sequence[Variable], address: int, perf: frozenset[tuple[str, str]],
                 frame_base: bytes | None, perf_has_cfi: bool, entry: int | None,
                 hidden: set[str], applied: Counter[str]) -> list[str]:
    """Differences between ubt's variables at `address` and perf's block there, after the
    rules (counted in `applied`); `entry` is the function's entry address, `hidden` the names
    in scope there without a location (innermost declarations)."""
    problems = []
    perf_types: dict[str, set[str]] = {}
    for typ, name in perf:
        perf_types.setdefault(name, set()).add(typ)
    for var in ubt_vars:
        expr = var.location_at(address)
        wanted = perf_types.get(var.name)
        if wanted is None:
            rule = _why_perf_omits(expr, var, frame_base, perf_has_cfi)
            if rule:
                applied[rule] += 1
            else:
                problems.append(f"${var.name} ({_hex(expr)}): ubt lists it, perf does not")
            continue
        got = perf_type(var.type_name, applied)
        if got not in wanted:
            problems.append(f"${var.name}: type {var.type_name!r} (perf {sorted(wanted)})")
        elif len(wanted) > 1:
            applied["shadowed"] += len(wanted) - 1
    listed = {v.name for v in ubt_vars}
    for name in sorted(set(perf_types) - listed):
        if name == "(null)":
            applied["nameless"] += 1
        elif name in hidden:
            applied["shadowed"] += 1
        elif address == entry:
            applied["entry-fuzz"] += 1
        else:
            problems.append(f"${name}: perf lists it, ubt does not")
    return problems


def _why_perf_omits(expr: bytes | None, var: Variable, frame_base: bytes | None,
                    perf_has_cfi: bool) -> str | None:
    if expr is None:
        return None
    if expr[0] not in _PERF_OPS:
        return "unsupported-op"
    if (expr[0] == DW_OP_FBREG and frame_base == bytes([DW_OP_CALL_FRAME_CFA])
            and not perf_has_cfi):
        return "fbreg-without-cfi"
    return None


def _hex(expr: bytes | None) -> str:
    return "no location" if expr is None else f"expr {expr.hex()}"
