"""Loading, warm-up, activation, rollback and removal against the real engine."""

from pathlib import Path

import numpy as np
import pytest
import redis

from groundwatch import keys
from groundwatch.ai import Engine
from groundwatch.cli import main
from loaders import LoaderError
from loaders.loader import LoadOptions, load, remove, rollback, stats
from loaders.registry import Registry
from tests import toymodels


def write(tmp_path: Path, name: str, blob: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write(tmp_path, "good.pt", toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata()))


def test_load_stores_warms_up_records_and_activates(engine: redis.Redis, good: Path) -> None:
    rec = load(engine, good, LoadOptions(name="ship", feeds=("s1",), batch=4))
    assert rec.label == "ship:1"
    assert engine.get(keys.active_model("s1")) == b"ship:1"
    meta = Engine(engine).model_meta(keys.model("s1", "ship", 1))
    assert meta["tag"] == "1" and int(meta["batchsize"]) == 4
    info = Engine(engine).model_info(keys.model("s1", "ship", 1))
    assert info.calls >= 2 and info.errors == 0  # the warm-up ran in the engine, batch 1 and 2
    assert Registry(engine).get("ship", 1).sha256 == rec.sha256


def test_the_stored_model_computes_what_torch_computes(engine: redis.Redis, good: Path) -> None:
    load(engine, good, LoadOptions(name="ship", feeds=("s1",)))
    tile = np.zeros((1, 1, 64, 64), np.uint16)
    tile[0, 0, 10, 30] = 5000
    out = Engine(engine).run(keys.model("s1", "ship", 1), tile, keys.model("s1", "ship", 1))
    assert out.shape == (1, 4, 6)
    np.testing.assert_allclose(out[0, 0], [26, 6, 34, 14, 0.9, 0], rtol=1e-6)


def test_multi_feed_copies_live_in_each_feed_slot(engine: redis.Redis, good: Path) -> None:
    load(engine, good, LoadOptions(name="ship", feeds=("a", "b")))
    for feed in ("a", "b"):
        assert engine.type(keys.model(feed, "ship", 1)) == b"AI__MODEL"
        assert engine.get(keys.active_model(feed)) == b"ship:1"


@pytest.mark.parametrize(
    ("module", "meta", "fragment"),
    [
        (toymodels.WrongShape(), toymodels.metadata(), "the contract is float32"),
        (toymodels.FloatOnly(), toymodels.metadata(), "warm-up failed"),
        (toymodels.BrightestPixel(cls=7), toymodels.metadata(), "class ids outside"),
    ],
)
def test_a_version_that_fails_its_warm_up_never_becomes_active(
    engine: redis.Redis, tmp_path: Path, good: Path, module: object, meta: dict, fragment: str
) -> None:
    load(engine, good, LoadOptions(name="ship", feeds=("s1",)))
    bad = write(tmp_path, "bad.pt", toymodels.archive(module, meta))  # type: ignore[arg-type]
    with pytest.raises(LoaderError, match=fragment):
        load(engine, bad, LoadOptions(name="ship", feeds=("s1",)))
    assert engine.get(keys.active_model("s1")) == b"ship:1"
    assert not engine.exists(keys.model("s1", "ship", 2))
    assert [r.version for r in Registry(engine).versions("ship")] == [1]


def test_not_torchscript_is_refused_before_the_engine_sees_it(engine: redis.Redis, tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="not a TorchScript archive"):
        load(engine, write(tmp_path, "x.pt", b"garbage"), LoadOptions(name="ship", feeds=("s1",)))
    assert engine.keys("*") == []


def test_rollback_and_remove(engine: redis.Redis, good: Path) -> None:
    for _ in range(3):
        load(engine, good, LoadOptions(name="ship", feeds=("s1",)))
    assert engine.get(keys.active_model("s1")) == b"ship:3"
    assert rollback(engine, "ship").label == "ship:2"
    assert engine.get(keys.active_model("s1")) == b"ship:2"
    with pytest.raises(LoaderError, match="is active"):
        remove(engine, "ship", 2)
    remove(engine, "ship", 3)
    assert not engine.exists(keys.model("s1", "ship", 3))
    assert rollback(engine, "ship").label == "ship:1"
    # version numbers are never reused, even after a removal
    assert load(engine, good, LoadOptions(name="ship", feeds=("s1",))).version == 4


def test_explicit_versions_are_immutable(engine: redis.Redis, good: Path) -> None:
    load(engine, good, LoadOptions(name="ship", feeds=("s1",), version=7))
    with pytest.raises(LoaderError, match="immutable"):
        load(engine, good, LoadOptions(name="ship", feeds=("s1",), version=7))
    assert load(engine, good, LoadOptions(name="ship", feeds=("s1",))).version == 8


def test_stats_and_cli(engine: redis.Redis, good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{engine.connection_pool.connection_kwargs['port']}/0"
    assert (
        main(["--redis-url", url, "load", str(good), "--name", "ship", "--feeds", "a,b", "--batch", "8"]) == 0
    )
    assert "ship:1 (active) on feeds a, b" in capsys.readouterr().out
    [row] = stats(engine)
    assert row.active and row.calls >= 4 and row.errors == 0
    assert main(["--redis-url", url, "model", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ship:1" in listing and "*" in listing
    assert main(["--redis-url", url, "model", "rollback", "ship"]) == 1
    assert "no earlier active version" in capsys.readouterr().err
