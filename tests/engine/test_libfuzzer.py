"""The libFuzzer targets of engine/fuzz (tensor rules, the three RDB/RESTORE decoders, DAG and
command argument parsing), short:
each is built with ASan/UBSan, replays its kept corpus and every saved crash (regression inputs),
then fuzzes for a few seconds from it. `make fuzz` is the long campaign. Skipped, with the reason,
only when clang cannot be found or installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from groundwatch.settings import REPO_ROOT

FUZZ_DIR = REPO_ROOT / "engine" / "fuzz"
BUILD = REPO_ROOT / "engine" / "build-fuzz"
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ_DIR.glob("fuzz_*.cpp"))
FUZZ_SECONDS = 5


@pytest.fixture(scope="module")
def fuzzers() -> Path:
    # Also where clang++ exists: its libFuzzer runtime may not (ensure-clang.sh checks both).
    setup = subprocess.run([REPO_ROOT / "scripts" / "ensure-clang.sh"], capture_output=True, text=True)
    if setup.returncode != 0 or shutil.which("clang++") is None:
        pytest.skip(
            f"clang++ (libFuzzer) is not installed and could not be installed: {setup.stderr.strip()}"
        )
    build = subprocess.run(
        [FUZZ_DIR / "build.sh", BUILD], capture_output=True, text=True, env={**os.environ, "JOBS": "2"}
    )
    assert build.returncode == 0, build.stderr
    return BUILD


def test_every_target_has_a_corpus() -> None:
    assert TARGETS == ["dag", "rdb_legacy", "rdb_model", "rdb_script", "rdb_tensor", "tensor"]
    for target in TARGETS:
        assert any((FUZZ_DIR / "corpus" / target).glob("seed-*")), target


# The first test also builds every target (the fixture): six ASan/UBSan links from scratch take
# longer than the default timeout on a small machine.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(fuzzers: Path, target: str, tmp_path: Path) -> None:
    binary = fuzzers / f"fuzz_{target}"
    corpus = FUZZ_DIR / "corpus" / target
    # Replay: every kept input, crashes included, runs clean.
    replay = subprocess.run(
        [binary, "-runs=0", corpus], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert replay.returncode == 0, replay.stderr[-4000:]
    assert "INITED" in replay.stderr
    # A short fuzz from the corpus; new inputs stay in tmp_path (the kept corpus is `make fuzz`'s).
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = subprocess.run(
        [
            binary,
            f"-max_total_time={FUZZ_SECONDS}",
            "-max_len=4096",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/crash-",
            scratch,
            corpus,
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
        cwd=tmp_path,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert run.returncode == 0 and not crashes, (
        f"fuzz_{target} found {crashes}; copy them to {corpus} as regression inputs and fix:\n"
        + run.stderr[-4000:]
    )
    assert "Done" in run.stderr
