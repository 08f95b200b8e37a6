"""`ubt leak -c` on a workload with known leaks: exactly those, with exact bytes and counts, and
the same stacks as valgrind --leak-check=full's definitely-lost records for the same program.

The workload (fixtures/src/leaky.c, built -O2 -fomit-frame-pointer) leaks from several stacks
and sizes, from threads, through realloc chains, from a shared library and through a callback,
frees some blocks from another thread and some (not all) blocks of one stack. Two oracles: the
table below, written from the source, and valgrind; the comparison's normalisation rules are
counted and the counts asserted. A second test runs the leaks several times: after the first
round every stack is walked in the kernel with learnt rules, and must come out as the very same
stacks (same ids: same pcs) as the user-space walks of the first round.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from tests.integration.test_leak_cli import stacks as report_stacks
from tests.oracle import valgrind_leaks as vg

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("needs_root")]

#: (allocator, function calling it) → (bytes, blocks) leaked, from leaky.c's table (summed over
#: call sites: -O2 unrolls leak_table's and aligned_leak's loops into two of each).
EXPECTED = {
    ("malloc", "new_record"): (144, 3),
    ("calloc", "leak_table"): (320, 2),
    ("realloc", "grow_buffer"): (200, 1),
    ("malloc", "lib_node"): (96, 3),
    ("malloc", "cb_make"): (160, 4),
    ("malloc", "worker_leak"): (384, 6),
    ("malloc", "produce"): (800, 4),
    ("posix_memalign", "aligned_leak"): (512, 2),
}


def leak_json(ubt: Any, command: str) -> tuple[list[dict[str, Any]], str]:
    """`ubt leak -c COMMAND --format json`: the stack objects, and stderr."""
    proc = ubt.run("leak", "-c", command, "--format", "json", "--top", "100")
    return report_stacks(proc), proc.stderr


def by_function(stacks: list[tuple[list[dict[str, Any]], int, int]],
                rounds: int = 1) -> dict[tuple[str, str], tuple[int, int]]:
    """(allocator, its caller) → (bytes, blocks) per round, summed over call sites."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for frames, size, blocks in stacks:
        assert size % rounds == 0 and blocks % rounds == 0, (frames, size, blocks)
        key = (frames[0]["function"], frames[1]["function"])
        b, n = out.get(key, (0, 0))
        out[key] = (b + size // rounds, n + blocks // rounds)
    return out


def counts(stderr: str) -> dict[str, int]:
    """The numbers of ubt leak's end line, by their words."""
    end = stderr.strip().splitlines()[-1]
    return {what: int(n) for n, what in re.findall(r"(\d+) ([a-z][^,]*)", end)}


@pytest.mark.parametrize("variant", ["O2-nofp", "O0"])
def test_leaks_equal_valgrind(ubt: Any, fixture_build: Any, variant: str) -> None:
    program = fixture_build.program_path("leaky", variant)
    stacks, stderr = leak_json(ubt, str(program))
    records = vg.run_memcheck([str(program)])

    assert {r.kind for r in records} == {"Leak_DefinitelyLost"}, "the workload leaks plainly"
    rules: Counter[str] = Counter()
    ours = Counter((tuple(vg.ubt_frames(s["stack"], rules)), s["bytes"], s["count"])
                   for s in stacks)
    theirs = Counter((tuple(vg.valgrind_frames(r, rules)), r.bytes, r.blocks) for r in records)
    assert ours == theirs
    assert by_function([(s["stack"], s["bytes"], s["count"]) for s in stacks]) == EXPECTED
    # each rule applies once per record of its kind, and every record is from main or a thread
    bottoms = Counter(r.frames[-1].fn for r in records)
    assert bottoms["main"] + bottoms["clone"] == len(records)
    assert rules == {vg.BELOW_MAIN: bottoms["main"], vg.CLONE: bottoms["clone"],
                     vg.VG_ALLOCATOR_CHAIN: sum(r.frames[1].fn == "posix_memalign"
                                                for r in records)}
    c = counts(stderr)
    assert c["lost snapshots"] == c["truncated stacks"] == 0
    assert c["allocations not tracked (map full)"] == 0


def test_kernel_walks_equal_user_walks(ubt: Any, fixture_build: Any) -> None:
    """Round 1 is unwound in user space (cold paths), rounds 2-3 in the kernel: the same stack
    ids, so every stack's count is three times the table's."""
    program = fixture_build.program_path("leaky", "O2-nofp")
    stacks, stderr = leak_json(ubt, f"{program} repeat 3")
    assert len(stacks) == 10  # as in one round: the kernel's stack ids are the user walks'
    assert by_function([(s["stack"], s["bytes"], s["count"]) for s in stacks], 3) == EXPECTED
    c = counts(stderr)
    per_round = 52  # allocations with a stack per round (leaked or not), see leaky.c
    assert c["stacks walked in the kernel"] >= 2 * per_round - 4
    assert c["snapshots unwound here"] <= per_round + 4
