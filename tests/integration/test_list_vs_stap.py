"""`ubt list`'s C type names against SystemTap's own (``stap -L``), which they imitate:
typedefs, const/volatile placement, pointers to pointers, arrays, structs, enums, function
pointers. Runs where systemtap is installed (bench/bench_list.py installs it) and can work here;
stap needs a kernel build tree, given with ``-r`` (Debian's linux-headers-*-amd64).
"""
from __future__ import annotations

import glob
import re
import shutil
import subprocess
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]

_VAR = re.compile(r"\$(\w+):(.*?)(?= \$\w+:|$)")


def stap_kernel_dir() -> str | None:
    """A kernel build tree stap accepts with ``-r``, None without stap or headers."""
    if shutil.which("stap") is None:
        return None
    trees = sorted(glob.glob("/usr/src/linux-headers-*-amd64"))
    return trees[-1] if trees else None


def stap_functions(kernel: str, binary: str) -> dict[str, dict[str, str]]:
    """``stap -L process(BIN).function("*")``: function → {variable: type}."""
    out = subprocess.run(["stap", "-r", kernel, "-L", f'process("{binary}").function("*")'],
                         capture_output=True, text=True, timeout=300).stdout
    found: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        m = re.match(r'process\(".*"\)\.function\("([^@"]+)[^"]*"\)(.*)$', line)
        if m:
            found[m[1]] = dict(_VAR.findall(m[2].strip()))
    return found


def test_parameter_types_match_stap(fixture_build: Any, ubt: Any) -> None:
    kernel = stap_kernel_dir()
    if kernel is None:
        pytest.skip("SKIPPED LOUDLY: systemtap or linux-headers-*-amd64 missing "
                    "(run bench/bench_list.py once, or apt-get install systemtap)")
    binary = str(fixture_build.program_path("vars", "O2-nofp"))
    stap = stap_functions(kernel, binary)
    proc = ubt.run("list", binary, "*")
    assert proc.returncode == 0, proc.stderr
    compared = 0
    for line in proc.stdout.splitlines():
        m = re.match(r'process\(".*"\)\.function\("([^@"]+)[^"]*"\)(.*)$', line)
        assert m, line
        if m[1] not in stap:
            continue
        ours = dict(_VAR.findall(m[2].strip()))
        for name, typ in ours.items():
            assert stap[m[1]].get(name) == typ, f"{m[1]} ${name}: ubt {typ!r}, stap {stap[m[1]]}"
            compared += 1
    assert compared >= 12, f"only {compared} parameters compared"
