"""Auto-batching (BATCHSIZE / MINBATCHSIZE / MINBATCHTIMEOUT) with concurrent clients, request
TIMEOUTs, and DAG model ops taking part in batches. No wall-clock assertions: MINBATCHSIZE
without a timeout makes merging deterministic, and batch sizes are read back through AI.INFO."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from engine_helpers import DOUBLE, SUM0, err


def client(r: redis.Redis) -> redis.Redis:
    return redis.Redis(port=r.connection_pool.connection_kwargs["port"], socket_timeout=60)


def info(r: redis.Redis, key: str) -> dict[bytes, Any]:
    reply = r.execute_command("AI.INFO", key)
    return dict(zip(reply[::2], reply[1::2], strict=False))


def run_concurrently(fns: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(fns)

    def wrap(i: int) -> None:
        try:
            results[i] = fns[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


Outcome = tuple[Any, list[int]]


def execute_fn(
    r: redis.Redis, i: int, rows: int = 1, cols: int = 3, model: str = "m"
) -> Callable[[], Outcome]:
    def fn() -> Outcome:
        c = client(r)
        values = [i * 100 + j for j in range(rows * cols)]
        c.execute_command("AI.TENSORSET", f"in{i}", "FLOAT", rows, cols, "VALUES", *values)
        reply = c.execute_command("AI.MODELEXECUTE", model, "INPUTS", 1, f"in{i}", "OUTPUTS", 1, f"out{i}")
        out = c.execute_command("AI.TENSORGET", f"out{i}", "META", "VALUES")
        c.close()
        assert reply == b"OK"
        return out, values

    return fn


def test_minbatchsize_merges_concurrent_requests_into_one_batch(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 8, "MINBATCHSIZE", 4, "BLOB", DOUBLE
    )
    results = run_concurrently([execute_fn(engine, i) for i in range(4)])
    for res in results:
        assert not isinstance(res, Exception), res
        (meta, values) = res
        assert meta[:4] == [b"dtype", b"FLOAT", b"shape", [1, 3]]
        assert [float(v) for v in meta[5]] == [2 * v for v in values]
    d = info(engine, "m")
    assert d[b"calls"] == 1 and d[b"samples"] == 4
    assert d[b"batches"] == 1 and float(d[b"mean_batch_size"]) == 4.0


def test_many_clients_batch_sizes_add_up(engine: redis.Redis) -> None:
    engine.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 8, "BLOB", DOUBLE)
    before = engine.info("modules").get("ai_CPU_batches", 0)

    def many(i: int) -> Callable[[], object]:
        def fn() -> object:
            for k in range(10):
                out, values = execute_fn(engine, i * 10 + k, rows=1 + (k % 2))()
                assert [float(v) for v in out[5]] == [2 * v for v in values]
            return True

        return fn

    results = run_concurrently([many(i) for i in range(8)])
    assert all(r is True for r in results), results
    d = info(engine, "m")
    assert d[b"samples"] == 8 * (5 * 1 + 5 * 2)
    assert 1 <= d[b"calls"] <= 80
    # Each batch holds at most BATCHSIZE samples.
    assert d[b"samples"] <= 8 * d[b"calls"]
    assert engine.info("modules")["ai_CPU_batches"] - before == d[b"calls"]


def test_minbatchtimeout_releases_a_lone_request(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE",
        "m",
        "TORCH",
        "CPU",
        "BATCHSIZE",
        8,
        "MINBATCHSIZE",
        4,
        "MINBATCHTIMEOUT",
        50,
        "BLOB",
        DOUBLE,
    )
    out, values = execute_fn(engine, 1)()
    assert [float(v) for v in out[5]] == [2 * v for v in values]
    d = info(engine, "m")
    assert d[b"calls"] == 1 and d[b"samples"] == 1


def test_waiting_request_shows_in_queue_depth_until_batch_fills(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 4, "MINBATCHSIZE", 2, "BLOB", DOUBLE
    )
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(execute_fn(engine, 1)()))
    t.start()
    wait_until(lambda: info(engine, "m")[b"queue_depth"] == 1)
    assert engine.info("modules")["ai_CPU_queue_depth"] == 1
    assert info(engine, "m")[b"calls"] == 0
    _out, _values = execute_fn(engine, 2)()
    t.join(60)
    assert len(results) == 1 and not isinstance(results[0], Exception)
    d = info(engine, "m")
    assert d[b"calls"] == 1 and d[b"samples"] == 2 and d[b"queue_depth"] == 0


def test_request_at_batchsize_runs_alone(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHSIZE", 2, "BLOB", DOUBLE
    )
    out, _values = execute_fn(engine, 1, rows=3)()
    assert out[3] == [3, 3]
    assert info(engine, "m")[b"samples"] == 3


def test_incompatible_shapes_are_not_merged(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE",
        "m",
        "TORCH",
        "CPU",
        "BATCHSIZE",
        8,
        "MINBATCHSIZE",
        2,
        "MINBATCHTIMEOUT",
        100,
        "BLOB",
        DOUBLE,
    )
    results = run_concurrently([execute_fn(engine, 1, cols=3), execute_fn(engine, 2, cols=4)])
    for res in results:
        assert not isinstance(res, Exception), res
    d = info(engine, "m")
    assert d[b"calls"] == 2 and d[b"samples"] == 2


def test_wrong_output_batch_size_fails_every_request(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 4, "MINBATCHSIZE", 2, "BLOB", SUM0
    )
    results = run_concurrently([execute_fn(engine, 1), execute_fn(engine, 2)])
    for res in results:
        assert isinstance(res, redis.ResponseError)
        assert err(res) == "Model did not generate the expected batch size"
    assert engine.exists("out1", "out2") == 0
    assert info(engine, "m")[b"errors"] == 1


def test_timeout_while_waiting_in_queue(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 4, "MINBATCHSIZE", 2, "BLOB", DOUBLE
    )
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 1, 3)
    reply = engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y", "TIMEOUT", 50)
    assert reply == b"TIMEDOUT"
    assert engine.exists("y") == 0
    reply = engine.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "x",
        "PERSIST",
        1,
        "y",
        "TIMEOUT",
        50,
        "|>",
        "AI.MODELEXECUTE",
        "m",
        "INPUTS",
        1,
        "x",
        "OUTPUTS",
        1,
        "y",
    )
    assert reply == b"TIMEDOUT"
    assert engine.exists("y") == 0
    assert info(engine, "m")[b"calls"] == 0


def test_dag_model_ops_take_part_in_batching(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 4, "MINBATCHSIZE", 3, "BLOB", DOUBLE
    )

    def dag(i: int) -> Callable[[], object]:
        def fn() -> object:
            c = client(engine)
            reply = c.execute_command(
                "AI.DAGEXECUTE",
                "ROUTING",
                "x",
                "|>",
                "AI.TENSORSET",
                "a",
                "FLOAT",
                1,
                2,
                "VALUES",
                i,
                i + 1,
                "|>",
                "AI.MODELEXECUTE",
                "m",
                "INPUTS",
                1,
                "a",
                "OUTPUTS",
                1,
                "b",
                "|>",
                "AI.TENSORGET",
                "b",
                "VALUES",
            )
            c.close()
            return reply

        return fn

    results = run_concurrently([dag(1), dag(10), execute_fn(engine, 7, cols=2)])
    assert results[0] == [b"OK", b"OK", [b"2", b"4"]]
    assert results[1] == [b"OK", b"OK", [b"20", b"22"]]
    assert not isinstance(results[2], Exception)
    d = info(engine, "m")
    assert d[b"calls"] == 1 and d[b"samples"] == 3


@pytest.mark.parametrize("threads", ["2"])
def test_threads_per_queue_serve_concurrently(server_factory, threads: str) -> None:
    server = server_factory(module_args=("THREADS_PER_QUEUE", threads))
    r = redis.Redis(port=server.port, socket_timeout=60)
    r.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE)
    results = run_concurrently([execute_fn(r, i) for i in range(6)])
    for res in results:
        assert not isinstance(res, Exception), res
    assert info(r, "m")[b"calls"] == 6
    r.close()
    server.stop()


def test_client_disconnecting_while_blocked_is_harmless(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 4, "MINBATCHSIZE", 2, "BLOB", DOUBLE
    )
    engine.execute_command("AI.TENSORSET", "in1", "FLOAT", 1, 3, "VALUES", 1, 2, 3)
    gone = client(engine)
    conn = gone.connection_pool.get_connection("AI.MODELEXECUTE")
    conn.send_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "in1", "OUTPUTS", 1, "lost")
    wait_until(lambda: info(engine, "m")[b"queue_depth"] == 1)
    conn.disconnect()
    gone.close()
    out, values = execute_fn(engine, 2)()
    assert [float(v) for v in out[5]] == [2 * v for v in values]
    assert info(engine, "m")[b"samples"] == 2
    # The departed client's output is not written: nobody was there to be told about it.
    assert engine.exists("lost") == 0
    assert engine.ping()
