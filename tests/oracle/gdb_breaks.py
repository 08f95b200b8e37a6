"""gdb-side script (runs inside gdb's embedded Python): the backtrace at each breakpoint stop.

Run by :func:`tests.oracle.gdb_stops.gdb_stops`::

    UBT_GDB_CFG=/tmp/cfg.json gdb -nx -batch -iex 'set debuginfod enabled off' \
        -x tests/oracle/gdb_breaks.py PROGRAM

The configuration (``$UBT_GDB_CFG``, JSON)::

    {"out": PATH, "max_stops": N, "args": "-l /" (shell-quoted), "stdout": "/dev/null" (or null),
     "breaks": [{"label": "opendir", "path": "/usr/lib/.../libc.so.6", "elf_addr": 851600,
                 "min_vaddr": 0}, ...],
     "prints": ["name", "r->depth"]}     (optional: gdb's `print` of each at every stop)

Method: ``starti`` (through the shell, as ``ubt process -c`` runs ``sh -c 'exec CMD'``; gdb
starts following the program at its exec), run to the dynamic loader's first shared-library event
after which every file to break in is mapped (``stop-on-solib-events``: before the libraries'
relocation and initializers, so calls made by ``DT_INIT``/constructors, e.g. libselinux's
mallocs in ``ls``, are seen), then ``break *ADDR`` at the exact entry of each probed function (ADDR = the
library's load base from ``/proc/PID/maps`` + ``elf_addr`` - ``min_vaddr``: the address a uprobe
at ``func+0`` fires at, not ``break func``, which skips the prologue), and ``continue`` until the
program exits or ``max_stops`` breakpoint stops were seen; then kill it. At each stop it records
the stopped thread's walk (``gdb_backtrace.walk``: the same frame fields as ``ubt stack`` is
compared on) and the process's memory map (so module-relative offsets can be computed after the
process is gone). Signals pass through without stopping (``handle all nostop noprint pass``).

Output (``out``)::

    {"stops": [{"label", "tid", "thread_name", "frames": [FRAME...], "stop", "maps": K,
                "values": {EXPR: what `print EXPR` shows, "<optimized out>", "<error: ...>"}}],
     "maps": [MAPS_TEXT, ...], "exit_code": int | null}
"""
import json
import os
import sys

import gdb  # type: ignore[import-not-found]  # provided by gdb itself

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gdb_backtrace  # noqa: E402  # the frame helpers shared with the attach oracle


def _mapped(pid, paths):
    """True when every file of `paths` is mapped in process `pid`."""
    with open(f"/proc/{pid}/maps") as f:
        seen = {os.path.realpath(ln.split(maxsplit=5)[5].strip())
                for ln in f if len(ln.split(maxsplit=5)) == 6}
    return all(os.path.realpath(p) in seen for p in paths)


def _load_base(pid, path):
    """Start of the mapping of `path` at file offset 0 in process `pid`."""
    real = os.path.realpath(path)
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and int(parts[2], 16) == 0 and \
                    os.path.realpath(parts[5].strip()) == real:
                return int(parts[0].split("-")[0], 16)
    raise RuntimeError(f"{path} is not mapped in {pid} at the program's entry")


def _print(expr):
    """What gdb's `print EXPR` shows in the newest frame (without the `$N = `)."""
    gdb.newest_frame().select()
    try:
        return gdb.execute(f"output {expr}", to_string=True).strip()
    except gdb.error as e:
        return f"<error: {e}>"


class _Recorder:
    def __init__(self):
        self.last = None
        self.exit_code = None

    def on_stop(self, event):
        self.last = event

    def on_exit(self, event):
        self.exit_code = getattr(event, "exit_code", None)


def main():
    with open(os.environ["UBT_GDB_CFG"]) as f:
        cfg = json.load(f)
    gdb_backtrace.settings()
    gdb.execute("handle all nostop noprint pass")
    # the inferior's environment as ubt's child gets it: gdb adds LINES and COLUMNS
    gdb.execute("unset environment LINES")
    gdb.execute("unset environment COLUMNS")
    gdb.execute("unset environment UBT_GDB_CFG")   # this script's own setting
    # SHELL was set for gdb's startup-with-shell; the program gets the caller's value back
    # (two bytes more or less of environment can move every stack address by 16)
    if cfg.get("shell") is None:
        gdb.execute("unset environment SHELL")
    else:
        gdb.execute(f"set environment SHELL={cfg['shell']}")
    rec = _Recorder()
    gdb.events.stop.connect(rec.on_stop)
    gdb.events.exited.connect(rec.on_exit)
    # the arguments, already quoted for the shell gdb starts the program with, and where its
    # stdout goes (`starti ARGS` would be the same; gdb 13's parameter("args") reads as '')
    redirect = f" > {cfg['stdout']}" if cfg.get("stdout") else ""
    gdb.execute(f"set args {cfg['args']}{redirect}")
    gdb.execute("starti")
    inferior = gdb.selected_inferior()
    pid = inferior.pid
    paths = {b["path"] for b in cfg["breaks"]}
    if not _mapped(pid, paths):
        # the dynamic loader's shared-library events: the first comes once the libraries are
        # mapped, before their relocation and initializers (which call malloc, for instance)
        gdb.execute("set stop-on-solib-events 1")
        while inferior.pid and not _mapped(pid, paths):
            gdb.execute("continue")
        gdb.execute("set stop-on-solib-events 0")
    labels = {}
    for b in cfg["breaks"]:
        addr = _load_base(pid, b["path"]) + b["elf_addr"] - b["min_vaddr"]
        bp = gdb.Breakpoint(f"*{addr:#x}", internal=False)
        labels[bp.number] = b["label"]
    stops = []
    maps_seen = []
    while len(stops) < cfg["max_stops"]:
        rec.last = None
        gdb.execute("continue")
        if inferior.pid == 0 or not inferior.threads():
            break  # the program exited
        event = rec.last
        hit = [labels[b.number] for b in getattr(event, "breakpoints", ()) if b.number in labels]
        if not hit:
            continue  # not one of ours (should not happen: signals do not stop)
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
        if not maps_seen or maps_seen[-1] != maps:
            maps_seen.append(maps)
        th = gdb.selected_thread()
        frames, stop = gdb_backtrace.walk()
        stops.append({"label": hit[0], "tid": th.ptid[1], "thread_name": th.name,
                      "frames": frames, "stop": stop, "maps": len(maps_seen) - 1,
                      "values": {e: _print(e) for e in cfg.get("prints", ())}})
    if inferior.pid:
        gdb.execute("kill")
    with open(cfg["out"], "w") as out:
        json.dump({"stops": stops, "maps": maps_seen, "exit_code": rec.exit_code}, out)


try:
    main()
except Exception as exc:  # make the failure visible to the harness instead of a silent exit
    with open(json.load(open(os.environ["UBT_GDB_CFG"]))["out"], "w") as out:
        json.dump({"error": f"{type(exc).__name__}: {exc}"}, out)
    raise
