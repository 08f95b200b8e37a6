"""ubt's frames against gdb's, frame for frame: the comparison shared by the oracle tests of
`ubt stack` (test_stack_vs_gdb.py: gdb attached to a blocked process) and `ubt process`
(test_process_vs_gdb.py: gdb stopped at a breakpoint where ubt's uprobe fired).

A ubt thread is its JSON object (``{"frames": [...], "stop_reason": ...}``), a gdb thread a
``GdbThread``. Frame i of ubt is compared with frame i of gdb after alignment on (pc, inlined):

- ``pc`` (gdb's ``frame.pc()`` is the return address for outer frames, like ubt's); callers that
  compare two runs of a program put the module-relative address in ``pc`` on both sides
  (``tests.oracle.gdb_stops.relative_*``);
- inlined: ubt ``inlined`` == gdb ``INLINE_FRAME``;
- name, where gdb has one: gdb's debug-info symbol ``print_name`` (``fx::Worker::run(int)``,
  demangled, with parameters) or, without debug info, gdb's minimal-symbol name. The one
  explicit equivalence: gdb computes ``main()`` for a C++ function with no
  ``DW_AT_linkage_name`` and no scope (``main``); ubt's DWARF name ``main`` is accepted there.
- file:line where gdb has a symtab: ``normpath(ubt.file) == normpath(gdb symtab.fullname())``
  (both join comp_dir and the file name like eu-addr2line) and ``line`` equal; where gdb has
  no symtab ubt must not invent one;
- module: the mapping containing pc.
- Signal frames: gdb shows ``<signal handler called>`` (``SIGTRAMP_FRAME``) at the pc of the
  sigreturn trampoline; ubt shows that trampoline as an ordinary frame at the same pc, named by
  libc's symbol ``__restore_rt``: a gdb SIGTRAMP frame must face a ubt frame with the same pc,
  ``function == "__restore_rt"`` in libc, not inlined (file/line are not compared there).
- The walk's end: when gdb stops at the outermost frame ubt must say ``end_of_stack``.
- gdb's TAILCALL frames are set aside before the comparison (and listed in the notes): gdb
  reconstructs them from DW_TAG_call_site/DW_AT_call_tail_call; they have no frame on the
  stack, so no CFI unwinder (ubt, eu-stack) shows them.

Two disagreements between gdb and eu-addr2line are explicit classes, accepted only where
eu-addr2line, asked at the frame's lookup address (pc, or pc - 1 for a return address), agrees
with ubt and disagrees with gdb; each accepted case goes into the notes:
- line table: gdb ignores ``is_stmt = false`` rows, eu-addr2line and llvm-symbolizer do not;
- same-address aliases: ubt's name and gdb's are ELF symbols starting at the same address
  (``clone3`` / ``__clone3``).
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from typing import Any

from .elfutils import OracleFrame, eu_addr2line, symbols_of
from .gdb import GdbFrame, GdbThread

#: ubt's name for the frame gdb calls <signal handler called> (glibc x86-64 sa_restorer).
SIGTRAMP_NAMES = frozenset({"__restore_rt"})

MAX_LISTED = 16  # differences listed per thread before the side-by-side listing


def gdb_name(g: GdbFrame) -> str | None:
    """The name ubt must print for a gdb frame: the debug-info symbol's print name (C++ with
    parameters), else the minimal-symbol name gdb shows, else None (gdb prints ??)."""
    return g.function or g.name


def same_address_alias(ubt_name: str | None, gdb_name_: str | None, module: str | None) -> bool:
    """Both names are ELF symbols starting at the same address of `module` (equal-ranked
    aliases such as ``clone3`` / ``__clone3`` / ``__GI___clone3``: all LOCAL, same size)."""
    if not gdb_name_ or not ubt_name or not module or not os.path.exists(module):
        return False
    syms = symbols_of(module)
    return bool(syms.starts(ubt_name) & syms.starts(gdb_name_))


def names_match(ubt_name: str | None, g: GdbFrame) -> bool:
    want = gdb_name(g)
    if want is None:
        return True  # gdb has no name: ubt may know more (names are compared where gdb has one)
    if ubt_name == want:
        return True
    # gdb's C++ physname for a function without DW_AT_linkage_name at global scope (main).
    return (want.endswith("()") and "::" not in want and ubt_name == want[:-2]
            and g.name == ubt_name)


def _norm(path: str | None) -> str | None:
    return None if path is None else os.path.normpath(path)


class SecondOpinion:
    """eu-addr2line at a frame's lookup address (``offset``, or ``offset - 1`` for a return
    address), asked only where ubt and gdb disagree; results cached per (module, address).
    `debug_dirs`: where else eu-addr2line finds debug files by build-id."""

    def __init__(self, debug_dirs: Sequence[str] = ()) -> None:
        self._cache: dict[tuple[str, int], tuple[OracleFrame, ...]] = {}
        self._debug_dirs = debug_dirs

    def chain(self, module: str, elf_addr: int) -> tuple[OracleFrame, ...]:
        key = (module, elf_addr)
        if key not in self._cache:
            try:
                self._cache[key] = eu_addr2line(module, [elf_addr], self._debug_dirs)[0]
            except Exception:  # noqa: BLE001 - no second opinion, the difference stands
                self._cache[key] = ()
        return self._cache[key]


def compare_frame(u: dict[str, Any], g: GdbFrame, eu: OracleFrame | None = None,
                  notes: list[str] | None = None) -> list[str]:
    """Differences between ubt frame `u` and gdb frame `g` (empty: equal). `eu` is
    eu-addr2line's frame at the same address and inline level, used only to classify the two
    explicit gdb-vs-eu-addr2line disagreements (see the module docstring)."""
    diffs = []
    if u["pc"] != g.pc:
        diffs.append(f"pc {u['pc']:#x} != gdb {g.pc:#x}")
    if (u.get("module") or None) != g.module:
        diffs.append(f"module {u.get('module')!r} != gdb {g.module!r}")
    if g.is_sigtramp:
        if u.get("function") not in SIGTRAMP_NAMES:
            diffs.append(f"gdb <signal handler called>: ubt function {u.get('function')!r} not in "
                         f"{sorted(SIGTRAMP_NAMES)}")
        if u.get("inlined"):
            diffs.append("gdb <signal handler called>: ubt frame is marked inlined")
        return diffs
    if bool(u.get("inlined")) != g.is_inline:
        diffs.append(f"inlined {u.get('inlined')} != gdb {g.is_inline}")
    ufn = u.get("function")
    if not names_match(ufn, g):
        if (eu is not None and eu.function == ufn
                and same_address_alias(ufn, gdb_name(g), g.module)):
            if notes is not None:
                notes.append(f"{g.pc:#x}: alias {ufn!r} (= eu-addr2line) for gdb's "
                             f"{gdb_name(g)!r}")
        else:
            diffs.append(f"function {ufn!r} != gdb {gdb_name(g)!r}")
    gdb_file = g.fullname or g.file
    if gdb_file is not None:
        ours = (_norm(u.get("file")), u.get("line"))
        theirs = (_norm(gdb_file), g.line)
        if ours != theirs:
            second = None if eu is None else (_norm(eu.file), eu.line)
            if second is not None and second == ours and second != theirs:
                if notes is not None:
                    notes.append(f"{g.pc:#x} {gdb_name(g)}: line table: gdb {gdb_file}:{g.line}, "
                                 f"ubt = eu-addr2line {u.get('file')}:{u.get('line')}")
            else:
                if ours[0] != theirs[0]:
                    diffs.append(f"file {u.get('file')!r} != gdb {gdb_file!r}")
                if ours[1] != theirs[1]:
                    diffs.append(f"line {u.get('line')} != gdb {g.line}")
    elif u.get("file") is not None:
        diffs.append(f"file {u.get('file')!r}:{u.get('line')} where gdb has no source")
    return diffs


def ubt_label(u: dict[str, Any]) -> str:
    where = f" ({u.get('file')}:{u.get('line')})" if u.get("file") else ""
    inl = " (inlined)" if u.get("inlined") else ""
    mod = os.path.basename(u.get("module") or "?")
    return f"{u['pc']:#x} {u.get('function') or '??'}{where}{inl} [{mod}] {u.get('method')}"


def _eu_frames_for(frames: list[dict[str, Any]], gdb_frames: list[GdbFrame],
                   pairs: list[tuple[int, int]], second: SecondOpinion
                   ) -> dict[int, OracleFrame | None]:
    """eu-addr2line's frame for each ubt frame index of `pairs`, matched by inline level."""
    out: dict[int, OracleFrame | None] = {}
    for i, j in pairs:
        u = frames[i]
        if u.get("module") is None or u.get("offset") is None:
            out[i] = None
            continue
        # the group of frames sharing this pc (inlined ones first, then the real one)
        start = i
        while start > 0 and frames[start - 1]["pc"] == u["pc"] and frames[start - 1].get("inlined"):
            start -= 1
        gstart = j - (i - start)
        activation = gstart <= 0 or any(f.is_sigtramp for f in gdb_frames[max(0, gstart - 1):gstart])
        addr = u["offset"] if activation else u["offset"] - 1
        chain = second.chain(u["module"], addr)
        out[i] = chain[i - start] if i - start < len(chain) else None
    return out


