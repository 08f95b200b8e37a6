"""`ubt leak` on mmap'd ranges (real uprobes, real BPF): `leaky regions` (see leaky.c) maps,
unmaps part of a mapping, unmaps two mappings with one call, and moves one with mremap; the
report must count the pages left exactly, per stack (valgrind does not report mmap: the
fixture's known numbers are the reference)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_leak_cli import stacks

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("needs_root")]

#: function that called mmap → (bytes, count) left mapped at exit.
EXPECTED = {"map_split": (8192, 2), "map_moved": (12288, 1)}


def test_regions_exact_after_partial_munmap_span_and_mremap(ubt: Any,
                                                           fixture_build: Any) -> None:
    """map_split: 4 pages with the middle two unmapped leave 2 pieces of a page (one stack);
    map_span + map_neighbour (MAP_FIXED over its upper half): one munmap spanning both leaves
    nothing; map_moved: 1 page grown to 3 by an mremap that moves, its blocker unmapped."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    found = stacks(ubt.run("leak", "-c", f"{program} regions", "--format", "json"))
    got = {}
    for s in found:
        names = [f["function"] for f in s["stack"]]
        assert names[0] == "mmap", names
        caller = next(n for n in names if n and n.startswith("map_") and n != "map_pages")
        assert "regions" in names and "main" in names and names[-1] == "_start", names
        got[caller] = (s["bytes"], s["count"])
    assert got == EXPECTED
