"""`ubt leak` when the memory map changes under it (real uprobes, real BPF): stacks through a
library that is dlclose'd before the report, through another library mapped where the first
one was, and through another program exec'd at the same addresses (see leaky.c `plugin`,
`plugins`, and libplug.c: libplugA.so/libplugB.so, plugexecA/plugexecB).

Oracle: eu-addr2line on the library file at each frame's ELF address (valgrind prints `???`
for code that is gone by its report), and the fixture's line markers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_leak_cli import stacks
from symbolizer.elf import ElfImage
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


def check_plug_frames(plug: list[dict[str, Any]], elf: Path) -> None:
    """Frames in `elf`, named as eu-addr2line names their return addresses there (pc - 1)."""
    assert [f["module"] for f in plug] == [str(elf)] * len(plug)
    oracle = eu_addr2line(str(elf), [f["offset"] - 1 for f in plug])
    assert [(f["function"], f["file"], f["line"]) for f in plug] == \
        [(chain[0].function, chain[0].file, chain[0].line) for chain in oracle]


def check_frames(stack: list[dict[str, Any]], library: Path, leaky: Path,
                 line_markers: dict[str, tuple[str, int]]) -> None:
    """malloc, then plug_make and plug_leak in `library`, then leaky's frames down to
    _start."""
    assert [f["function"] for f in stack] == ["malloc", "plug_make", "plug_leak", *BELOW]
    check_plug_frames(stack[1:3], library)
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


def test_other_library_where_one_was(ubt: Any, fixture_build: Any,
                                     line_markers: dict[str, tuple[str, int]]) -> None:
    """libplugB.so mapped where libplugA.so was, the same return address in plug_make, a
    smaller frame: B's stack is walked with B's CFI, not with the rule learnt for A (which
    reads plug_leak's return address as plug_make's and drops plug_leak), and each library's
    frames are named from its own file."""
    build, found = plug_stacks(ubt, fixture_build, "plugins")
    by_size = {s["bytes"]: s for s in found}
    assert sorted(by_size) == [48, 80] and all(s["count"] == 1 for s in found)
    a, b = by_size[48]["stack"], by_size[80]["stack"]
    assert a[1]["pc"] == b[1]["pc"], "the premise: B is mapped where A was"
    leaky = fixture_build.program_path("leaky", "O2-nofp")
    check_frames(a, build / "libplugA.so", leaky, line_markers)
    check_frames(b, build / "libplugB.so", leaky, line_markers)


def test_other_program_where_one_was(ubt: Any, fixture_build: Any,
                                     line_markers: dict[str, tuple[str, int]]) -> None:
    """plugexecA turns address randomization off, leaks on plug_run -> plug_leak -> plug_make
    and execs plugexecB, which leaks 80 B on the same path at the same addresses with B's
    smaller plug_make frame: walked with B's CFI, named from B's file. A's block is not
    reported: it went with A's image at the exec."""
    build = fixture_build.program_path("leaky", "O2-nofp").parent
    found = stacks(ubt.run("leak", "-c", f"{build / 'plugexecA'} {build / 'plugexecB'}",
                           "--format", "json"))
    (only,) = [s for s in found if any(f["function"] == "plug_make" for f in s["stack"])]
    assert (only["bytes"], only["count"]) == (80, 1)
    stack = only["stack"]
    assert [f["function"] for f in stack] == [
        "malloc", "plug_make", "plug_leak", "plug_run", "main", "__libc_start_call_main",
        "__libc_start_main_impl", "_start"]
    check_plug_frames(stack[1:5], build / "plugexecB")
    marks = [line_markers[m] for m in ("plug_make_malloc", "plug_leak_call", "plug_run_call")]
    assert [(Path(f["file"]).name, f["line"]) for f in stack[1:4]] == marks
    # the premise: B's plug_make return address is A's (same layout, no ASLR: same base)
    assert stack[1]["pc"] == 0x555555554000 + stack[1]["offset"]
    assert {name: symbol_address(build / name, "plug_make")
            for name in ("plugexecA", "plugexecB")} == dict.fromkeys(
        ("plugexecA", "plugexecB"), symbol_address(build / "plugexecB", "plug_make"))


def symbol_address(elf: Path, name: str) -> int:
    """The ELF address of function `name` in `elf`."""
    (addr,) = [s.addr for s in ElfImage(str(elf)).code_symbols() if s.name == name]
    return addr


def test_memory_of_an_image_replaced_by_exec_is_not_reported(ubt: Any, fixture_build: Any) -> None:
    """`setarch -R leaky sample 100`: setarch allocates (its locale, ~400 KB in 18 stacks
    before this was fixed), then execs the program, whose 100 blocks of 24 bytes are the only
    leak; what setarch left went with its image."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "-c", f"setarch -R {program} sample 100", "--format",
                           "json"))
    assert [(s["bytes"], s["count"], [f["function"] for f in s["stack"][:3]])
            for s in found] == [(2400, 100, ["malloc", "sample_keep", "main"])]
