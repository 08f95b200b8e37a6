"""`ubt process BINARY FUNC...`: a full backtrace at every hit of a uprobe.

Three stages, so a slow walk never makes the kernel drop events:
1. the drain thread polls the BPF ring buffer, copies each record and reads the process's maps
   at its first hit (`MapsTracker`), then queues records in batches;
2. the main thread turns records into `Snapshot`s and runs the shared pipeline (unwind,
   symbolize; unwind rules cached per pc, symbolized frames per stack of pcs);
3. output per hit, or counts per distinct stack printed at the end (`--aggregate`, `folded`).
Ctrl-C at any point prints what was gathered and detaches every probe.
"""
from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from bpf_progs.capture import ProbePoint, ProbeValues, RawHit, StackCapture
from bpf_progs.trap_cost import cheap_entries
from unwind.unwinder import CallerFrame, StopReason

from . import var_probes
from .bcc_env import kernel_cflags, load_capture, prepare
from .errors import UbtError
from .hit_render import HitOutput
from .launcher import Launcher
from .maps_tracker import MapsTracker
from .pipeline import Pipeline
from .probes import AttachPoint, resolve_binary, resolve_probes
from .probespec import parse_probe
from .snapshot import Snapshot
from .trace import Hit
from .var_plan import values_at

#: A hit's `--print` values as (label, printed value).
#: (the frame 1 of the hit's stack, computed on demand for entry values).
Values = Callable[[RawHit, Callable[[], CallerFrame | None]], tuple[tuple[str, str], ...]]
#: Records per queue item: one queue operation (two lock round trips) per batch, not per record.
BATCH = 64


@dataclass(frozen=True, slots=True)
class ProcessOptions:
    """What `ubt process` was asked to do (the parsed command line)."""

    binary: str
    probes: tuple[str, ...]
    command: str | None = None
    pid: int | None = None
    max_hits: int | None = None
    duration: float | None = None
    aggregate: bool = False
    fmt: str = "text"
    stack_size: int = 32 * 1024
    prints: tuple[str, ...] = ()


class _Stats:
    """Counts reported on stderr at the end: never hide lost events or short stacks."""

    def __init__(self) -> None:
        self.hits = 0
        self.truncated = 0
        self.incomplete = 0
        self.no_maps = 0


