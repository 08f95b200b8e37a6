"""`ubt leak` reports: live allocations grouped by stack, the top ones printed.

`aggregate` turns the kernel's allocation map (columns of a batch read) into totals per stack:
bytes, count, oldest. An allocation made on a cold path carries a pending id until its snapshot
is unwound; those resolve through the learner's table, and the ones whose stack is not known
are totalled apart by why (`UNKNOWN`: snapshot lost, dropped, or not read yet), never dropped.
`combine` adds up the ids of one stack in several map generations. `render_text` and
`render_json` print the top N (JSON: a header line per report, then one object per stack,
`{"report", "stack", "bytes", "count", "oldest_ms"}`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from typing import NamedTuple

from bpf_progs.leak_capture import PENDING, LiveAllocations

from .render import frame_json, text_frames
from .trace import StackTrace

#: The "stacks" of allocations whose stack is not known (real stack ids are odd), and why.
UNKNOWN_STACK = 0      # no snapshot: the ring buffer was full, or its buffers busy (leak.c stack_id)
NO_MAPS_STACK = 2      # the snapshot was dropped: the process was gone before its maps were read
UNREAD_STACK = 4       # the snapshot was not read yet (or not lost: counted in no other way)
UNKNOWN = {UNKNOWN_STACK: "its snapshot was lost (ring buffer full, or buffers held by a "
                          "preempted call)",
           NO_MAPS_STACK: "its snapshot was dropped (the process was gone before its memory "
                          "map was read)",
           UNREAD_STACK: "its snapshot was not read yet"}


class StackTotal(NamedTuple):
    """Outstanding allocations of one stack."""

    stack_id: int
    bytes: int
    allocations: int
    oldest_ns: int


class Selection(NamedTuple):
    """Which allocations a report counts.

    :param older_ns: only allocations at least this old (0: all).
    :param since_ns: only allocations made at or after this time (a `-c` command's exec:
        its earlier ones belong to ubt's fork or the shell).
    """

    now_ns: int
    older_ns: int
    since_ns: int


def aggregate(live: LiveAllocations, resolved: Mapping[int, int], sel: Selection,
              sort: str = "bytes", last_seq: int = 0, lost: bool = True) -> list[StackTotal]:
    """Totals per stack, largest first (by bytes, or by count with `sort="count"`).

    :param last_seq: the newest snapshot read so far: a pending id past it is not read yet.
    :param lost: some snapshots were lost: an unresolved one up to `last_seq` is one of them.
    """
    latest = sel.now_ns - sel.older_ns
    totals: dict[int, list[int]] = {}
    for size, time_ns, stack_id in zip(live.sizes, live.times, live.stack_ids):
        if time_ns > latest or time_ns < sel.since_ns:
            continue
        if stack_id & PENDING:
            seq = stack_id & ~PENDING
            stack_id = resolved.get(seq, UNKNOWN_STACK if lost and seq <= last_seq
                                    else UNREAD_STACK)
        t = totals.get(stack_id)
        if t is None:
            totals[stack_id] = [size, 1, time_ns]
        else:
            t[0] += size
            t[1] += 1
            if time_ns < t[2]:
                t[2] = time_ns
    out = [StackTotal(sid, b, c, sel.now_ns - oldest) for sid, (b, c, oldest) in totals.items()]
    return _sorted(out, sort)


def combine(totals: list[StackTotal], identity: Callable[[int], Hashable],
            sort: str = "bytes") -> list[StackTotal]:
    """Totals of stack ids with one `identity` (one stack in several map generations) added
    up, under the id of the largest; sorted as `aggregate` sorts."""
    groups: dict[Hashable, StackTotal] = {}
    for t in totals:
        key = identity(t.stack_id)
        first = groups.get(key)
        groups[key] = t if first is None else StackTotal(
            first.stack_id, first.bytes + t.bytes, first.allocations + t.allocations,
            max(first.oldest_ns, t.oldest_ns))
    return _sorted(list(groups.values()), sort)


def _sorted(totals: list[StackTotal], sort: str) -> list[StackTotal]:
    """Largest first, by bytes (then count), or by count (then bytes)."""
    key = (lambda t: (t.allocations, t.bytes)) if sort == "count" \
        else (lambda t: (t.bytes, t.allocations))
    return sorted(totals, key=key, reverse=True)


#: Stack id → its frames; None: the kernel walked it but the full stacks map did not keep it.
Frames = Callable[[int], StackTrace | None]
_NOT_KEPT = "not kept: the stacks map was full"


def render_text(totals: list[StackTotal], top: int, frames: Frames, title: str,
                fds: bool = False) -> str:
    """memleak's layout: a title, then per stack `B bytes in N allocations` and its frames."""
    shown = totals[:top]
    lines = [f"{title}: {len(totals)} stack{'s' if len(totals) != 1 else ''}"
             + (f", top {len(shown)} shown" if len(shown) < len(totals) else "")]
    for t in shown:
        n = t.allocations
        what = (f"{n} open file descriptor{'s' if n != 1 else ''}" if fds else
                f"{t.bytes} bytes in {n} allocation{'s' if n != 1 else ''}")
        lines.append(f"{what}, oldest {t.oldest_ns // 1_000_000} ms, from:")
        if t.stack_id in UNKNOWN:
            lines.append(f"    stack unknown: {UNKNOWN[t.stack_id]}")
            continue
        trace = frames(t.stack_id)
        if trace is None:
            lines.append(f"    stack {_NOT_KEPT}")
            continue
        lines.extend("    " + line for line in text_frames(trace))
    return "\n".join(lines) + "\n"


def render_json(totals: list[StackTotal], top: int, frames: Frames, report: int,
                head: Mapping[str, object]) -> str:
    """Report number `report` as JSON lines: a header object, then one object per stack, top
    ones only.

    The header is `{"report": N, "stacks": K, "shown": M, **head}` (`head`: the report's time,
    settings and counts so far); every stack object carries the same `"report": N`, so a
    line-oriented reader can tell reports apart (and see an empty one) without keeping state.
    A stack that is not known has `"stack": null` and `"unknown"`: why."""
    shown = totals[:top]
    docs: list[dict[str, object]] = [{"report": report, "stacks": len(totals),
                                      "shown": len(shown), **head}]
    for t in shown:
        doc: dict[str, object] = {"report": report, "stack": None}
        trace = None if t.stack_id in UNKNOWN else frames(t.stack_id)
        if trace is not None:
            doc["stack"] = [frame_json(f) for f in trace.frames]
        else:
            doc["unknown"] = UNKNOWN.get(t.stack_id, _NOT_KEPT)
        doc.update(bytes=t.bytes, count=t.allocations, oldest_ms=t.oldest_ns // 1_000_000)
        docs.append(doc)
    return "".join(json.dumps(d) + "\n" for d in docs)
