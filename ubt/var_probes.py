"""Probes with values: where `ubt process BIN PROBE --print '...'` attaches, and what it reads.

Two kinds of probe take ``--print``:

- a statement, ``FUNC@FILE:LINE`` / ``FUNC:LINE`` or ``process("BIN").statement("...")``: at the
  line's address, the one ``ubt list`` shows (`symbolizer.dwarf_statements`); a line without
  code is an error naming the nearest probe-able lines;
- a function, ``FUNC``: after its prologue as SystemTap places ``function("FUNC")`` (at the
  entry of optimized code, after the first line otherwise: `Lister.entry_points`);
  ``FUNC+0`` is exactly the entry, ``FUNC+OFF`` that instruction.

The debug info is found like ``ubt list`` finds it (the binary, then its libraries). At the
probe's address the CFA rule comes from the module's CFI (for ``DW_OP_call_frame_cfa`` frame
bases) and the frame base from the function's DWARF; away from the entry, the function's call
sites (`Lister.call_sites`) for entry values; `ubt.var_plan` turns the expressions into
fetches. Return probes have no variables to read (the frame is gone): refused.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from symbolizer.dwarf_statements import StatementPoint
from symbolizer.symbolizer import default_cache_dir
from symbolizer.var_fetch import PcContext
from bpf_progs.capture import ProbeValues
from bpf_progs.fetch_gen import FetchError, generate, vars_size
from symbolizer.dwarf_lines import tail_match
from symbolizer.elf import ElfImage
from symbolizer.locate import DebugInfoLocator
from unwind.cfi import UnwindTableCache
from unwind.table import UnwindTable

from .errors import UbtError, UsageError
from .listing import Row, locate, select_lines
from .probes import AttachPoint, resolve_binary
from .probespec import ListSpec, parse_list_spec, parse_probe
from .var_plan import ProbePlan, parse_prints, plan_probe

_STATEMENT = re.compile(r'@|:\d+$|\.statement\(')


@dataclass(frozen=True, slots=True)
class ValueProbe:
    """One attach point and the values its hits print."""

    point: AttachPoint
    plan: ProbePlan


def is_statement(text: str) -> bool:
    """Whether a probe argument names a source line (``f@file.c:12``, ``f:12``)."""
    return bool(_STATEMENT.search(text))


def resolve(binary: str, text: str, words: Sequence[str]) -> list[ValueProbe]:
    """The attach points of probe `text` in `binary` (or its libraries) with the plans of the
    `--print` expressions `words` at each.

    :raises UbtError: no debug info, no such function or line, a bad expression.
    """
    if is_statement(text):
        spec = parse_list_spec(text)
        if not spec.exact_line:
            raise UsageError(f"{text!r}: a statement probe needs one line (FUNC@FILE:LINE)")
        path = resolve_binary(spec.binary or binary)
        module, lister, addrs = locate(path, spec.pattern)
        points = _statements(spec, module, lister.statements(spec.pattern, addrs))
    else:
        pspec = parse_probe(text)
        if pspec.is_return:
            raise UsageError(f"{text}: --print reads variables in scope, which a return probe "
                             "no longer has; probe a line before the return instead")
        path = resolve_binary(pspec.binary or binary)
        module, lister, addrs = locate(path, pspec.pattern)
        offset = pspec.offset if "+" in text else None
        points = lister.entry_points(pspec.pattern, addrs, offset)
        if not points:
            raise UbtError(f"{pspec.pattern} has no code of its own in {module} (only inlined "
                           "copies): probe one of its lines (ubt list) instead")
    table = _unwind_table(module)
    is_statement_probe = is_statement(text)
    out = []
    for p in points:
        row = table.row_for(p.address) if table is not None else None
        cfa = (row.cfa.reg, row.cfa.offset) if row is not None and row.cfa.reg is not None \
            else None
        label = (f"{p.function}@{os.path.basename(p.file)}:{p.line}" if is_statement_probe
                 else p.function)
        entry_pc = p.entry_pc
        at_entry = p.address == entry_pc
        sites = lister.call_sites(entry_pc) if entry_pc is not None and not at_entry else None
        ctx = PcContext(p.frame_base.at(p.address) if p.frame_base else None, cfa,
                        at_entry=at_entry, call_sites=sites)
        in_scope = [(v, lister.variable_type(v)) for v in (*p.variables, *p.unavailable)]
        available = {v.die_offset for v in p.variables}
        plan = plan_probe(label, words, in_scope, available, p.address, ctx, lister.types)
        offset = 0 if is_statement_probe or entry_pc is None else p.address - entry_pc
        out.append(ValueProbe(AttachPoint(module, label, p.address, offset, False), plan))
    return out


def _statements(spec: ListSpec, module: str,
                points: list[StatementPoint]) -> list[StatementPoint]:
    """The points of `spec`'s line (in its file); none: the nearest probe-able lines."""
    points = [p for p in points if spec.file is None or tail_match(p.file, spec.file)]
    if not points:
        what = spec.pattern + (f"@{spec.file}" if spec.file else "")
        raise UbtError(f"no function {what!r} described in the debug info of {module}")
    rows: list[Row] = [(p.function, p.file, p.line, p.address, ()) for p in points]
    chosen = {r[2] for r in select_lines(spec, rows)}     # raises with the nearest lines
    return [p for p in points if p.line in chosen]


def _unwind_table(module: str) -> UnwindTable | None:
    """The module's CFI table (the CFA rule at a probe's address), None when unreadable."""
    image = ElfImage(module)
    debug = DebugInfoLocator().find(image).debug_path
    try:
        return UnwindTableCache(default_cache_dir()).get(image.build_id, module, debug)
    except (OSError, ValueError):
        return None




def resolve_all(binary: str, probes: Sequence[str], prints: Sequence[str],
                ) -> tuple[list[ValueProbe], ProbeValues]:
    """Every probe of the command line with its values, and the generated fetch program.

    :raises UbtError: as `resolve`, or values too large for a record.
    """
    words = parse_prints(prints)
    found = [vp for text in probes for vp in resolve(binary, text, words)]
    fetches = [vp.plan.fetches for vp in found]
    try:
        source = generate([(vp.point.elf_addr, vp.plan.fetches) for vp in found])
        return found, ProbeValues(source, vars_size(fetches))
    except FetchError as e:
        raise UbtError(f"cannot read these values in BPF: {e}") from None
