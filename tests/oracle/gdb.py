"""gdb as the stack oracle: attach to a blocked process, dump every thread's frames as data.

The walk itself runs inside gdb (``gdb_backtrace.py``, gdb's Python API: ``newest_frame``,
``older``, ``pc``, ``type``, ``name``, ``find_sal``); this module starts gdb, reads its JSON and
adds the module of each pc from ``/proc/PID/maps`` (gdb 13 has no ``objfile_for_address``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("gdb_backtrace.py")
GDB_TIMEOUT = 120.0


class GdbError(RuntimeError):
    """gdb did not produce a backtrace."""


@dataclass(frozen=True)
class GdbFrame:
    """One frame as gdb sees it (see gdb_backtrace.py for the fields)."""

    pc: int
    type: str            # NORMAL | INLINE | SIGTRAMP | ...
    name: str | None     # what `bt` prints; None for `??`
    function: str | None  # debug-info symbol name, None without debug info
    file: str | None     # symtab.filename (as in DWARF)
    fullname: str | None  # symtab.fullname() (comp_dir joined)
    line: int | None
    module: str | None   # path of the mapping containing pc (from /proc/PID/maps)

    @property
    def is_sigtramp(self) -> bool:
        return self.type == "SIGTRAMP"

    @property
    def is_inline(self) -> bool:
        return self.type == "INLINE"

    @property
    def is_tailcall(self) -> bool:
        """A frame gdb reconstructs from DW_TAG_call_site (DW_AT_call_tail_call) info: the
        function made a tail call, so it has no frame on the stack."""
        return self.type == "TAILCALL"

    def label(self) -> str:
        name = "<signal handler called>" if self.is_sigtramp else (self.function or self.name
                                                                     or "??")
        where = f" ({self.fullname or self.file}:{self.line})" if self.file else ""
        inl = " (inlined)" if self.is_inline else " (tail call)" if self.is_tailcall else ""
        return f"{self.pc:#x} {name}{where}{inl} [{os.path.basename(self.module or '?')}]"


@dataclass(frozen=True)
class GdbThread:
    tid: int
    name: str | None
    frames: tuple[GdbFrame, ...]
    stop: str | None


def available() -> bool:
    return shutil.which("gdb") is not None


def read_maps(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, path) of every file-backed mapping of `pid`."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5].strip()))
    return out


def module_of(maps: list[tuple[int, int, str]], pc: int) -> str | None:
    for lo, hi, path in maps:
        if lo <= pc < hi:
            return path
    return None


def debug_dir_options(debug_dirs: Sequence[str]) -> list[str]:
    """gdb options searching `debug_dirs` (``DIR/.build-id/xx/rest.debug``) before
    ``/usr/lib/debug``; none when `debug_dirs` is empty (gdb's default stays)."""
    if not debug_dirs:
        return []
    return ["-iex", "set debug-file-directory " + ":".join([*debug_dirs, "/usr/lib/debug"])]


def gdb_backtrace(pid: int, timeout: float = GDB_TIMEOUT,
                  debug_dirs: Sequence[str] = ()) -> dict[int, GdbThread]:
    """Attach gdb to `pid`, walk every thread, detach; {tid: GdbThread}.

    :param debug_dirs: extra debug-file directories (see `debug_dir_options`).
    :raises GdbError: gdb failed or wrote no JSON (its stderr is in the message).
    """
    maps = read_maps(pid)
    with tempfile.TemporaryDirectory(prefix="ubt-gdb-") as tmp:
        out_path = os.path.join(tmp, "bt.json")
        env = dict(os.environ, UBT_GDB_OUT=out_path)
        env.pop("DEBUGINFOD_URLS", None)
        cmd = ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off",
               "-iex", "set pagination off", "-iex", "set auto-load safe-path /",
               *debug_dir_options(debug_dirs), "-p", str(pid), "-x", str(SCRIPT)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
        try:
            with open(out_path) as f:
                doc: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            raise GdbError(f"gdb wrote no backtrace (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}") from None
    if "error" in doc:
        raise GdbError(f"gdb script failed: {doc['error']}\n{proc.stderr[-3000:]}")
    threads = {}
    for t in doc["threads"]:
        frames = tuple(GdbFrame(pc=f["pc"], type=f["type"], name=f["name"],
                                function=f["function"], file=f["file"],
                                fullname=f["fullname"], line=f["line"],
                                module=module_of(maps, f["pc"]))
                       for f in t["frames"])
        threads[t["tid"]] = GdbThread(t["tid"], t["name"], frames, t["stop"])
    return threads


def format_thread(t: GdbThread) -> str:
    return "\n".join([f"TID {t.tid} ({t.name}) stop={t.stop}",
                      *(f"  #{n:<2} {f.label()}" for n, f in enumerate(t.frames))])