def run(opts: ProcessOptions, out: TextIO = sys.stdout) -> int:
    """Trace until the hit limit, the duration, the command's exit or Ctrl-C; 0 on success."""
    prepare("ubt process")
    binary = resolve_binary(opts.binary)
    values: Values | None = None
    wanted: ProbeValues | None = None
    if opts.prints:             # probes with values: lines or after prologues (var_probes)
        value_probes, wanted = var_probes.resolve_all(binary, opts.probes, opts.prints)
        points = [vp.point for vp in value_probes]
        plans = [vp.plan for vp in value_probes]
        values = lambda raw, caller: tuple(values_at(plans[raw.probe_id], raw.vars, raw.regs,
                                                     raw.stack, caller))
    else:
        points = resolve_probes(binary, [parse_probe(p) for p in opts.probes])
    tracker = MapsTracker()
    launcher = Launcher(opts.command, tracker) if opts.command else None
    pid_filter = launcher.pid if launcher else opts.pid
    if opts.pid is not None and not os.path.exists(f"/proc/{opts.pid}"):
        raise UbtError(f"process {opts.pid} does not exist")
    # Bounded: when unwinding falls behind, the drain blocks, the ring buffer fills and the
    # kernel counts what it drops, instead of this process growing without limit.
    # Records travel in batches (one queue operation per BATCH records, not per record).
    records: queue.Queue[list[RawHit] | None] = queue.Queue(maxsize=4096 // BATCH)
    batch: list[RawHit] = []

    stop = threading.Event()

    def on_hit(raw: RawHit) -> None:  # drain thread: keep it short
        if launcher is not None and not launcher.runs_command_at(raw.pid, raw.time_ns):
            return  # ubt's fork before exec, or the sh -c wrapper: not the user's command
        tracker.for_hit(raw.pid, raw.regs_pc)
        batch.append(raw)
        if len(batch) >= BATCH:
            _put(records, batch.copy(), stop)
            batch.clear()

    def flush(force: bool = False) -> None:  # drain thread, after each poll
        # A short batch is queued only when no batch waits (or at the end): while the walker is
        # behind, batches fill up, so the bounded queue holds whole batches.
        if batch and (force or records.empty()):
            _put(records, batch.copy(), stop)
            batch.clear()

    probe_points = _probe_points(points, cheap=not opts.prints)
    capture = load_capture(lambda: StackCapture(probe_points, pid_filter, opts.stack_size,
                                                on_hit, kernel_cflags, values=wanted),
                           launcher.kill if launcher else lambda: None)
    stats = _Stats()
    try:
        _start_line(points, binary, opts)
        if launcher:
            launcher.on_new_process = capture.add_process  # the command's children too
            launcher.on_process_exit = capture.remove_process
            launcher.release()
        _trace(opts, capture, records, flush, tracker, launcher, stats, out, stop, values)
    finally:
        try:
            capture.close()
        finally:
            if launcher:
                launcher.kill()
    if opts.pid is not None and not os.path.exists(f"/proc/{opts.pid}"):
        print(f"ubt: process {opts.pid} exited", file=sys.stderr)
    _end_line(stats, capture, launcher)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # _trace ignored it for cleanup
    return 0


def _probe_points(points: list[AttachPoint], cheap: bool) -> list[ProbePoint]:
    """The capture's probes. With `cheap`, a function entry that starts with a flags-only
    compare is attached on the branch after it, where the kernel emulates the trap instead of
    single-stepping (`trap_cost`); its hits still show the entry address. (`--print` probes are
    placed by var_probes, after the prologue, and keep their place.)"""
    entries = [p for p in points if cheap and not p.offset and not p.is_return]
    shifts: dict[AttachPoint, int] = {}
    for path in {p.path for p in entries}:
        mine = [p for p in entries if p.path == path]
        places = cheap_entries(path, [p.elf_addr for p in mine])
        shifts.update((p, place - p.elf_addr) for p, place in zip(mine, places))
    return [ProbePoint(p.path, p.elf_addr, p.is_return, p.label, shifts.get(p, 0))
            for p in points]


def _start_line(points: list[AttachPoint], binary: str, opts: ProcessOptions) -> None:
    where = sorted({os.path.basename(p.path) for p in points})
    what = ", ".join(sorted({p.label for p in points}))
    target = f" in {opts.command!r}" if opts.command else (
        f" in pid {opts.pid}" if opts.pid else "")
    print(f"Tracing {len(points)} probe{'s' if len(points) != 1 else ''} ({what}) in "
          f"{', '.join(where)} of {binary}{target}... Hit Ctrl-C to end.",
          file=sys.stderr, flush=True)


def _trace(opts: ProcessOptions, capture: StackCapture,
           records: queue.Queue[list[RawHit] | None], flush: Callable[..., None],
           tracker: MapsTracker, launcher: Launcher | None, stats: _Stats, out: TextIO,
           stop: threading.Event, values: Values | None = None) -> None:
    if launcher is not None:
        alive: Callable[[], bool] = lambda: launcher.running
    elif opts.pid is not None:
        alive = lambda: os.path.exists(f"/proc/{opts.pid}")
    else:
        alive = lambda: True
    drain = threading.Thread(target=_drain, args=(capture, records, flush, stop, alive),
                             name="ubt-drain", daemon=True)
    pipeline = Pipeline()
    output = HitOutput(opts.fmt, opts.aggregate, out)
    deadline = time.monotonic() + opts.duration if opts.duration else None
    # The first Ctrl-C only sets a flag, checked between hits: a hit is printed and counted
    # whole or not at all (a KeyboardInterrupt could land between the two). A second one, in
    # case a walk takes long (a first DWARF index build), interrupts at once.
    interrupted = threading.Event()

    def on_sigint(_signum: int, _frame: object) -> None:
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_sigint)
    drain.start()
    try:
        while not interrupted.is_set() and (opts.max_hits is None
                                            or stats.hits < opts.max_hits):
            timeout = 0.2 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                raws = records.get(timeout=min(timeout, 0.2))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                continue
            if raws is None:
                break  # the drain ended: the command exited and the buffer is empty
            if deadline is not None and time.monotonic() >= deadline:
                break  # --duration: also when the walker is behind and the queue never empties
            for raw in raws:
                if interrupted.is_set() or (opts.max_hits is not None
                                            and stats.hits >= opts.max_hits) \
                        or (deadline is not None and time.monotonic() >= deadline):
                    break
                _walk(raw, capture, tracker, pipeline, stats, output, values)
            output.flush()
    except KeyboardInterrupt:
        pass  # the second Ctrl-C
    finally:
        stop.set()
        # From here to the end line, Ctrl-C changes nothing: the cleanup is short, and an
        # interrupted one could lose the aggregate or leave the command running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        drain.join()  # before the ring buffer is freed under its poll (each poll <= 100 ms)
        output.finish()


