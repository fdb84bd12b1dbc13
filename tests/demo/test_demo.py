"""The demo end to end, small: a scene through the watch folder, two consumers, scored against truth."""

import subprocess
from pathlib import Path

import pytest

from demo.run import run_demo, score_scene
from groundwatch.settings import Settings


def test_score_scene_matches_one_to_one_by_class() -> None:
    truth = [
        ("ship", (0.0, 0.0, 10.0, 10.0)),
        ("ship", (50.0, 50.0, 60.0, 60.0)),
        ("platform", (0, 0, 10, 10)),
    ]
    found = [
        ("ship", 0.9, (1.0, 1.0, 10.0, 10.0)),  # matches the first ship
        ("ship", 0.8, (1.0, 0.0, 10.0, 11.0)),  # a duplicate of it: a false positive
        ("platform", 0.7, (100.0, 100.0, 110.0, 110.0)),  # nowhere near the platform
    ]
    scores = score_scene(truth, found)
    assert (scores["ship"].truth, scores["ship"].detected, scores["ship"].matched) == (2, 2, 1)
    assert (scores["platform"].matched, scores["platform"].recall) == (0, 0.0)


def test_demo_finds_the_objects_and_leaves_nothing_running(
    tmp_path: Path, engine_module: Path | None
) -> None:
    if engine_module is None:
        pytest.skip("the demo needs the engine")
    settings = Settings(data_dir=tmp_path, engine_module=engine_module)
    summary = run_demo(settings, scenes=1, size_px=1024, seed=9100)
    assert summary.tiles == 9 and summary.dead_letters == 0
    for name, c in summary.per_class.items():
        assert c.recall >= 0.9, (name, c)
        assert c.precision >= 0.6, (name, c)
    assert {p.suffix for p in summary.outputs} == {".geojson", ".png"}
    assert all(p.stat().st_size > 0 for p in summary.outputs)
    # the demo's redis-server is gone
    pids = subprocess.run(["pgrep", "-f", str(tmp_path / "demo" / "redis")], capture_output=True, text=True)
    assert pids.stdout.strip() == ""
