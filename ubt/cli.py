"""The `ubt` command line: `ubt stack` (a pstack), `ubt symbolize` (an addr2line), `ubt process`
(backtraces at uprobes) and `ubt list` (probe points with their variables, like `stap -L`).

Every failure of a whole command is a `UbtError` (or a corrupt-input error from the engines) and
ends as one line on stderr with a non-zero exit; a traceback is a bug.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence

from symbolizer.elf import ElfFormatError, ElfImage
from symbolizer.frames import SymFrame
from symbolizer.maps import ProcessMaps
from symbolizer.module import Module, ModuleSet

from . import debuginfod_cmd, render, stack_file
from .errors import AttachDenied, ProcessGone, UbtError, UsageError
from .probespec import parse_probe
from .pipeline import Pipeline
from .ptrace import capture_process
from .trace import ThreadTrace

EXAMPLES = """examples:
  ubt stack -p 1234                  backtrace of every thread of process 1234
  ubt stack -p 1234 --format json    one JSON object per thread
  ubt stack -p 1234 --save s.jsonl   the same, and keep the snapshots
  ubt stack --load s.jsonl           replay them later, elsewhere, the process long gone
  ubt symbolize -e /lib/x86_64-linux-gnu/libc.so.6 0x28000 0x9a1b3
  ubt symbolize -p 1234 0x7f3a1c2d4e5f
  nm -n prog | awk '{print $1}' | ubt symbolize -e prog
  ubt list /bin/ls 'getenv:*'        probe-able lines of getenv (libc) with their variables
  ubt list /bin/ls 'opendir*'        functions and their parameters
  ubt process ./prog 'walk@prog.c:59' --print '$name $r->depth' -c ./prog
                                     values at a line, read at every hit
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ubt", description=__doc__.splitlines()[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stack", help="backtrace every thread of a live process (or of "
                        "saved snapshots)")
    target = st.add_mutually_exclusive_group(required=True)
    target.add_argument("-p", "--pid", type=int)
    target.add_argument("--load", metavar="FILE",
                        help="replay the snapshots saved in FILE (no process needed)")
    st.add_argument("--save", metavar="FILE",
                    help="also save the snapshots (registers, stack, maps, build-ids) to FILE")
    st.add_argument("--format", choices=("text", "json"), default="text")
    pr = sub.add_parser("process", help="full backtrace at every hit of uprobes",
                        description="Attach uprobes to functions of BINARY (or of the libraries "
                        "it loads) and print the whole user backtrace at every hit.")
    pr.add_argument("binary", metavar="BINARY",
                    help='a path, a program on PATH, a library; or a whole probe in SystemTap '
                    '(process("/bin/ls").function("f")) or bpftrace (uprobe:/bin/ls:f) spelling')
    pr.add_argument("functions", nargs="*", metavar="FUNC",
                    help="name or glob, FUNC+OFF, FUNC%%return (or more whole probes)")
    who = pr.add_mutually_exclusive_group()
    who.add_argument("-c", "--command", dest="cmd", metavar="CMD",
                     help="run CMD and trace it from its "
                     "first instruction")
    who.add_argument("-p", "--pid", type=int, help="only this process")
    pr.add_argument("-n", "--hits", type=int, metavar="N", help="stop after N hits")
    pr.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    pr.add_argument("--aggregate", action="store_true",
                    help="count identical stacks, print them sorted at the end")
    pr.add_argument("--format", choices=("text", "json", "folded"), default="text")
    pr.add_argument("--print", dest="prints", action="append", default=[], metavar="EXPRS",
                    help="values to print at each hit: $var, $var->field, $var.field, "
                    "$var[N], $var$ (a struct one level deep), $$vars, $$locals, $$parms; "
                    "FUNC may then be a line (FUNC@FILE:LINE)")
    pr.add_argument("--stack-size", type=_stack_size, default=32 * 1024, metavar="BYTES",
                    help="most stack bytes copied per hit (default 32K, at most 128K)")
    sy = sub.add_parser("symbolize", help="addresses to functions, inline chains and file:line")
    src = sy.add_mutually_exclusive_group(required=True)
    src.add_argument("-e", "--exe", metavar="ELF", help="ELF file; addresses are ELF addresses")
    src.add_argument("-p", "--pid", type=int, help="process; addresses are absolute")
    sy.add_argument("addresses", nargs="*", metavar="ADDR", help="hex; read from stdin if none")
    sy.add_argument("--format", choices=("text", "json"), default="text")
    ls = sub.add_parser("list", help="probe-able lines and functions with their variables",
                        description="List the probe-able source lines of functions (with the "
                        "variables available at each) or the functions matching a glob (with "
                        "their parameters), as `stap -L` does.")
    ls.add_argument("binary", metavar="BINARY", help="a path, a program on PATH, a library; or "
                    'a whole SystemTap probe: process("/bin/ls").statement("f@ls.c:*")')
    ls.add_argument("spec", nargs="?", metavar="FUNC[@FILE][:LINE|:*|:N-M]",
                    help="without a line part: the functions and their parameters")
    ls.add_argument("--format", choices=("text", "json"), default="text")
    debuginfod_cmd.add_parser(sub)
    _leak_parser(sub)
    return p


