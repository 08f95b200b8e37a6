"""Snapshot → unwind → symbolize: the stages shared by `ubt stack` and `ubt process`.

`Pipeline` owns the long-lived caches (unwind tables and symbol indexes per build-id, modules per
memory map) so that many snapshots of the same program cost little after the first. Tables are
keyed by the module's ELF addresses, so one compiled table serves every process mapping the file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from operator import itemgetter

from lru import LRU

from symbolizer.elf import ElfFormatError, open_image
from symbolizer.frames import SymFrame
from symbolizer.module import Module, ModuleSet
from symbolizer.symbolizer import Symbolizer
from unwind.cfi import UnwindTableCache
from unwind.table import UnwindTable
from unwind.regs import RSP
from unwind.unwinder import RawFrame, StopReason, Unwinder

from .snapshot import Snapshot
from .trace import Frame, StackTrace


_PC_KIND = itemgetter(0, 3, 4)  # RawFrame: pc, is_activation, method
_CFA = itemgetter(2)


class Pipeline:
    """Turns snapshots into symbolized stack traces, caching per build-id and per map."""

    def __init__(self, cache_dir: str | None = None, max_frames: int = 256) -> None:
        self.symbolizer = Symbolizer(cache_dir)
        self._tables = UnwindTableCache(cache_dir)
        self._max_frames = max_frames
        self._module_sets: LRU[str, ModuleSet] = LRU(64)  # maps text → ModuleSet
        self._no_table: set[tuple[str, int]] = set()
        self._unwinders: LRU[str, Unwinder] = LRU(64)  # maps text → Unwinder
        # (id of ModuleSet, pc, ...) → (that ModuleSet, frames); the set is kept to check the id
        self._frames: LRU[tuple[object, ...], tuple[ModuleSet, list[Frame]]] = LRU(1 << 16)
        self._by_pc: LRU[tuple[str, str | None, int], tuple[SymFrame, ...]] = LRU(1 << 16)
        # (id of ModuleSet, (pc, is_activation, method) per frame...) → (that set, frames)
        self._stacks: LRU[tuple[object, ...], tuple[ModuleSet, tuple[Frame, ...], bool]] = \
            LRU(4096)

    def modules(self, snap: Snapshot) -> ModuleSet:
        """The modules of the snapshot's process, parsed once per distinct memory map. A module
        whose recorded build-id no local file has gets its file from the locator (debuginfod's
        executable), so its unwind table and symbols come from the code that ran."""
        modules: ModuleSet | None = self._module_sets.get(snap.maps_text)
        if modules is None:
            modules = ModuleSet.from_maps(snap.maps, snap.pid, snap.build_ids,
                                          self.symbolizer.locator.find_executable)
            self._module_sets[snap.maps_text] = modules
        return modules

    def preload(self, paths: Iterable[str]) -> None:
        """Read the files' headers, find their debug files and load their unwind tables now,
        for processes that will map them: the first walk then finds them ready. `ubt leak`
        does this before the command runs, so the rules of the first cold paths reach the
        kernel within milliseconds, not after ~30-50 ms of ELF parsing (a program allocating
        in a tight loop from its start sends a snapshot per call until then). Unreadable files
        are skipped: the walk reports them as it would have."""
        for path in map(os.path.realpath, paths):  # as the kernel shows it in the maps
            try:
                build_id = open_image(path).build_id
            except (ElfFormatError, OSError):
                continue
            self._table(Module(path, path, build_id, 0, 0, 0))

    def _table(self, module: Module) -> UnwindTable | None:
        key = (module.file, module.start)
        if key in self._no_table:
            return None
        try:
            debug = self.symbolizer.debug_files(module).debug_path
            return self._tables.get(module.build_id, module.file, debug)
        except (ValueError, OSError):  # unreadable or corrupt: must not end the whole trace
            self._no_table.add(key)
            return None

    def unwind(self, snap: Snapshot) -> tuple[ModuleSet, tuple[RawFrame, ...], StopReason]:
        """Walk the snapshot's stack; frames carry absolute pcs only."""
        modules = self.modules(snap)
        result = self.unwinder(snap).unwind(snap.regs, snap.stack)
        return modules, result.frames, result.stop_reason

    def unwinder(self, snap: Snapshot) -> Unwinder:
        """The unwinder for the snapshot's memory map (one per distinct map, cached); its
        `lookup` gives the table and bias of a pc's module (`ubt leak` reads rules with it)."""
        unwinder = self._unwinders.get(snap.maps_text)
        if unwinder is None:
            unwinder = self._unwinders[snap.maps_text] = self._unwinder(self.modules(snap))
        return unwinder

    def _unwinder(self, modules: ModuleSet) -> Unwinder:
        """An unwinder for one memory map, its table per module looked up once."""
        by_module: dict[int, tuple[UnwindTable, int] | None] = {}

        def lookup(pc: int) -> tuple[UnwindTable, int] | None:
            module = modules.find(pc)
            if module is None:
                return None
            if module.start not in by_module:
                table = self._table(module)
                by_module[module.start] = None if table is None else (table, module.bias)
            return by_module[module.start]

        return Unwinder(lookup, self._max_frames)

    def trace(self, snap: Snapshot) -> StackTrace:
        """Unwind and symbolize one snapshot."""
        modules, raw_frames, stop = self.unwind(snap)
        # hits repeat the same paths: the frames of a whole stack are kept by its pcs
        # (built with C-level map/itemgetter: this runs for every hit)
        key = (id(modules), *map(_PC_KIND, raw_frames))
        cached = self._stacks.get(key)
        if cached is None or cached[0] is not modules:
            frames = self._symbolize_stack(modules, raw_frames)
            cached = self._stacks[key] = (modules, frames,
                                          any(f.module is None for f in frames))
        # the highest CFA (or, where the walk stopped, sp) the walk reached
        top = max(max(filter(None, map(_CFA, raw_frames)), default=0),
                  raw_frames[-1].sp if raw_frames else 0)
        used = top - snap.regs.get(RSP, 0)
        return StackTrace(cached[1], stop, max(used, 0), cached[2])

    def _symbolize_stack(self, modules: ModuleSet,
                         raw_frames: tuple[RawFrame, ...]) -> tuple[Frame, ...]:
        frames: list[Frame] = []
        for n, raw in enumerate(raw_frames):
            # A frame whose caller was interrupted (is_activation) is a signal trampoline: the
            # handler "returned" to its first instruction, so it is named at pc itself; pc - 1
            # is the padding glibc puts before __restore_rt for the unwinder's sake.
            trampoline = n > 0 and n + 1 < len(raw_frames) and raw_frames[n + 1].is_activation
            frames.extend(self.symbolize_frame(modules, raw, trampoline))
        return tuple(frames)

    def symbolize_frame(self, modules: ModuleSet, raw: RawFrame,
                        trampoline: bool = False) -> list[Frame]:
        """The frames (inlined ones first) for one unwound pc (cached: paths repeat)."""
        key = (id(modules), raw.pc, raw.is_activation, raw.method, trampoline)
        frames = self._frames.get(key)
        if frames is None or frames[0] is not modules:
            frames = self._frames[key] = (modules, self._symbolize_frame(modules, raw,
                                                                         trampoline))
        return frames[1]

    def _symbolize_frame(self, modules: ModuleSet, raw: RawFrame,
                         trampoline: bool) -> list[Frame]:
        method = raw.method.name.lower()
        module = modules.find(raw.pc)
        if module is None:
            return [Frame(raw.pc, None, None, None, None, None, None, None, None, None, False,
                          method, "unmapped")]
        lookup_pc = raw.pc if trampoline else raw.lookup_pc
        elf_addr = lookup_pc - module.bias
        # Offsets are printed from the pc itself, as gdb and eu-stack do, though the lookup
        # used pc - 1 for return addresses.
        back = raw.pc - lookup_pc
        key = (module.file, module.build_id, elf_addr)
        syms = self._by_pc.get(key)
        if syms is None:  # hits repeat the same paths: one symbolizer call per distinct pc
            syms = self._by_pc[key] = self.symbolizer.symbolize(module, elf_addr)
        out = []
        for sym in syms:
            out.append(Frame(
                pc=raw.pc, module=module.path, build_id=module.build_id,
                offset=raw.pc - module.bias, function=sym.function,
                func_offset=None if sym.func_offset is None else sym.func_offset + back,
                func_size=sym.func_size, file=sym.file, line=sym.line, column=sym.column,
                inlined=sym.inlined, method="inline" if sym.inlined else method,
                reason=None if sym.reason is None else sym.reason.name.lower()))
        return out

