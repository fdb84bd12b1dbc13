"""groundwatch.ai as the one door: one DAG decoder, refused commands as EngineError, one table
that classifies engine failures (against the real engine)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from groundwatch import ai, keys
from groundwatch.ai import DagError, Engine, EngineError, Failure, classify
from groundwatch.cli import main
from tests import toymodels


@pytest.mark.parametrize(
    ("message", "op", "kind"),
    [
        ("ERR model key is empty", -1, Failure.MODEL_MISSING),
        ("TIMEDOUT: the engine timed out the request", -1, Failure.TIMEOUT),
        ("OOM command not allowed when used memory > 'maxmemory'.", -1, Failure.OVERLOAD),
        (
            "ERR the queue of device CPU is full (MAX_QUEUE_LENGTH 2 requests); retry later",
            -1,
            Failure.OVERLOAD,
        ),
        ("Redis is loading the dataset in memory", -1, Failure.UNAVAILABLE),
        ("You can't write against a read only replica.", -1, Failure.UNAVAILABLE),
        ("ERR [enforce fail] DefaultCPUAllocator: can't allocate memory", 1, Failure.OUT_OF_MEMORY),
        ("ERR data length does not match tensor shape and type", 0, Failure.POISON_INPUT),
        ("ERR data length does not match tensor shape and type", -1, Failure.POISON_INPUT),
        ("ERR anything at all", 0, Failure.POISON_INPUT),  # TENSORSET refused the tile
        ("ERR The following operation failed in the TorchScript interpreter", 1, Failure.MODEL_ERROR),
        ("ERR something new", -1, Failure.OTHER),
    ],
)
def test_one_table_classifies_engine_failures(message: str, op: int, kind: Failure) -> None:
    assert classify(message, op) is kind
    err = DagError(message, op)
    assert err.kind is kind and err.poison is (kind is Failure.POISON_INPUT)
    assert err.model_missing is (kind is Failure.MODEL_MISSING)
    faults = {
        Failure.MODEL_MISSING,
        Failure.TIMEOUT,
        Failure.OVERLOAD,
        Failure.UNAVAILABLE,
        Failure.OUT_OF_MEMORY,
    }
    assert kind.system_fault is (kind in faults) and err.system_fault is kind.system_fault


def test_run_of_a_refused_command_is_an_engine_error_with_the_engines_message(engine: redis.Redis) -> None:
    tile = np.zeros((1, 1, 64, 64), np.uint16)
    with pytest.raises(EngineError, match="model key is empty") as info:
        Engine(engine).run(keys.model("f", "nosuch", 1), tile, keys.model("f", "nosuch", 1))
    assert info.value.kind is Failure.MODEL_MISSING


def test_run_and_the_consumers_dags_decode_the_same_reply(engine: redis.Redis) -> None:
    key = keys.model("f", "toy", 1)
    Engine(engine).model_store(key, toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata()))
    tile = np.zeros((1, 64, 64), np.uint16)
    tile[0, 10, 20] = 5000
    one = Engine(engine).run(key, tile[np.newaxis], key)
    (many,) = ai.execute_dags(engine, key, key, [tile])
    assert isinstance(many, np.ndarray) and np.array_equal(one, many) and one[0, 0, 4] > 0
    # a tile the model's input cannot take: the model raises (op 1), as a DagError
    (bad,) = ai.execute_dags(engine, key, key, [np.zeros((1, 2, 3, 4), np.uint16)])
    assert isinstance(bad, DagError) and bad.op == 1 and bad.kind is Failure.MODEL_ERROR


def test_a_refused_command_shows_no_traceback_in_the_cli(
    engine: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{engine.connection_pool.connection_kwargs['port']}/0"
    assert main(["--redis-url", url, "evaluate", "nosuch:1", "--scenes", "1", "--size", "64"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no version 1" in err