def _leak_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lk = sub.add_parser("leak", help="outstanding allocations (or fds) by stack, full stacks "
                        "at BPF cost", description="Track allocations in the kernel, drop them "
                        "at free, and report what is left by stack (DWARF-unwound).")
    who = lk.add_mutually_exclusive_group(required=True)
    who.add_argument("-c", "--command", dest="cmd", metavar="CMD",
                     help="run CMD and trace it from its first instruction")
    who.add_argument("-p", "--pid", type=int, help="trace this running process")
    lk.add_argument("interval", nargs="?", type=float, help="report every INTERVAL seconds")
    lk.add_argument("count", nargs="?", type=int, help="stop after COUNT reports")
    lk.add_argument("--older", type=int, default=500, metavar="MS", help="hide allocations "
                    "younger than MS in reports of a live process (default 500)")
    lk.add_argument("-z", "--min-size", type=int, default=0, metavar="BYTES")
    lk.add_argument("-Z", "--max-size", type=int, default=0, metavar="BYTES")
    lk.add_argument("--top", type=int, default=10, metavar="N", help="stacks shown (10)")
    lk.add_argument("--sort", choices=("bytes", "count"), default="bytes")
    lk.add_argument("--sample-rate", type=int, default=1, metavar="N",
                    help="track one allocation in N, at random (counts are then of those)")
    lk.add_argument("-O", "--obj", default="libc.so.6", metavar="LIB",
                    help="the allocator library (default libc.so.6)")
    lk.add_argument("--alloc", action="append", default=[], metavar="LIB:FUNC[:SIZEARG]",
                    help="an allocator function (size argument number, default 1)")
    lk.add_argument("--free", action="append", default=[], metavar="LIB:FUNC[:ADDRARG]",
                    help="its free function (address argument number, default 1)")
    lk.add_argument("--fd", action="store_true", help="file descriptors (open, socket, "
                    "dup, pipe... -> close) instead of memory")
    lk.add_argument("--format", choices=("text", "json"), default="text")


def cmd_leak(args: argparse.Namespace) -> int:
    """`ubt leak`: the options as parsed, to the leak tracer (imported only for it)."""
    from . import leak

    return leak.run(leak.LeakOptions(
        command=args.cmd, pid=args.pid, interval=args.interval, count=args.count,
        older_ms=args.older, min_size=args.min_size, max_size=args.max_size, top=args.top,
        sort=args.sort, sample_rate=args.sample_rate, lib=args.obj,
        allocs=tuple(args.alloc), frees=tuple(args.free), fd=args.fd, fmt=args.format))


def _stack_size(text: str) -> int:
    units = {"k": 1024, "K": 1024}
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if not 4096 <= value <= 128 * 1024:
        raise argparse.ArgumentTypeError("must be between 4K and 128K")
    return value


def cmd_process(args: argparse.Namespace) -> int:
    """`ubt process`: split the whole-probe spellings from BINARY FUNC and run the trace."""
    probes = list(args.functions)
    binary = args.binary
    if parse_probe(binary).binary is not None:  # `ubt process 'uprobe:/bin/ls:f' ...`
        probes.insert(0, binary)
        binary = parse_probe(binary).binary
    if not probes:
        raise UsageError("which function? usage: ubt process BINARY FUNC [FUNC ...]")
    from . import process  # imports bcc: only for this command

    return process.run(process.ProcessOptions(
        binary=binary, probes=tuple(probes), command=args.cmd, pid=args.pid,
        max_hits=args.hits, duration=args.duration, aggregate=args.aggregate, fmt=args.format,
        stack_size=args.stack_size, prints=tuple(args.prints)))


