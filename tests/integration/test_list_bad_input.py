"""`ubt list` on bad input: one clear line on stderr, a non-zero exit, never a traceback.

- a binary without debug info: the message names its build-id and debuginfod;
- a line without code: the message names the nearest probe-able lines;
- an unknown function: the nearest names; a malformed spec: a usage error (exit 2).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from symbolizer.elf import ElfImage
from tests.integration.test_bad_input import assert_clean_failure

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def vars_path(fixture_build: Any) -> str:
    return str(fixture_build.program_path("vars", "O2-nofp"))


def test_no_debug_info_names_the_build_id(ubt: Any, vars_path: str, tmp_path: Path) -> None:
    bare = tmp_path / "vars-bare"
    shutil.copy(vars_path, bare)
    subprocess.run(["strip", "--strip-debug", str(bare)], check=True)
    line = assert_clean_failure(ubt.run("list", str(bare), "fx_walk:*"), "no debug info")
    build_id = ElfImage(str(bare)).build_id
    assert build_id and build_id in line and "DEBUGINFOD_URLS" in line, line


def test_line_without_code_names_the_nearest_lines(ubt: Any, vars_path: str) -> None:
    listed = ubt.run("list", vars_path, "fx_walk:*", "--format", "json")
    lines = sorted(json.loads(x)["line"] for x in listed.stdout.splitlines())
    missing = next(n for n in range(lines[0], lines[-1]) if n not in lines)
    line = assert_clean_failure(ubt.run("list", vars_path, f"fx_walk:{missing}"), "no code")
    named = [int(n) for n in re.findall(r"\d+", line.split("nearest:")[1])]
    assert named and set(named) <= set(lines), line
    below = max(n for n in lines if n < missing)
    above = min(n for n in lines if n > missing)
    assert below in named or above in named, line


def test_unknown_function_names_the_nearest(ubt: Any, vars_path: str) -> None:
    line = assert_clean_failure(ubt.run("list", vars_path, "fx_wlak:*"), "unknown function")
    assert "fx_walk" in line.split("nearest:")[1], line


def test_malformed_spec_is_a_usage_error(ubt: Any, vars_path: str) -> None:
    proc = ubt.run("list", vars_path, "fx_walk:abc")
    assert_clean_failure(proc, "malformed spec")
    assert proc.returncode == 2


def test_inline_only_function_is_found_by_name(ubt: Any, vars_path: str) -> None:
    """fx_scaled has no symbol (always inlined): the DWARF name index finds it."""
    proc = ubt.run("list", vars_path, "fx_scaled")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("$pt:struct fx_point const* $factor:int"), proc.stdout
