"""Runs the C++ unit tests of the engine's pure logic (batch picker, batch assembly, tensor
rules, v4 encodings), built by `make engine` as engine/build/gw_core_tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def test_core_units(engine_module: Path | None) -> None:
    if engine_module is None:
        pytest.fail("no engine build to take the unit-test binary from")
    binary = engine_module.parent / "gw_core_tests"
    assert binary.exists(), f"{binary} is missing; build it with `make engine`"
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "all core checks passed" in result.stdout
