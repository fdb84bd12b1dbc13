"""Smoke tests for bench/alternatives.py: each alternative answers a handful of requests with a
tiny model, and its answers equal in-process torch. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import alternatives, common

SERVED = {"clients": 2, "seconds": 1.0, "threads": 1, "max_requests": 6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return common.save_standin(tmp_path_factory.mktemp("model") / "tiny.pt", width=8, k=10)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return common.make_tiles(4, bands=1, size=64)


@pytest.fixture(scope="module")
def expected(tiny: Path, tiles: np.ndarray) -> list[np.ndarray]:
    return alternatives.expected_outputs(tiny, tiles, threads=1)


def assert_served(row: dict[str, object]) -> None:
    assert not str(row["note"]).startswith(("skipped", "failed")), row["note"]
    assert row["errors"] == 0, row["note"]
    assert isinstance(row["requests"], int) and 0 < row["requests"] <= 6
    assert isinstance(row["throughput"], float) and row["throughput"] > 0
    assert isinstance(row["cpu_ms_per_tile"], float) and row["cpu_ms_per_tile"] > 0


def test_standin_keeps_the_detector_contract(tiny: Path, tiles: np.ndarray) -> None:
    module = common.load_model(tiny)
    out = common.infer(module, tiles)
    assert tiles.dtype == np.uint16
    assert out.shape == (4, 10, 6) and out.dtype == np.float32
    scores = out[:, :, 4]
    assert np.all(np.diff(scores, axis=1) <= 0), "rows sorted by score"
    assert np.all(out[:, :, 2] >= out[:, :, 0]) and np.all(out[:, :, 3] >= out[:, :, 1])
    # Batching does not change a tile's answer.
    for i in range(len(tiles)):
        assert alternatives.same_detections(
            common.live_rows(common.infer(module, tiles[i : i + 1])[0]), common.live_rows(out[i])
        )


def test_model_file_falls_back_to_the_standin_and_cleans_up(tiny: Path) -> None:
    with common.model_file(tiny) as (path, described):
        assert path == tiny and described == str(tiny)
    if not common.DETECTOR_PATH.exists():
        with common.model_file(None) as (path, described):
            assert path.exists() and "stand-in" in described
            torch.jit.load(str(path))
        assert not path.exists()


def test_raw_torch_rows(tiny: Path, tiles: np.ndarray) -> None:
    before = torch.get_num_threads()
    for batch in (1, 8):
        row = alternatives.raw_torch(tiny, tiles, batch=batch, seconds=1.0, threads=1, max_requests=3)
        assert row["requests"] == 3 and row["tiles"] == 3 * batch
        assert row["throughput"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["cpu_ms_per_tile"] > 0
    assert torch.get_num_threads() == before


@pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
    reason="bench extras not installed (pip install -e '.[bench]')",
)
def test_rest_endpoint_answers_like_torch(tiny: Path, tiles: np.ndarray, expected: list[np.ndarray]) -> None:
    assert_served(alternatives.rest_endpoint(tiny, tiles, expected=expected, **SERVED))  # type: ignore[arg-type]


def test_redis_queue_answers_like_torch(tiny: Path, tiles: np.ndarray, expected: list[np.ndarray]) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    assert_served(alternatives.redis_queue(tiny, tiles, expected=expected, **SERVED))  # type: ignore[arg-type]


def test_a_wrong_answer_fails_the_row(tiny: Path, tiles: np.ndarray, tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    other = common.save_standin(tmp_path / "other.pt", width=8, k=10, seed=1)
    wrong = alternatives.expected_outputs(other, tiles, threads=1)
    row = alternatives.redis_queue(tiny, tiles, expected=wrong, **SERVED)  # type: ignore[arg-type]
    assert row["errors"] > 0 and str(row["note"]).startswith("failed in warm-up")
    assert row["throughput"] is None


@pytest.mark.skipif(isinstance(alternatives._torchserve_tools(), str), reason="TorchServe or java missing")
def test_torchserve_answers_like_torch(tiny: Path, tiles: np.ndarray, expected: list[np.ndarray]) -> None:
    assert_served(alternatives.torchserve(tiny, tiles, expected=expected, **SERVED))  # type: ignore[arg-type]


def test_run_gives_rows_ratios_and_a_table(tiny: Path, tiles: np.ndarray, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    only = ["torch", "queue"] if shutil.which("redis-server") else ["torch"]
    result = alternatives.run(str(tiny), tiles, clients=2, seconds=0.5, threads=1, only=only, max_requests=4)
    names = [r["name"] for r in result["rows"]]
    assert names[:2] == ["raw torch, batch 1", "raw torch, batch 8"]
    assert result["rows"][1]["ratio"] == pytest.approx(1.0)
    assert all(r["ratio"] is not None and r["ratio"] > 0 for r in result["rows"])
    assert set(common.ROW_KEYS) <= set(result["rows"][0])
    table = result["table"].splitlines()
    assert len(table) == 2 + len(names) and table[0].startswith("| what |")
    common.write_json(tmp_path / "out.json", result)
    assert json.loads((tmp_path / "out.json").read_text())["tiles"] == [4, 1, 64, 64]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        alternatives.run(str(tiny), tiles, only=["nope"])


def test_skipped_rows_say_why_and_print() -> None:
    row = common.skipped("TorchServe, batch <= 8", "java is not on PATH")
    common.add_ratios([row], 10.0)
    assert row["ratio"] is None and row["note"] == "skipped: java is not on PATH"
    assert "| TorchServe, batch <= 8 | - | - | - | - | - |" in common.markdown_table([row])


def test_kill_group_ends_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = common.spawn(
        [
            sys.executable,
            "-c",
            (
                "import subprocess, sys, time; "
                f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                f"open({str(pidfile)!r}, 'w').write(str(c.pid)); time.sleep(60)"
            ),
        ]
    )
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    common.kill_group(proc)
    assert proc.poll() is not None
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "child outlived its group"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_script_prints_a_table(tiny: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(Path(alternatives.__file__)),
            "--model",
            str(tiny),
            "--tiles",
            "2",
            "--size",
            "64",
            "--seconds",
            "0.3",
            "--threads",
            "1",
            "--only",
            "torch",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "| raw torch, batch 8 |" in out.stdout


def test_cpu_seconds_counts_a_busy_child(tmp_path: Path) -> None:
    proc = common.spawn(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"]
    )
    try:
        before = common.cpu_seconds([proc.pid], this_process=False)
        time.sleep(1.0)
        used = common.cpu_seconds([proc.pid], this_process=False) - before
        assert used > 0.05
    finally:
        common.kill_group(proc)


def test_cpu_seconds_counts_a_child_that_ended(tmp_path: Path) -> None:
    """A child that starts and is reaped between two readings (redis-server's AOF rewrite or
    BGSAVE fork) counts: its time is in its parent's cutime/cstime by the second reading."""
    done = tmp_path / "done"
    parent = (
        "import pathlib, subprocess, sys, time\n"
        "time.sleep(0.3)\n"
        "subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.6: pass'], check=True)\n"
        f"pathlib.Path({str(done)!r}).touch()\n"
        "time.sleep(30)\n"
    )
    proc = common.spawn([sys.executable, "-c", parent])
    try:
        before = common.cpu_seconds([proc.pid], this_process=False)
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists()
        assert common.cpu_seconds([proc.pid], this_process=False) - before >= 0.55
    finally:
        common.kill_group(proc)
