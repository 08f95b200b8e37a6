"""gdb-side script (runs inside gdb's embedded Python): every thread's backtrace as JSON.

Run by :func:`tests.oracle.gdb.gdb_backtrace`::

    UBT_GDB_OUT=/tmp/out.json gdb -nx -batch -iex 'set debuginfod enabled off' \
        -p PID -x tests/oracle/gdb_backtrace.py

It writes one JSON document to ``$UBT_GDB_OUT``::

    {"pid": PID, "threads": [{"tid": TID, "name": "fx-cond", "frames": [FRAME, ...],
                              "stop": "..."}, ...]}

with FRAME = ``{"pc", "type", "name", "function", "file", "fullname", "line"}``:

- ``pc``: ``frame.pc()`` -- a return address for every frame but the innermost and the frame
  under a signal trampoline, i.e. the same value as ubt's ``pc``;
- ``type``: ``NORMAL``, ``INLINE``, ``SIGTRAMP``, ``DUMMY``, ...; gdb prints a SIGTRAMP frame as
  ``<signal handler called>``;
- ``name``: ``frame.name()`` (what ``bt`` prints: the DWARF print name, e.g.
  ``fx::Worker::run(int)``, or the demangled ELF symbol when there is no debug info);
- ``function``: ``frame.function().print_name`` when gdb has a debug-info symbol, else null;
- ``file`` / ``fullname`` / ``line``: ``frame.find_sal()`` (gdb looks outer frames up at pc - 1);

The walk goes past ``main`` and the entry point (``set backtrace past-main on``), so it stops
where the CFI says the return address is undefined (``_start``, ``clone3``), as ubt does.
"""
import json
import os

import gdb  # type: ignore[import-not-found]  # provided by gdb itself

MAX_FRAMES = 512
FRAME_TYPES = {
    getattr(gdb, n): n.replace("_FRAME", "")
    for n in ("NORMAL_FRAME", "DUMMY_FRAME", "INLINE_FRAME", "TAILCALL_FRAME", "SIGTRAMP_FRAME",
              "ARCH_FRAME", "SENTINEL_FRAME")
    if hasattr(gdb, n)
}


def _frame(f):
    pc = int(f.pc())
    out = {"pc": pc, "type": FRAME_TYPES.get(f.type(), str(f.type())), "name": f.name(),
           "function": None, "file": None, "fullname": None, "line": None}
    try:
        fn = f.function()
    except gdb.error:
        fn = None
    if fn is not None:
        out["function"] = fn.print_name
    try:
        sal = f.find_sal()
    except gdb.error:
        sal = None
    if sal is not None and sal.symtab is not None:
        out["file"] = sal.symtab.filename
        try:
            out["fullname"] = sal.symtab.fullname()
        except gdb.error:
            out["fullname"] = None
        out["line"] = sal.line or None
    return out


def walk():
    """The selected thread's frames, innermost first, and why the walk ended."""
    frames = []
    stop = None
    f = gdb.newest_frame()
    while f is not None and len(frames) < MAX_FRAMES:
        frames.append(_frame(f))
        try:
            older = f.older()
        except gdb.error as e:
            stop = f"error: {e}"
            break
        if older is None:
            stop = gdb.frame_stop_reason_string(f.unwind_stop_reason())
        f = older
    return frames, stop


def settings():
    """What both scripts set before walking: demangled names, the walk past main and _start."""
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    gdb.execute("set print demangle on")
    gdb.execute("set backtrace past-main on")
    gdb.execute("set backtrace past-entry on")
    gdb.execute("set backtrace limit unlimited")


def _thread(th):
    th.switch()
    try:
        frames, stop = walk()
    except gdb.error as e:
        return {"tid": th.ptid[1], "name": th.name, "frames": [], "stop": f"error: {e}"}
    return {"tid": th.ptid[1], "name": th.name, "frames": frames, "stop": stop}


def main():
    settings()
    inferior = gdb.selected_inferior()
    threads = sorted(inferior.threads(), key=lambda t: t.ptid[1])
    doc = {"pid": inferior.pid, "threads": [_thread(t) for t in threads]}
    with open(os.environ["UBT_GDB_OUT"], "w") as out:
        json.dump(doc, out, indent=1)
    gdb.execute("detach")


if __name__ == "__main__":  # run by gdb -x; gdb_breaks.py imports the frame helpers
    try:
        main()
    except Exception as exc:  # make the failure visible to the harness instead of a silent exit
        with open(os.environ["UBT_GDB_OUT"], "w") as out:
            json.dump({"error": f"{type(exc).__name__}: {exc}"}, out)
        raise