def compare_thread(ubt_thread: dict[str, Any], g: GdbThread,
                   notes: list[str] | None = None, debug_dirs: Sequence[str] = ()) -> list[str]:
    """All differences of one thread, each line naming the frame numbers; [] when equal.
    `debug_dirs`: debug-file directories of the run, for eu-addr2line's second opinions.

    gdb's TAILCALL frames are set aside first (listed in `notes`). Frames are then aligned on
    (pc, inlined), so one missing or extra frame is reported as such rather than as a shift of
    every frame after it.
    """
    frames = ubt_thread["frames"]
    tail = [f for f in g.frames if f.is_tailcall]
    if tail and notes is not None:
        notes.append(f"TID {g.tid}: gdb tail-call frames (from DW_TAG_call_site, not on the "
                     f"stack) set aside: " + "; ".join(f.label() for f in tail))
    gframes = [f for f in g.frames if not f.is_tailcall]
    problems = []
    keys_u = [(f["pc"], bool(f.get("inlined"))) for f in frames]
    keys_g = [(f.pc, f.is_inline) for f in gframes]
    matcher = difflib.SequenceMatcher(None, keys_u, keys_g, autojunk=False)
    second = SecondOpinion(debug_dirs)
    for op, u0, u1, g0, g1 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and u1 - u0 == g1 - g0):
            pairs = list(zip(range(u0, u1), range(g0, g1)))
            first = {i: compare_frame(frames[i], gframes[j]) for i, j in pairs}
            need = [(i, j) for i, j in pairs if first[i]]
            eu = _eu_frames_for(frames, gframes, need, second) if need else {}
            for i, j in pairs:
                diffs = first[i] and compare_frame(frames[i], gframes[j], eu.get(i), notes)
                problems += [f"ubt #{i} / gdb #{j}: {d}" for d in diffs]
            continue
        if g1 > g0:
            problems.append(f"gdb #{g0}..#{g1 - 1} not matched in ubt (ubt #{u0}..#{u1 - 1}): "
                            + "; ".join(f.label() for f in gframes[g0:g1]))
        if u1 > u0:
            problems.append(f"ubt #{u0}..#{u1 - 1} not matched in gdb: "
                            + "; ".join(ubt_label(f) for f in frames[u0:u1]))
    if g.stop == "outermost" and ubt_thread.get("stop_reason") != "end_of_stack":
        problems.append(f"stop_reason {ubt_thread.get('stop_reason')!r}: gdb reached the "
                        f"outermost frame")
    return problems


