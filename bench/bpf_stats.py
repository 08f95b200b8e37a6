"""The kernel's own account of BPF program time (`kernel.bpf_stats_enabled`): run count and
nanoseconds per loaded program, read through bpf(2) while the programs are loaded.

A traced program's CPU time per hit (the bench's main figure) carries the noise of its own loop;
the kernel's count of the probe program's run time does not, and compares ubt's program with
bpftrace's directly (the uprobe trap around it costs both the same).
"""
from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bpf_progs.bpfsys import OBJ_GET_INFO_BY_FD, BpfError, bpf  # noqa: E402

_PROG_GET_NEXT_ID = 11
_PROG_GET_FD_BY_ID = 13
_INFO_SIZE = 256
_NAME = slice(64, 80)    # struct bpf_prog_info: name[16]
_RUN_STATS = 192         # run_time_ns, run_cnt (u64 each)
_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def programs() -> dict[int, tuple[str, int, int]]:
    """Every loaded program: id → (name, run count, run time ns)."""
    found: dict[int, tuple[str, int, int]] = {}
    prog_id = 0
    while True:
        attr = bytearray(128)
        struct.pack_into("I", attr, 0, prog_id)
        try:
            bpf(_PROG_GET_NEXT_ID, attr)
        except BpfError:
            return found
        prog_id = struct.unpack_from("I", attr, 4)[0]
        attr = bytearray(128)
        struct.pack_into("I", attr, 0, prog_id)
        try:
            fd = bpf(_PROG_GET_FD_BY_ID, attr)
        except BpfError:
            continue  # unloaded meanwhile
        try:
            info = ctypes.create_string_buffer(_INFO_SIZE)
            attr = bytearray(128)
            struct.pack_into("IIQ", attr, 0, fd, _INFO_SIZE, ctypes.addressof(info))
            bpf(OBJ_GET_INFO_BY_FD, attr)
        finally:
            os.close(fd)
        run_ns, runs = struct.unpack_from("QQ", info.raw, _RUN_STATS)
        found[prog_id] = (info.raw[_NAME].split(b"\0")[0].decode(), runs, run_ns)


class ProgramTimer:
    """Within `with`, statistics are on and every program is sampled every 50 ms, so programs
    that are unloaded before the end (a tool that exits) keep their last figures."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._was = "0"

    def __enter__(self) -> ProgramTimer:
        self._was = _SYSCTL.read_text().strip()
        _SYSCTL.write_text("1")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        _SYSCTL.write_text(self._was)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self._seen.update(programs())

    def mark(self) -> set[int]:
        """The ids seen so far (programs from before a run, left out of `ns_per_run`)."""
        self._seen.update(programs())
        return set(self._seen)

    def ns_per_run(self, name: str, before: set[int]) -> float | None:
        """Mean run time of the programs named `name` loaded since `before`, or None."""
        self._seen.update(programs())
        mine = [v for k, v in self._seen.items() if k not in before and v[0] == name and v[1]]
        runs = sum(v[1] for v in mine)
        return sum(v[2] for v in mine) / runs if runs else None
