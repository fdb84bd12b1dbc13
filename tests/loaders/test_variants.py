"""Variants against the real engine: `load --optimize`, int8 files from `groundwatch quantize`,
the agreement check that guards their activation, and `evaluate NAME:VERSION`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis

from groundwatch import keys
from groundwatch.ai import Engine
from groundwatch.cli import main
from loaders import LoaderError
from loaders.loader import LoadOptions, load
from loaders.registry import Registry
from loaders.variants import agreement
from models.archive import SHIPPED_MODEL
from models.quantize import METHOD, QuantizeConfig, quantize_file, sha256_of
from models.scenes import sample_tiles
from tests import toymodels
from tests.consumers import helpers

SAMPLES = sample_tiles(8)  # what `groundwatch generate --sample-tiles` writes


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "detector-int8.pt"
    quantize_file(SHIPPED_MODEL, out, QuantizeConfig(calibration_tiles=32))
    return out


def url_of(client: redis.Redis) -> str:
    return f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"


def test_agreement_measure() -> None:
    a = np.zeros((2, 4, 6), np.float32)
    a[0, 0] = [10, 10, 20, 20, 0.9, 0]
    a[0, 1] = [50, 50, 60, 60, 0.8, 1]
    b = a.copy()
    b[0, 0, 4] = 0.85  # same box, score moved
    b[0, 1, 5] = 0  # same box, other class: no match
    got = agreement(a, b, 0.5)
    assert (got.source_detections, got.variant_detections, got.matched) == (2, 2, 1)
    assert got.fraction == 0.5 and abs(got.mean_score_delta - 0.05) < 1e-6
    assert agreement(np.zeros((1, 4, 6)), np.zeros((1, 4, 6)), 0.5).fraction == 1.0


def test_load_optimize_is_a_variant_of_the_same_file(engine: redis.Redis) -> None:
    first = load(engine, SHIPPED_MODEL, LoadOptions(name="ship", feeds=("s1",)))
    assert first.provenance["optimized"] is False
    rec = load(
        engine, SHIPPED_MODEL, LoadOptions(name="ship", feeds=("s1",), optimize=True, compare_samples=SAMPLES)
    )
    assert rec.label == "ship:2" and engine.get(keys.active_model("s1")) == b"ship:2"
    prov = rec.provenance
    assert prov["optimized"] is True and prov["optimize_status"] == "ok"
    assert prov["source_version"] == "ship:1" and "OPTIMIZE" in prov["method"]
    assert prov["agreement"]["passed"] and prov["agreement"]["fraction"] >= 0.99
    assert prov["agreement"]["source_detections"] > 0
    key = keys.model("s1", "ship", 2)
    assert Engine(engine).optimize_state(key) == (True, "ok")
    assert Engine(engine).model_blob(key) == SHIPPED_MODEL.read_bytes()  # the original blob
    assert Registry(engine).get("ship", 2).provenance == prov


def test_int8_variant_found_from_provenance_and_activated(engine: redis.Redis, int8_file: Path) -> None:
    load(engine, SHIPPED_MODEL, LoadOptions(name="ship", feeds=("s1",)))
    rec = load(engine, int8_file, LoadOptions(name="ship", feeds=("s1",), compare_samples=SAMPLES))
    prov = rec.provenance
    assert prov["source_version"] == "ship:1" and prov["method"] == METHOD
    assert prov["source_sha256"] == sha256_of(SHIPPED_MODEL)
    assert prov["agreement"]["fraction"] >= 0.9 and prov["agreement"]["passed"]
    assert engine.get(keys.active_model("s1")) == b"ship:2"


def test_variant_below_the_bound_is_stored_but_not_active(engine: redis.Redis, int8_file: Path) -> None:
    load(engine, SHIPPED_MODEL, LoadOptions(name="ship", feeds=("s1",)))
    with pytest.raises(LoaderError, match=r"ship:2 is a variant of ship:1 .*mean score delta 0\.0\d+"):
        load(
            engine,
            int8_file,
            LoadOptions(name="ship", feeds=("s1",), max_score_delta=0.0, compare_samples=SAMPLES),
        )
    assert engine.get(keys.active_model("s1")) == b"ship:1"
    stored = Registry(engine).get("ship", 2)
    assert stored.provenance["agreement"]["passed"] is False
    assert engine.exists(keys.model("s1", "ship", 2))


def test_explicit_variant_that_disagrees(engine: redis.Redis, tmp_path: Path) -> None:
    meta = toymodels.metadata(tile_size=512)
    ships = tmp_path / "ships.pt"
    ships.write_bytes(toymodels.archive(toymodels.BrightestPixel(cls=0), meta))
    platforms = tmp_path / "platforms.pt"
    platforms.write_bytes(toymodels.archive(toymodels.BrightestPixel(cls=1), meta))
    load(engine, ships, LoadOptions(name="toy", feeds=("a",)))
    toys = sample_tiles(4, 512)
    with pytest.raises(LoaderError, match=r"agreement 0\.000 \(0 of [1-9]\d* source"):
        load(
            engine,
            platforms,
            LoadOptions(name="toy", feeds=("a",), variant_of="toy:1", agree=0.5, compare_samples=toys),
        )
    assert engine.get(keys.active_model("a")) == b"toy:1"
    # the same file as its own variant agrees exactly
    rec = load(
        engine,
        ships,
        LoadOptions(name="toy", feeds=("a",), variant_of="toy:1", agree=1.0, compare_samples=toys),
    )
    assert rec.provenance["agreement"]["fraction"] == 1.0
    with pytest.raises(LoaderError, match="NAME:VERSION"):
        load(engine, ships, LoadOptions(name="toy", feeds=("a",), variant_of="toy:x"))


def test_int8_whose_source_is_not_registered(engine: redis.Redis, int8_file: Path) -> None:
    with pytest.raises(LoaderError, match="not registered as ship"):
        load(engine, int8_file, LoadOptions(name="ship", feeds=("s1",)))
    assert not Registry(engine).versions("ship")
    rec = load(engine, int8_file, LoadOptions(name="ship", feeds=("s1",), activate=False))
    assert "source_version" not in rec.provenance and rec.provenance["method"] == METHOD


def test_cli_load_optimize_and_evaluate_a_version(
    engine: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = url_of(engine)
    samples = tmp_path / "samples.npy"
    assert main(["generate", "--sample-tiles", str(samples), "--count", "8", "--size", "512"]) == 0
    assert np.array_equal(np.load(samples), SAMPLES)
    assert main(["--redis-url", url, "load", str(SHIPPED_MODEL), "--name", "ship", "--feeds", "s1"]) == 0
    assert (
        main(
            [
                "--redis-url",
                url,
                "load",
                str(SHIPPED_MODEL),
                "--name",
                "ship",
                "--optimize",
                "--agree",
                "0.95",
                "--compare-samples",
                str(samples),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "optimized in the engine: yes (ok)" in out and "variant of ship:1" in out
    args = ["--scenes", "1", "--size", "512", "--json"]
    assert main(["--redis-url", url, "evaluate", "ship:2", *args]) == 0
    optimised = json.loads(capsys.readouterr().out)
    assert optimised["runs_in"].startswith("engine") and "optimized=True" in optimised["runs_in"]
    assert main(["--redis-url", url, "evaluate", "ship:1", *args]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["runs_in"].startswith("in-process")
    for name in ("ship", "platform"):
        a, b = optimised["classes"][name]["ap"], plain["classes"][name]["ap"]
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 0.005
    assert main(["--redis-url", url, "model", "list"]) == 0
    listing = capsys.readouterr().out
    assert "optimized, variant of ship:1 (agreement 1.0)" in listing
    assert main(["--redis-url", url, "evaluate", "nosuch:1", *args]) == 1
    assert "no version 1" in capsys.readouterr().err


def test_a_variant_is_compared_on_the_feeds_frames_or_refused_without_samples(
    engine: redis.Redis, tmp_path: Path
) -> None:
    meta = toymodels.metadata()  # 64 px tiles
    ships = toymodels.archive(toymodels.BrightestPixel(cls=0), meta)
    platforms = toymodels.archive(toymodels.BrightestPixel(cls=1), meta)
    path_s, path_p = tmp_path / "ships.pt", tmp_path / "platforms.pt"
    path_s.write_bytes(ships)
    path_p.write_bytes(platforms)
    load(engine, path_s, LoadOptions(name="toy", feeds=("f",)))
    with pytest.raises(LoaderError, match=r"--compare-samples FILE\.npy"):
        load(engine, path_p, LoadOptions(name="toy", feeds=("f",), variant_of="toy:1"))
    assert engine.get(keys.active_model("f")) == b"toy:1"
    arr = helpers.scene_array(64, 128, {(10, 10): 60000, (30, 100): 61000})
    helpers.publish(engine, "f", helpers.scene_frames("S", arr))
    with pytest.raises(LoaderError, match=r"agreement 0\.000 \(0 of [1-9]"):  # the frames were used
        load(engine, path_p, LoadOptions(name="toy", feeds=("f",), variant_of="toy:1"))
    rec = load(engine, path_s, LoadOptions(name="toy", feeds=("f",), variant_of="toy:1", agree=1.0))
    assert rec.provenance["agreement"]["tiles"] == len(helpers.scene_frames("S", arr))
