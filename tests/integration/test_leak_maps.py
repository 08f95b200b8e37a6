"""`ubt leak` when the memory map changes under it (real uprobes, real BPF): stacks through a
library that is dlclose'd before the report (see leaky.c `plugin`, and libplug.c).

Oracle: eu-addr2line on the library file at each frame's ELF address (valgrind prints `???`
for code that is gone by its report), and the fixture's line markers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_leak_cli import stacks
from tests.oracle.elfutils import eu_addr2line

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("needs_root")]

#: The callers of plug_leak down to the process's first frame.
BELOW = ["plugin_leak", "plugins", "main", "__libc_start_call_main", "__libc_start_main_impl",
         "_start"]


def plug_stacks(ubt: Any, fixture_build: Any, mode: str) -> tuple[Path, list[dict[str, Any]]]:
    """The variant's directory and the stacks of `leaky MODE DIR` that go through plug_make
    (dlopen's own allocations left out)."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "-c", f"{program} {mode} {program.parent}", "--format",
                           "json"))
    return program.parent, [s for s in found
                            if any(f["function"] == "plug_make" for f in s["stack"])]


def check_frames(stack: list[dict[str, Any]], library: Path, leaky: Path,
                 line_markers: dict[str, tuple[str, int]]) -> None:
    """malloc, then plug_make and plug_leak in `library` named as eu-addr2line names their
    return addresses there (pc - 1), then leaky's frames down to _start."""
    assert [f["function"] for f in stack] == ["malloc", "plug_make", "plug_leak", *BELOW]
    plug = stack[1:3]
    assert [f["module"] for f in plug] == [str(library)] * 2
    oracle = eu_addr2line(str(library), [f["offset"] - 1 for f in plug])
    assert [(f["function"], f["file"], f["line"]) for f in plug] == \
        [(chain[0].function, chain[0].file, chain[0].line) for chain in oracle]
    marks = [line_markers[m] for m in ("plug_make_malloc", "plug_leak_call",
                                       "plugin_leak_call", "plugins_call")]
    assert [(Path(f["file"]).name, f["line"]) for f in stack[1:5]] == marks
    assert [f["module"] for f in stack[3:6]] == [str(leaky)] * 3


def test_stack_through_a_library_dlclosed_before_the_report(
        ubt: Any, fixture_build: Any, line_markers: dict[str, tuple[str, int]]) -> None:
    """48 bytes leaked from libplugA.so, reported after its dlclose: its frames are named
    with the map of the allocation, not of the report (where nothing is at their pcs)."""
    build, found = plug_stacks(ubt, fixture_build, "plugin")
    (only,) = found
    assert (only["bytes"], only["count"]) == (48, 1)
    check_frames(only["stack"], build / "libplugA.so",
                 fixture_build.program_path("leaky", "O2-nofp"), line_markers)