def side_by_side(ubt_thread: dict[str, Any], g: GdbThread) -> str:
    """Both walks next to each other (gdb's tail-call frames left out, as in the comparison)."""
    frames = ubt_thread["frames"]
    gframes = [f for f in g.frames if not f.is_tailcall]
    rows = [f"TID {g.tid} ({g.name}); ubt stop_reason={ubt_thread.get('stop_reason')}, "
            f"gdb stop={g.stop}"]
    for n in range(max(len(frames), len(gframes))):
        left = ubt_label(frames[n]) if n < len(frames) else "-"
        right = gframes[n].label() if n < len(gframes) else "-"
        rows.append(f"  #{n:<2} ubt {left}\n      gdb {right}")
    return "\n".join(rows)


def compare_process(ubt_threads: dict[int, dict[str, Any]], gdb_threads: dict[int, GdbThread],
                    notes: list[str] | None = None, debug_dirs: Sequence[str] = ()) -> list[str]:
    """Every difference over all threads (matched by tid), with side-by-side listings."""
    out = []
    if set(ubt_threads) != set(gdb_threads):
        out.append(f"threads differ: ubt {sorted(ubt_threads)} gdb {sorted(gdb_threads)}")
    for tid in sorted(set(ubt_threads) & set(gdb_threads)):
        problems = compare_thread(ubt_threads[tid], gdb_threads[tid], notes, debug_dirs)
        if problems:
            shown = problems[:MAX_LISTED] + ([f"... {len(problems) - MAX_LISTED} more"]
                                             if len(problems) > MAX_LISTED else [])
            out.append("\n".join([*shown, side_by_side(ubt_threads[tid], gdb_threads[tid])]))
    return out