def _walk(raw: RawHit, capture: StackCapture, tracker: MapsTracker, pipeline: Pipeline,
          stats: _Stats, output: HitOutput, values: Values | None = None) -> None:
    """Unwind and symbolize one record; count it (aggregate, folded) or print it."""
    hit = _resolve(raw, tracker, pipeline, capture, stats, values)
    if hit is None:
        return
    stats.hits += 1
    output.add(hit)


def _drain(capture: StackCapture, records: queue.Queue[list[RawHit] | None],
           flush: Callable[..., None], stop: threading.Event,
           target_alive: Callable[[], bool]) -> None:
    """Poll the ring buffer until told to stop, or the target (`-c` command, `-p` process) is
    gone and nothing is left to read."""
    try:
        while not stop.is_set():
            got = capture.poll(100)
            flush()
            if got == 0 and not target_alive() and capture.poll(0) == 0:
                break
        flush(force=True)
    finally:
        _put(records, None, stop, always=True)


def _put(records: queue.Queue[list[RawHit] | None], item: list[RawHit] | None,
         stop: threading.Event,
         always: bool = False) -> None:
    """Queue `item`, blocking while the walker is behind (back-pressure), but never after the
    walker has stopped: then the item is dropped (or, `always`, dropped only if still full)."""
    while not stop.is_set():
        try:
            records.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
    if always:
        try:
            records.put_nowait(item)
        except queue.Full:
            pass


def _resolve(raw: RawHit, tracker: MapsTracker, pipeline: Pipeline, capture: StackCapture,
             stats: _Stats, values: Values | None = None) -> Hit | None:
    maps = tracker.for_hit(raw.pid, raw.regs_pc)
    if maps is None:
        stats.no_maps += 1
        return None
    snap = Snapshot(raw.pid, raw.tid, raw.comm, raw.regs, raw.stack, maps.text, raw.time_ns)
    trace = pipeline.trace(snap)
    if trace.unmapped:
        # a return address outside the maps read so far: a dlopen since; read them again
        fresh = tracker.refresh(raw.pid) or tracker.latest(raw.pid)  # alive, or read at exit
        if fresh is not None and fresh.text != maps.text:
            snap = Snapshot(raw.pid, raw.tid, raw.comm, raw.regs, raw.stack, fresh.text,
                            raw.time_ns)
            trace = pipeline.trace(snap)
    # truncated: the copy stopped short of the stack's end and the walk needed more of it
    truncated = raw.truncated and trace.stop_reason is StopReason.MEMORY_FAULT
    if truncated:
        stats.truncated += 1
    if not trace.complete:
        stats.incomplete += 1
    capture.learn(raw.probe_id, trace.stack_used, trace.complete, raw.truncated)
    return Hit(raw.pid, raw.tid, raw.comm, raw.time_ns, capture.probes[raw.probe_id].label,
               trace, truncated,
               values(raw, lambda: pipeline.unwinder(snap).caller(raw.regs, raw.stack))
               if values is not None else ())


def _end_line(stats: _Stats, capture: StackCapture, launcher: Launcher | None) -> None:
    parts = [f"{stats.hits} hit{'s' if stats.hits != 1 else ''}",
             f"{capture.lost} lost event{'s' if capture.lost != 1 else ''}",
             f"{stats.truncated} truncated stack{'s' if stats.truncated != 1 else ''}"]
    if stats.incomplete:
        parts.append(f"{stats.incomplete} stopped before the outermost frame")
    if stats.no_maps:
        parts.append(f"{stats.no_maps} dropped: process gone before its maps were read")
    if launcher is not None and launcher.untraced:
        parts.append(f"{launcher.untraced} of the command's processes not traced "
                     f"({launcher.untraced_reason})")
    print("ubt: " + ", ".join(parts), file=sys.stderr)
