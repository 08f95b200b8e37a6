"""Integration tests: the ubt CLI against oracles (gdb, eu-addr2line, llvm-symbolizer).

Shared constants about the fixture programs live here so test modules need not import conftest.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURES_BUILD_PY = REPO / "fixtures" / "build.py"
FIXTURE_SRC = REPO / "fixtures" / "src"


def load_fixture_builder() -> Any:
    """fixtures/build.py as a module (fixtures/ is not a package); loaded once per process."""
    mod = sys.modules.get("ubt_fixture_build")
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location("ubt_fixture_build", FIXTURES_BUILD_PY)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ubt_fixture_build"] = mod
    spec.loader.exec_module(mod)
    return mod


fixture_builder = load_fixture_builder()
VARIANTS: tuple[str, ...] = tuple(fixture_builder.VARIANTS)
#: The fixture programs that block at a known place (``hits`` runs to completion: see
#: test_process_vs_gdb.py).
PROGRAMS: tuple[str, ...] = tuple(fixture_builder.BLOCKING_PROGRAMS)
