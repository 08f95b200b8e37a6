"""`ubt leak`'s stacks, named with the memory map they were captured in.

A stack is return addresses; naming them (function, file:line, module) needs the mappings of
the moment it was captured. By the report a library may be dlclose'd, another one mapped where
it was, the process gone, or another program in it (exec). The kernel counts map generations
(leak.c: ld.so's `_dl_debug_state` moves the count on before and after every dlopen and
dlclose, its entry point at every exec) and every snapshot and stack carries its generation;
code is mapped or unmapped only between generations. So:

- `GenMaps` keeps one reading of /proc/PID/maps per generation, taken soon enough that no
  other code can be where the generation had some (else the snapshot is unwound with it all
  the same, and counted: `late`). Not seen: a reading between an exec and the new program's
  first instruction;
- `StackBook` knows what every stack id is: a stack walked here keeps the reading it was
  unwound with; one walked in the kernel is named with its generation's reading (each of its
  pcs had a rule learnt from a snapshot of that generation). `identity` is what a report
  groups by: the same code at the same offsets of the same files is one stack, whatever the
  generation or the addresses it had then.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from bpf_progs.leak_capture import STACK_DEEP
from symbolizer.module import Module
from unwind.memory import StackBytes
from unwind.unwinder import Method, RawFrame, StopReason

from .leak_alloc import Allocator
from .maps_tracker import MapsTracker, MapsVersion
from .pipeline import Pipeline
from .snapshot import Snapshot
from .trace import Frame, StackTrace

#: (allocator index, pcs, stop, the maps text it is named with)
Kept = tuple[int, tuple[int, ...], StopReason, str]


class GenMaps:
    """A reading of one process's maps per map generation."""

    def __init__(self, tracker: MapsTracker, generation: Callable[[], int]) -> None:
        """:param generation: the kernel's map generation now."""
        self.tracker = tracker
        self.generation = generation
        self._by_gen: dict[int, MapsVersion] = {}
        self._texts: dict[str, MapsVersion] = {}   # one object per distinct text

    def reading(self, pid: int, gen: int, pc: int) -> tuple[MapsVersion | None, bool]:
        """The maps to unwind a snapshot of generation `gen` at `pc` with, and whether they
        were read only after `gen` ended (late: they may show other code than the snapshot's).
        None when the process was gone before anything was read."""
        known = self._by_gen.get(gen)
        if known is not None and known.covers(pc):
            return known, False
        return self.reread(pid, gen)

    def reread(self, pid: int, gen: int) -> tuple[MapsVersion | None, bool]:
        """Read the maps now (the last reading if the process is gone), and say if they are
        late for generation `gen`: read 3 or more steps after it. A dlopen or a dlclose is two
        steps (before and after the change), an exec three at once: other code where some was
        (a dlclose, then a dlopen; an exec) is mapped 3 steps on at the earliest. Fewer steps
        only add or remove code, which cannot make a walk silently wrong (a pc whose code is
        gone stops it). A reading that is not late is kept for `gen` (one taken in `gen`
        itself replaces an earlier one)."""
        fresh = self.tracker.refresh(pid) or self.tracker.latest(pid)
        if fresh is None:
            return self._by_gen.get(gen), False
        fresh = self._texts.setdefault(fresh.text, fresh)
        now = self.generation()
        if now >= gen + 3:
            return fresh, True
        if now == gen or gen not in self._by_gen:
            self._by_gen[gen] = fresh
        return fresh, False

    def text(self, gen: int) -> str | None:
        """The maps text of generation `gen`, if a reading was taken in it."""
        known = self._by_gen.get(gen)
        return known.text if known is not None else None


class StackBook:
    """Stack id → what the stack is, its frames, and what a report groups it by."""

    def __init__(self, pipeline: Pipeline, gens: GenMaps, pid: int,
                 kernel_stack: Callable[[int], tuple[int, tuple[int, ...], int, int] | None],
                 allocators: Sequence[Allocator] = ()) -> None:
        """:param kernel_stack: the kernel's record of a stack id (allocator, pcs, flags,
        generation), None if it kept none.
        :param allocators: the probed functions, by index: each stack's first frame."""
        self.pipeline = pipeline
        self.gens = gens
        self.pid = pid
        self.kernel_stack = kernel_stack
        self.allocators = allocators
        self._kept: dict[int, Kept] = {}
        self._identities: dict[int, Hashable] = {}

    def add_walked(self, stack_id: int, alloc: int, pcs: tuple[int, ...], stop: StopReason,
                   maps_text: str) -> None:
        """A stack unwound here, with the maps it was unwound with."""
        self._kept[stack_id] = (alloc, pcs, stop, maps_text)

    def kept(self, stack_id: int) -> Kept | None:
        """The stack, from here or from the kernel; None when the full stacks map did not
        keep it."""
        kept = self._kept.get(stack_id)
        if kept is not None:
            return kept
        found = self.kernel_stack(stack_id)
        if found is None:
            return None
        alloc, pcs, flags, gen = found
        text = self.gens.text(gen)
        if text is None:  # no reading in its generation (cannot be: its rules came from one)
            latest = self.gens.tracker.latest(self.pid)
            text = latest.text if latest is not None else ""
        stop = StopReason.MAX_DEPTH if flags & STACK_DEEP else StopReason.END_OF_STACK
        kept = self._kept[stack_id] = (alloc, pcs, stop, text)
        return kept

    def identity(self, stack_id: int) -> Hashable:
        """The allocator, and per pc its module's path and build-id and the ELF address (the
        address itself where no module held it): equal for the same stack in two generations,
        different for other code at the same addresses. The id itself when the stack is not
        known."""
        identity = self._identities.get(stack_id)
        if identity is None:
            kept = self.kept(stack_id)
            if kept is None:
                return stack_id
            alloc, pcs, stop, text = kept
            modules = self.pipeline.modules(self._snapshot(text))
            where = []
            for pc in pcs:
                module = modules.find(pc)
                where.append((module.path, module.build_id, pc - module.bias) if module
                             else (None, None, pc))
            identity = self._identities[stack_id] = (alloc, stop, tuple(where))
        return identity

    def frames(self, stack_id: int) -> StackTrace | None:
        """The allocator's label, then the callers, named with the stack's maps; None when
        the stack was walked in the kernel but not kept (the stacks map was full)."""
        kept = self.kept(stack_id)
        if kept is None:
            return None
        alloc, pcs, stop, text = kept
        modules = self.pipeline.modules(self._snapshot(text))
        frames = [self._allocator_frame(alloc, modules.modules)]
        for pc in pcs:
            raw = RawFrame(pc, 0, None, False, Method.CFI)
            frames.extend(self.pipeline.symbolize_frame(modules, raw))
        return StackTrace(tuple(frames), stop)

    def _allocator_frame(self, index: int, modules: Sequence[Module]) -> Frame:
        a = self.allocators[index]
        module = next((m for m in modules if m.file == a.path or m.path == a.path), None)
        pc = a.elf_addr + module.bias if module else 0
        return Frame(pc, a.path, module.build_id if module else None, a.elf_addr, a.label, 0,
                     None, None, None, None, False, "initial")

    def _snapshot(self, maps_text: str) -> Snapshot:
        return Snapshot(self.pid, self.pid, "", {}, StackBytes(0, b""), maps_text, 0)
