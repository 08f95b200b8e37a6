"""`ubt process ... --print` on bad input: one clear line on stderr, a non-zero exit, never a
traceback; and a type the printer does not know printed as its name and address."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_process_vs_gdb import ubt_process

pytestmark = [pytest.mark.integration]


def one_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single error line of a failed run."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ubt: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def prog(fixture_build: Any) -> str:
    return str(fixture_build.program_path("vars", "O2-nofp"))


def test_unknown_variable_lists_those_in_scope(ubt: Any, prog: str) -> None:
    err = one_error(ubt.run("process", prog, "fx_heap", "--print", "$nope", "-c", "true"))
    assert err == "ubt: no variable $nope at fx_heap; in scope: $item $tag $letter $n"


def test_unknown_member_lists_the_members(ubt: Any, prog: str) -> None:
    err = one_error(ubt.run("process", prog, "fx_heap", "--print", "$item->nope", "-c", "true"))
    assert err.endswith("struct fx_named has no member 'nope'; members: label, where, id, "
                        "state, code, ratio")


@pytest.mark.parametrize("expr,says", [("$tag->x", "has no members"),
                                       ("$letter[1]", "is not an array or pointer"),
                                       ("$item.label", "has no members (use -> for a pointer)")])
def test_wrong_access(ubt: Any, prog: str, expr: str, says: str) -> None:
    assert says in one_error(ubt.run("process", prog, "fx_heap", "--print", expr, "-c", "true"))


def test_malformed_print_and_return_probe(ubt: Any, prog: str) -> None:
    err = one_error(ubt.run("process", prog, "fx_heap", "--print", "item", "-c", "true"), 2)
    assert "cannot parse --print 'item'" in err
    err = one_error(ubt.run("process", prog, "fx_heap%return", "--print", "$item", "-c",
                            "true"), 2)
    assert "return probe" in err


def test_line_without_code_names_the_nearest(ubt: Any, prog: str) -> None:
    listed = ubt.run("list", prog, "fx_heap:*", "--format", "json")
    lines = sorted(json.loads(ln)["line"] for ln in listed.stdout.splitlines())
    err = one_error(ubt.run("process", prog, "fx_heap@vars.c:1", "--print", "$item", "-c",
                            "true"))
    assert err == ("ubt: no probe-able line at vars.c:1 in fx_heap; nearest: "
                   + ", ".join(map(str, lines[:3])))


def test_no_debug_info_names_the_build_id(ubt: Any, prog: str, tmp_path: Path) -> None:
    bare = tmp_path / "vars-nodebug"
    shutil.copy(prog, bare)
    subprocess.run(["strip", "-g", str(bare)], check=True)
    build_id = subprocess.run(["readelf", "-n", str(bare)], capture_output=True, text=True,
                              check=True).stdout.split("Build ID: ")[1].split()[0]
    err = one_error(ubt.run("process", str(bare), "fx_heap", "--print", "$item", "-c", "true"))
    assert f"has no debug info (build-id {build_id})" in err
    assert "debuginfod" in err


def test_unknown_type_prints_its_name_and_address(ubt: Any, prog: str,
                                                  needs_root: None) -> None:
    """`_Complex double` is not a type the printer knows: the value is its type name and its
    address, which is `item` + 40 (label, where, id: 8 bytes each; state 4; code[8]; aligned
    to 8)."""
    proc = ubt_process(ubt, prog, ["fx_heap"], prog, "--print", "$item $item->ratio",
                       "--format", "json")
    hit = json.loads(proc.stdout.splitlines()[0])
    m = re.fullmatch(r"<complex double at (0x[0-9a-f]+)>", hit["vars"]["item->ratio"])
    assert m, hit["vars"]
    assert int(m[1], 16) == int(hit["vars"]["item"], 16) + 40
