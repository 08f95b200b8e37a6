"""`ubt list`: the probe points of a program, with the variables available at each.

    ubt list /bin/ls 'format_user_or_group@src/ls.c:*'
    process("/bin/ls").statement("format_user_or_group@src/ls.c:4216") $name:char const* ...
    ubt list /bin/ls 'opendir'                       # the function and its parameters
    ubt list 'process("/bin/ls").statement("getenv:*")' --format json

FUNC is looked for like `ubt process` looks for it: in the binary, then in the libraries it
loads (`ubt.probes`), first by ELF symbol (which says which unit of the debug info to read),
then by the DWARF name index (inline-only functions). Debug info comes from wherever the
symbolizer finds it (`symbolizer.locate`: the file, build-id directory, debuglink, dwz,
debuginfod). Whole-command failures are `UbtError`s: no debug info (with the build-id), no such
function (nearest names), a line without code (nearest probe-able lines).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from symbolizer.dwarf_lines import tail_match
from symbolizer.symbolizer import default_cache_dir

from .errors import UbtError, UsageError
from .list_cache import ListCache
from .probes import libraries, not_found, resolve_binary, symbols_matching
from .probespec import ListSpec, parse_list_spec

if TYPE_CHECKING:       # the DWARF side is imported only when the cache cannot answer
    from symbolizer.dwarf_scopes import Variable
    from symbolizer.listing import Lister

_NEAREST = 3        # probe-able lines named when the one asked for has no code


#: One listed probe: (function, file, line, ELF address, ((variable name, type), ...)).
Row = tuple[str, "str | None", "int | None", "int | None", tuple[tuple[str, str], ...]]


def run(binary: str, spec_text: str | None, fmt: str) -> int:
    """List what `spec_text` (or a whole SystemTap probe in `binary`) names; print the lines."""
    if spec_text is None:
        spec = parse_list_spec(binary)
        if spec.binary is None:
            raise UsageError("what to list? usage: ubt list BINARY 'FUNC[@FILE][:LINE|:*|:N-M]'")
    else:
        spec = parse_list_spec(spec_text)
    path = resolve_binary(spec.binary or binary)
    shown = spec.binary or binary
    kind = "functions" if spec.lines is None else "statements"
    cache = ListCache(default_cache_dir())
    found = cache.get(path, spec.pattern, kind)
    if found is None:
        found = _compute(path, spec.pattern, kind)
        cache.put(path, spec.pattern, kind, *found)
    module, rows = found
    rows = [r for r in rows if spec.file is None or (r[1] and tail_match(r[1], spec.file))]
    if not rows:
        what = spec.pattern + (f"@{spec.file}" if spec.file else "")
        raise UbtError(f"no function {what!r} described in the debug info of {module}")
    if spec.lines is not None:
        rows = select_lines(spec, rows)
    word = "function" if spec.lines is None else "statement"
    render = _json if fmt == "json" else _text
    print("\n".join(render(shown, word, r) for r in rows), flush=True)
    return 0


def _compute(binary: str, pattern: str, kind: str) -> tuple[str, list[Row]]:
    """(module, rows) for `pattern` in the binary or the first library defining it."""
    module, lister, addrs = locate(binary, pattern)
    if kind == "functions":
        return module, [(f.name, f.file, f.line, f.entry, _vars(f.parameters))
                        for f in lister.functions(pattern, addrs)]
    return module, [(p.function, p.file, p.line, p.address, _vars(p.variables))
                    for p in lister.statements(pattern, addrs)]


def _vars(variables: Sequence[Variable]) -> tuple[tuple[str, str], ...]:
    return tuple((v.name, v.type_name) for v in variables)


def locate(binary: str, pattern: str) -> tuple[str, Lister, list[int]]:
    """The module defining `pattern` (the binary or a library), its lister and the ELF
    addresses of its matching symbols."""
    modules = [binary, *libraries(binary)]
    for module in modules:
        symbols = symbols_matching(module, pattern)
        if symbols:
            lister = lister_for(module, required=True)
            assert lister is not None
            return module, lister, [s.addr for s in symbols]
    for module in modules:                  # no symbol: an inline-only function?
        lister = lister_for(module, required=False)
        if lister is not None and lister.functions(pattern):
            return module, lister, []
    raise UbtError(not_found(binary, pattern))


def lister_for(module: str, required: bool) -> Lister | None:
    """The lister over `module`'s debug info; without debug info a `UbtError` naming the
    build-id when `required`, else None."""
    from symbolizer.dwarf_sections import DwarfError
    from symbolizer.elf import ElfFormatError, ElfImage
    from symbolizer.listing import Lister
    from symbolizer.locate import DebugInfoLocator

    try:
        image = ElfImage(module)
        files = DebugInfoLocator().find(image)
    except (ElfFormatError, OSError) as e:
        raise UbtError(f"{module}: {e}") from None
    if files.debug_path is None:
        if not required:
            return None
        bid = f"build-id {image.build_id}" if image.build_id else "no build-id"
        served = ("; a debuginfod server can serve it: set DEBUGINFOD_URLS" if image.build_id
                  else "")
        raise UbtError(f"{module} has no debug info ({bid}); install its debug package{served}")
    try:
        return Lister(files.debug_path, files.alt_path, image.build_id, default_cache_dir())
    except (DwarfError, OSError) as e:
        raise UbtError(f"{files.debug_path}: cannot read its DWARF: {e}") from None


def select_lines(spec: ListSpec, rows: list[Row]) -> list[Row]:
    """The rows in `spec`'s line range; a line (or range) without code is an error naming the
    nearest probe-able lines."""
    assert spec.lines is not None
    lo, hi = spec.lines
    chosen = [r for r in rows if r[2] is not None and lo <= r[2] <= hi]
    if chosen:
        return chosen
    lines = {r[2] for r in rows if r[2] is not None}
    near = sorted(lines, key=lambda n: (min(abs(n - lo), abs(n - hi)), n))[:_NEAREST]
    where = f"{os.path.basename(rows[0][1] or '?')}:{lo}" + (f"-{hi}" if hi != lo else "")
    raise UbtError(f"no probe-able line at {where} in {spec.pattern}; nearest: "
                   + ", ".join(str(n) for n in sorted(near)))


def _probe(binary: str, word: str, row: Row) -> str:
    function, file, line = row[0], row[1], row[2]
    where = f"@{file}:{line}" if file and line else ""
    return f'process("{binary}").{word}("{function}{where}")'


def _text(binary: str, word: str, row: Row) -> str:
    return _probe(binary, word, row) + "".join(f" ${name}:{typ}" for name, typ in row[4])


def _json(binary: str, word: str, row: Row) -> str:
    return json.dumps({"probe": _probe(binary, word, row), "function": row[0], "file": row[1],
                       "line": row[2], "address": row[3],
                       "vars": [{"name": name, "type": typ} for name, typ in row[4]]})
