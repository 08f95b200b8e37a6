"""`ubt leak [-p PID | -c CMD] [interval [count]]`: outstanding allocations by stack.

The kernel tracks every live allocation and walks its stack with rules learnt here (see
bpf_progs/leak.c), so allocations that are freed soon, and paths seen before, cost no work in
this process. This loop only unwinds the snapshots of new paths (`Learner`), and reads the
allocation map for a report every `interval` seconds and at the end: when the traced process
exits (for `-c` its allocations are all still in the map then: the at-exit report), when
`count` reports were printed, or at Ctrl-C. `--older` hides allocations younger than that in
reports of a live process; at the end of a process that exited, everything it left is shown.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from bpf_progs.leak_capture import PENDING, STACK_DEEP, LeakCapture, LeakSnapshot
from unwind.unwinder import StopReason

from . import leak_report, leak_rules
from .leak_regions import Regions, merged
from .bcc_env import kernel_cflags, load_capture, prepare
from .errors import UbtError
from .launcher import Launcher
from .leak_alloc import (FDS, MEMORY, Allocator, command_target, find_library,
                         generation_probes, library_allocators, named_allocators, pid_target,
                         probes_for)
from .leak_stacks import GenMaps, StackBook
from .maps_tracker import MapsTracker
from .pipeline import Pipeline
from .snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class LeakOptions:
    """What `ubt leak` was asked to do (the parsed command line)."""

    command: str | None = None
    pid: int | None = None
    interval: float | None = None
    count: int | None = None
    older_ms: int = 500
    min_size: int = 0
    max_size: int = 0
    top: int = 10
    sort: str = "bytes"
    sample_rate: int = 1
    lib: str = "libc.so.6"
    allocs: tuple[str, ...] = ()
    frees: tuple[str, ...] = ()
    fd: bool = False
    fmt: str = "text"
    max_allocs: int = 1 << 20


class Learner:
    """Unwinds snapshots of cold paths: resolves their pending ids and teaches the kernel."""

    def __init__(self, pid: int, tracker: MapsTracker, launcher: Launcher | None,
                 allocators: list[Allocator]) -> None:
        self.pid = pid
        self.pipeline = Pipeline()
        self.tracker = tracker
        self.launcher = launcher
        self.capture: LeakCapture | None = None
        self.gens = GenMaps(tracker, self._generation)
        self.stacks = StackBook(self.pipeline, self.gens, pid, self._kernel_stack, allocators)
        self.resolved: dict[int, int] = {}          # snapshot seq → stack id
        self._settled = 0   # seqs up to this were resolved before the last report
        self.last_seq = 0   # the newest snapshot read
        self.regions = Regions()   # mmap'd ranges (their calls arrive as events)
        self.snapshots = self.truncated = self.incomplete = self.no_maps = self.late_maps = 0

    def on_snapshot(self, s: LeakSnapshot) -> None:
        """Walk one snapshot (called while polling the ring buffer)."""
        self.last_seq = max(self.last_seq, s.seq)
        if self.launcher is not None and not self.launcher.runs_command_at(s.pid, s.time_ns):
            return  # ubt's fork or the sh -c wrapper: not the command, nothing to learn
        self.snapshots += 1
        maps, late = self.gens.reading(s.pid, s.gen, s.regs[16])
        if maps is None:
            self.no_maps += 1
            self.resolved[s.seq] = leak_report.NO_MAPS_STACK
            return
        walked = leak_rules.walk(self.pipeline, self._snapshot(s, maps.text))
        if not all(maps.covers(pc) for pc in walked.pcs):  # code mapped without ld.so?
            fresh, late = self.gens.reread(s.pid, s.gen)
            if fresh is not None and fresh.text != maps.text:
                maps = fresh
                walked = leak_rules.walk(self.pipeline, self._snapshot(s, maps.text))
        self.late_maps += late
        stack_id = leak_rules.stack_hash(s.alloc, walked.pcs, walked.flags, s.gen)
        self.resolved[s.seq] = stack_id
        self.stacks.add_walked(stack_id, s.alloc, walked.pcs, walked.stop, maps.text)
        if walked.stop is not StopReason.END_OF_STACK and not walked.flags & STACK_DEEP:
            self.incomplete += 1
            self.truncated += s.truncated and walked.stop is StopReason.MEMORY_FAULT
        if self.capture is not None:
            self.capture.add_rules(walked.rules, s.gen)
            self.capture.add_stack(stack_id, s.alloc, walked.pcs, walked.flags, s.gen)

    def _generation(self) -> int:
        return self.capture.generation() if self.capture is not None else 0

    def _kernel_stack(self, stack_id: int) -> tuple[int, tuple[int, ...], int, int] | None:
        return self.capture.stack(stack_id) if self.capture is not None else None

    def prune(self, stack_ids: Iterable[int]) -> None:
        """Forget the resolved snapshots no live allocation (`stack_ids`: all of them, read
        for a report) uses any more. Only those resolved before the previous report: the
        kernel records an allocation's pending id just after sending its snapshot, so one
        resolved since may not be in the map yet."""
        used = {sid & ~PENDING for sid in stack_ids if sid & PENDING}
        settled = self._settled
        self._settled = max(self.resolved, default=settled)
        self.resolved = {seq: sid for seq, sid in self.resolved.items()
                         if seq > settled or seq in used}

    @staticmethod
    def _snapshot(s: LeakSnapshot, maps_text: str) -> Snapshot:
        return Snapshot(s.pid, s.tid, "", s.regs, s.stack, maps_text, s.time_ns)


def check(opts: LeakOptions) -> None:
    """Refuse numbers that make no sense (UbtError: one line), before anything is loaded."""
    if opts.interval is not None and not opts.interval > 0:
        raise UbtError(f"the interval must be more than 0 seconds, not {opts.interval:g}")
    if opts.count is not None and opts.count < 1:
        raise UbtError(f"the count of reports must be at least 1, not {opts.count}")
    for value, what in ((opts.older_ms, "--older"), (opts.min_size, "-z/--min-size"),
                        (opts.max_size, "-Z/--max-size")):
        if value < 0:
            raise UbtError(f"{what} cannot be negative ({value})")
    if opts.max_size and opts.min_size > opts.max_size:
        raise UbtError(f"-z {opts.min_size} is more than -Z {opts.max_size}: nothing would be "
                       "tracked")
    if opts.top < 1:
        raise UbtError(f"--top must be at least 1, not {opts.top}")
    if opts.sample_rate < 1:
        raise UbtError(f"--sample-rate must be at least 1, not {opts.sample_rate}")


def run(opts: LeakOptions, out: TextIO = sys.stdout) -> int:
    """Trace until the target exits, `count` reports, or Ctrl-C; 0 on success."""
    check(opts)
    prepare("ubt leak")
    if opts.command is None and opts.pid is None:
        raise UbtError("which process? give -p PID or -c CMD")
    target = command_target(opts.command) if opts.command else pid_target(opts.pid or 0)
    if opts.allocs or opts.frees:
        allocators = named_allocators(list(opts.allocs), list(opts.frees), target)
    else:
        allocators = library_allocators(find_library(opts.lib, target),
                                        FDS if opts.fd else MEMORY)
    tracker = MapsTracker()
    launcher = Launcher(opts.command, tracker) if opts.command else None
    pid = launcher.pid if launcher else (opts.pid or 0)
    learner = Learner(pid, tracker, launcher, allocators)
    probes = probes_for(allocators, opts.fd)
    generations = generation_probes(target)
    if len(generations) < 2:
        print(f"ubt: no dynamic loader with _dl_debug_state in {target.description}: after a "
              "dlclose, code mapped where a library was may be walked with rules learnt for it",
              file=sys.stderr)
    probes += generations
    capture = load_capture(lambda: LeakCapture(probes, pid, learner.on_snapshot, kernel_cflags,
                                               opts.max_allocs, (opts.min_size, opts.max_size),
                                               opts.sample_rate,
                                               on_region=learner.regions.apply),
                           launcher.kill if launcher else lambda: None)
    learner.capture = capture
    names = ", ".join(dict.fromkeys(a.label for a in allocators))
    sampled = f" (1 in {opts.sample_rate} allocations, at random)" if opts.sample_rate > 1 else ""
    print(f"Tracing {names} in {target.description}{sampled}... Hit Ctrl-C to end.",
          file=sys.stderr, flush=True)
    try:
        if launcher:
            learner.pipeline.preload(target.files)
            launcher.release()
        _loop(opts, capture, learner, launcher, allocators, out)
    finally:
        capture.close()
        if launcher:
            launcher.kill()
    _end_line(capture, learner)
    return 0


def _loop(opts: LeakOptions, capture: LeakCapture, learner: Learner, launcher: Launcher | None,
          allocators: list[Allocator], out: TextIO) -> None:
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    reports = 0
    next_at = time.monotonic() + opts.interval if opts.interval else None
    try:
        while not interrupted.is_set():
            capture.poll(100)
            alive = launcher.running if launcher else _alive(learner.pid)
            if not alive:
                if launcher is None:
                    print(f"ubt: process {learner.pid} exited", file=sys.stderr)
                _report(opts, capture, learner, launcher, allocators, out, reports + 1,
                        at_exit=True)
                return
            if next_at is not None and time.monotonic() >= next_at:
                reports += 1
                _report(opts, capture, learner, launcher, allocators, out, reports,
                        at_exit=False)
                if opts.count is not None and reports >= opts.count:
                    return
                next_at += opts.interval or 0
        _report(opts, capture, learner, launcher, allocators, out, reports + 1, at_exit=False)
    finally:
        signal.signal(signal.SIGINT, previous)


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its parent has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _report(opts: LeakOptions, capture: LeakCapture, learner: Learner,
            launcher: Launcher | None, allocators: list[Allocator], out: TextIO,
            number: int, at_exit: bool) -> None:
    """Print report `number` (counted from 1) of what is outstanding now."""
    sent = capture.last_seq()   # every snapshot sent so far, unwound before the map is read
    while learner.last_seq < sent and capture.poll(0):
        pass
    capture.poll(0)   # the region events sent so far too
    live = merged(capture.allocations(), learner.regions.live())
    since = launcher.image_since_ns if launcher else 0  # what an exec replaced is gone
    if since is None:
        since = 1 << 64  # the command never started: nothing it allocated
    older = 0 if at_exit else opts.older_ms * 1_000_000
    sel = leak_report.Selection(time.monotonic_ns(), older, since)
    # At exit every snapshot up to `sent` is in the ring or was lost (the program that sends one
    # records its allocation after it), and the ring is drained: one not read was lost. While
    # the target runs, a snapshot numbered before `sent` may still be on its way.
    read_to = max(learner.last_seq, sent) if at_exit else learner.last_seq
    totals = leak_report.aggregate(live, learner.resolved, sel, opts.sort, read_to,
                                   capture.counters()["lost"] > 0)
    totals = leak_report.combine(totals, learner.stacks.identity, opts.sort)
    learner.prune(live.stack_ids)
    frames = learner.stacks.frames
    if opts.fmt == "json":
        head = {"time": round(time.time(), 3), "at_exit": at_exit,
                "older_ms": older // 1_000_000, "sample_rate": opts.sample_rate,
                **{key: n for key, n, _, _ in _counts(capture, learner)}}
        out.write(leak_report.render_json(totals, opts.top, frames, number, head))
    else:
        when = "at exit" if at_exit else time.strftime("%H:%M:%S")
        age = f" older than {opts.older_ms} ms" if older else ""
        sampled = f", sampled 1 in {opts.sample_rate}" if opts.sample_rate > 1 else ""
        title = (f"[{when}] outstanding {'descriptors' if opts.fd else 'allocations'}{age}"
                 f"{sampled}")
        out.write(leak_report.render_text(totals, opts.top, frames, title, opts.fd))
    out.flush()


def _counts(capture: LeakCapture, learner: Learner) -> list[tuple[str, int, str, bool]]:
    """Everything walked, lost or cut so far: (JSON key, number, words, always shown on the
    end line: else only when not 0). The end line and every JSON report header show them."""
    c = capture.counters()
    return [
        ("walked_in_kernel", c["warm"], "stacks walked in the kernel", True),
        ("unwound_here", learner.snapshots, "snapshots unwound here", True),
        ("lost_snapshots", c["lost"], "lost snapshots", True),
        ("allocs_not_tracked", c["allocs_full"], "allocations not tracked (map full)", True),
        ("stacks_not_kept", c["stacks_full"], "stacks not kept (map full)", True),
        ("rules_not_kept", c["rules_full"], "unwind rules not kept (map full)", True),
        ("truncated_stacks", learner.truncated, "truncated stacks", True),
        ("cut_at_64_frames", c["deep"], "stacks cut at 64 frames", True),
        ("incomplete_stacks", learner.incomplete, "stopped before the outermost frame", False),
        ("nested_calls", c["nested"], "allocator calls inside another one (not tracked)",
         False),
        ("regions_lost", c["regions_lost"], "mmap/munmap/mremap calls lost (ring buffer "
                                            "full): mapped bytes may be wrong", False),
        ("ranges_cut", c["range_cut"], "close_range calls over more than 4096 tracked fds "
                                       "(the rest still counted open)", False),
        ("dropped_no_maps", learner.no_maps, "dropped: process gone before its maps were read",
         False),
        ("late_maps", learner.late_maps, "unwound with a memory map read after it changed "
                                         "(dlopen, dlclose, exec): may be wrong", False)]


def _end_line(capture: LeakCapture, learner: Learner) -> None:
    """Counts on stderr: what was walked where, and everything lost or cut, never hidden."""
    shown = [f"{n} {what}" for _, n, what, always in _counts(capture, learner) if always or n]
    print("ubt: " + ", ".join(shown), file=sys.stderr)