def cmd_stack(pid: int | None, fmt: str, load: str | None = None,
              save: str | None = None) -> int:
    """Print the backtrace of every thread of `pid` (saving the snapshots to `save`), or of
    every snapshot saved in `load`."""
    pipeline = Pipeline()
    out = render.thread_json if fmt == "json" else render.thread_text
    with stack_file.Saver(save, pipeline) as saver:  # an unwritable FILE fails before capture
        if load is not None:
            snaps = stack_file.load(load)
        else:
            assert pid is not None  # argparse requires -p or --load
            snaps = capture_process(pid)
        for n, snap in enumerate(snaps):
            saver.add(snap)
            trace = ThreadTrace(snap.pid, snap.tid, snap.comm, pipeline.trace(snap))
            if fmt == "text" and n:
                print()
            print(out(trace), flush=True)
    return 0


def _addresses(args: Sequence[str]) -> Iterator[tuple[str, int | None]]:
    words: Iterable[str] = args if args else (w for line in sys.stdin for w in line.split())
    for word in words:
        try:
            yield word, int(word, 16)
        except ValueError:
            yield word, None


def _file_module(path: str) -> Module:
    if not os.path.exists(path):
        raise UbtError(f"{path}: no such file")
    image = ElfImage(path)
    return Module(path=path, file=path, build_id=image.build_id, bias=0, start=0, end=1 << 64)


def _process_modules(pid: int) -> ModuleSet:
    try:
        return ModuleSet.from_maps(ProcessMaps.from_pid(pid), pid)
    except FileNotFoundError:
        raise ProcessGone(pid) from None
    except PermissionError:
        raise AttachDenied(pid, "may not read its memory map (not root?)") from None


def cmd_symbolize(exe: str | None, pid: int | None, words: Sequence[str], fmt: str) -> int:
    """Symbolize each address like `addr2line -f -i`; returns 1 if any was unparsable."""
    pipeline = Pipeline()
    fixed = _file_module(exe) if exe else None
    modules = None if pid is None else _process_modules(pid)
    status = 0
    out: list[str] = []
    # answer each line at once when a person (or a coprocess) types addresses; else in batches
    batch = 1 if not words and sys.stdin.isatty() else 1024
    for word, addr in _addresses(words):
        if addr is None:
            print(f"ubt: not an address: {word!r}", file=sys.stderr)
            status = 1
            continue
        module = fixed if modules is None else modules.find(addr)
        path = elf_addr = None
        syms: tuple[SymFrame, ...] = ()
        if module is not None:
            path, elf_addr = module.path, addr - module.bias
            syms = pipeline.symbolizer.symbolize(module, elf_addr)
        out.append(render.address_json(addr, path, elf_addr, syms) if fmt == "json"
                   else render.address_text(addr, path, syms))
        if len(out) >= batch:
            _flush_lines(out)
    _flush_lines(out)
    return status


def _flush_lines(lines: list[str]) -> None:
    """Write collected output lines at once (one write per line costs as much as a lookup)."""
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        lines.clear()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ubt` command (bin/ubt)."""
    # From here on Ctrl-C raises KeyboardInterrupt, which each command handles (bin/ubt's
    # early handler only covered the imports).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = _parser().parse_args(argv)
        if args.command == "stack":
            return cmd_stack(args.pid, args.format, args.load, args.save)
        if args.command == "process":
            return cmd_process(args)
        if args.command == "leak":
            return cmd_leak(args)
        if args.command == "debuginfod":
            return debuginfod_cmd.run(args)
        if args.command == "list":
            from . import listing
            return listing.run(args.binary, args.spec, args.format)
        return cmd_symbolize(args.exe, args.pid, args.addresses, args.format)
    except UbtError as e:
        print(f"ubt: {e}", file=sys.stderr)
        return e.exit_code
    except ElfFormatError as e:
        print(f"ubt: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # output piped into `head`: not an error worth a traceback
        return 0


if __name__ == "__main__":
    sys.exit(main())
