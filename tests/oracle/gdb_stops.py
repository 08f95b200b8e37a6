"""gdb as the oracle of `ubt process`: run a program under gdb with a breakpoint at the exact
entry of each probed function and take the backtrace at every stop.

The walk runs inside gdb (``gdb_breaks.py``, which reuses ``gdb_backtrace.py``'s frame fields);
this module writes its configuration, starts gdb, and turns the stops into ``GdbThread``s whose
frames carry their module (from the process's memory map at that stop). ubt and gdb run the
program in different processes with different ASLR, so frames are compared by *module-relative*
address (the ELF address, ``pc - bias``: ubt's JSON ``offset``): ``relative_gdb`` and
``relative_ubt`` put that address in the ``pc`` field of both sides, after which the frame-by-frame
comparison of ``tests.oracle.stack_compare`` applies unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from elftools.elf.elffile import ELFFile

from .gdb import GdbError, GdbFrame, GdbThread, debug_dir_options

SCRIPT = Path(__file__).with_name("gdb_breaks.py")
GDB_TIMEOUT = 120.0
_PAGE = 4096


@dataclass(frozen=True)
class Break:
    """A breakpoint at ELF address `elf_addr` of `path`; stops there are named `label`."""

    label: str
    path: str
    elf_addr: int


@dataclass(frozen=True)
class GdbStop:
    """One breakpoint stop: the stopped thread's walk (absolute pcs, modules resolved)."""

    label: str
    thread: GdbThread
    biases: dict[str, int]  # module path -> load bias, at this stop
    values: dict[str, str] = dataclasses.field(default_factory=dict)  # `print EXPR` there

    @property
    def tid(self) -> int:
        return self.thread.tid


@dataclass(frozen=True)
class GdbRun:
    stops: list[GdbStop]
    exit_code: int | None


@lru_cache(maxsize=64)
def min_vaddr(path: str) -> int:
    """The lowest PT_LOAD virtual address of an ELF file, page aligned (0 for PIE and .so)."""
    with open(path, "rb") as f:
        loads = [s["p_vaddr"] for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
    return min(loads) & ~(_PAGE - 1)


def elf_symbol(path: str, name: str) -> int:
    """ELF address of function `name` in `path` (.symtab, else .dynsym; versioned names too)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for secname in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(secname)
            if sec is None:
                continue
            for sym in sec.iter_symbols():
                if sym.name.split("@")[0] == name and sym["st_info"]["type"] in \
                        ("STT_FUNC", "STT_GNU_IFUNC") and sym["st_value"]:
                    return int(sym["st_value"])
    raise KeyError(f"no function {name!r} in {path}")


def _parse_maps(text: str) -> list[tuple[int, int, int, str]]:
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append((lo, hi, int(parts[2], 16), parts[5].strip()))
    return out


def _biases(maps: list[tuple[int, int, int, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for lo, _hi, off, path in maps:
        if off == 0 and path not in out and os.path.exists(path):
            try:
                out[path] = lo - min_vaddr(path)
            except Exception:  # noqa: BLE001 - not an ELF file (a data file mapping)
                continue
    return out


def gdb_stops(argv: Sequence[str], breaks: Sequence[Break], max_stops: int,
              timeout: float = GDB_TIMEOUT, env: dict[str, str] | None = None,
              cwd: str | None = None, stdout: str | None = "/dev/null",
              debug_dirs: Sequence[str] = (), prints: Sequence[str] = ()) -> GdbRun:
    """Run ``argv`` under gdb (started through /bin/sh, like ``ubt process -c``) with a
    breakpoint at each of `breaks`; the first `max_stops` stops, then the program is killed.
    The program's stdout goes to `stdout` (``ubt process -c 'CMD >/dev/null'`` is the match);
    `debug_dirs` are searched for debug files by build-id before ``/usr/lib/debug``; each of
    `prints` is printed (gdb's ``output EXPR``) at every stop, into `GdbStop.values`.

    :raises GdbError: gdb failed or wrote nothing (its stderr is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="ubt-gdb-") as tmp:
        out_path = os.path.join(tmp, "stops.json")
        cfg_path = os.path.join(tmp, "cfg.json")
        with open(cfg_path, "w") as f:
            json.dump({"out": out_path, "max_stops": max_stops, "stdout": stdout,
                       "args": " ".join(shlex.quote(a) for a in argv[1:]),
                       "breaks": [{"label": b.label, "path": b.path, "elf_addr": b.elf_addr,
                                   "min_vaddr": min_vaddr(b.path)} for b in breaks],
                       "prints": list(prints),
                       "shell": (env if env is not None else os.environ).get("SHELL")}, f)
        run_env = dict(env if env is not None else os.environ)
        run_env.update(UBT_GDB_CFG=cfg_path, SHELL="/bin/sh")
        run_env.pop("DEBUGINFOD_URLS", None)
        cmd = ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off",
               "-iex", "set pagination off", "-iex", "set auto-load safe-path /",
               "-iex", "set startup-with-shell on", *debug_dir_options(debug_dirs),
               "-x", str(SCRIPT), argv[0]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env,
                              stdin=subprocess.DEVNULL, cwd=cwd)
        try:
            with open(out_path) as f:
                doc: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            raise GdbError(f"gdb wrote no stops (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}") from None
    if "error" in doc:
        raise GdbError(f"gdb script failed: {doc['error']}\n{proc.stderr[-3000:]}")
    maps = [_parse_maps(text) for text in doc["maps"]]
    biases = [_biases(m) for m in maps]
    stops = []
    for s in doc["stops"]:
        m = maps[s["maps"]]
        frames = tuple(GdbFrame(pc=f["pc"], type=f["type"], name=f["name"],
                                function=f["function"], file=f["file"], fullname=f["fullname"],
                                line=f["line"], module=_module_of(m, f["pc"]))
                       for f in s["frames"])
        stops.append(GdbStop(s["label"], GdbThread(s["tid"], s["thread_name"], frames, s["stop"]),
                             biases[s["maps"]], s.get("values", {})))
    return GdbRun(stops, doc.get("exit_code"))


def _module_of(maps: list[tuple[int, int, int, str]], pc: int) -> str | None:
    for lo, hi, _off, path in maps:
        if lo <= pc < hi:
            return path
    return None


def relative_gdb(stop: GdbStop) -> GdbThread:
    """The stop's walk with each frame's pc replaced by its module-relative (ELF) address."""
    frames = []
    for f in stop.thread.frames:
        bias = stop.biases.get(f.module) if f.module else None
        frames.append(f if bias is None else dataclasses.replace(f, pc=f.pc - bias))
    return dataclasses.replace(stop.thread, frames=tuple(frames))


def relative_ubt(hit: dict[str, Any]) -> dict[str, Any]:
    """A ubt hit (JSON object) with each frame's pc replaced by its ``offset`` (ELF address)."""
    frames = [dict(f, pc=f["offset"]) if f.get("module") and f.get("offset") is not None
              else dict(f) for f in hit["frames"]]
    return dict(hit, frames=frames)
