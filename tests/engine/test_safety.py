"""Nothing a client sends can take the server down or make its data unloadable (issue 11):
one set of tensor invariants at every door (TENSORSET, DAG TENSORSET, model and script outputs,
RESTORE, RDB load, AOF replay), the TENSOR_MAX_BYTES limit, and hostile RESTORE payloads of all
three types answered with an error while the server keeps answering."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rdb_payloads as rp
import redis
from engine_helpers import DOUBLE, LINEAR, err

SCRIPT = """
def scalar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return torch.tensor(7)

def empty_slice(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0][:0]

def deep(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0].reshape([1] * 65)

def big(tensors: List[Tensor], keys: List[str], args: List[str]):
    return torch.zeros(1000)
"""
ENTRY_POINTS = ["scalar", "empty_slice", "deep", "big"]


def store_script(r: redis.Redis) -> None:
    r.execute_command(
        "AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", len(ENTRY_POINTS), *ENTRY_POINTS, "SOURCE", SCRIPT
    )


def wait_rewrite(r: redis.Redis) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)
    raise AssertionError("AOF rewrite did not finish")


# ---- TENSORSET ---------------------------------------------------------------------------------


def test_wrapping_shape_is_refused_and_server_survives(engine: redis.Redis) -> None:
    # 2^30 * 2^32 elements * 4 bytes = 2^64, which wrapped to 0 and passed as an empty BLOB.
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORSET", "t", "FLOAT", 1073741824, 4294967296, "BLOB", b"")
    assert "TENSOR_MAX_BYTES" in err(e.value)
    assert engine.exists("t") == 0
    # The same shape without data (zero-filled) and inside a DAG.
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORSET", "t", "FLOAT", 1073741824, 4294967296)
    assert "TENSOR_MAX_BYTES" in err(e.value)
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command(
            "AI.DAGEXECUTE",
            "PERSIST",
            1,
            "t",
            "|>",
            "AI.TENSORSET",
            "t",
            "FLOAT",
            1073741824,
            4294967296,
            "BLOB",
            b"",
        )
    assert "TENSOR_MAX_BYTES" in err(e.value)
    assert engine.exists("t") == 0
    assert engine.ping()


def test_rank_limit_and_scalars(engine: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORSET", "deep", "FLOAT", *([1] * 65))
    assert "more than 64 dimensions" in err(e.value)
    assert engine.exists("deep") == 0
    assert engine.execute_command("AI.TENSORSET", "deep", "FLOAT", *([1] * 64), "VALUES", 2) == b"OK"
    assert engine.execute_command("AI.TENSORGET", "deep", "META")[3] == [1] * 64
    # No dimensions: a scalar (what a script returning torch.tensor(7) stores), one element.
    assert engine.execute_command("AI.TENSORSET", "sc", "INT64", "VALUES", 7) == b"OK"
    assert engine.execute_command("AI.TENSORGET", "sc", "META", "VALUES") == [
        b"dtype",
        b"INT64",
        b"shape",
        [],
        b"values",
        [7],
    ]
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORSET", "sc", "INT64", "VALUES", 7, 8)
    assert err(e.value) == "wrong number of values was given in 'AI.TENSORSET' command"


def test_tensor_max_bytes_limit(server_factory) -> None:
    server = server_factory(module_args=("TENSOR_MAX_BYTES", "1024"))
    r = redis.Redis(port=server.port)
    assert r.info("modules")["ai_tensor_max_bytes"] == 1024
    assert r.execute_command("AI.TENSORSET", "ok", "FLOAT", 256) == b"OK"
    cases = [
        ["FLOAT", 257],
        ["FLOAT", 257, "BLOB", b"\x00" * 1028],
        ["INT8", 1025, "VALUES", *([1] * 1025)],
        ["STRING", 1, "VALUES", "x" * 1024],
        ["STRING", 2, "BLOB", b"x" * 1000 + b"\x00" + b"y" * 30 + b"\x00"],
    ]
    for args in cases:
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command("AI.TENSORSET", "big", *args)
        assert "TENSOR_MAX_BYTES (1024 bytes" in err(e.value), args
    assert r.exists("big") == 0
    # Script and model outputs over the limit fail that execution and store nothing.
    store_script(r)
    r.execute_command("AI.TENSORSET", "in", "FLOAT", 200)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.SCRIPTEXECUTE", "s", "big", "INPUTS", 1, "in", "OUTPUTS", 1, "out")
    assert "TENSOR_MAX_BYTES" in err(e.value)
    assert r.exists("out") == 0
    # A model output at the limit is stored.
    r.execute_command("AI.MODELSTORE", "dbl", "TORCH", "CPU", "BLOB", DOUBLE)
    r.execute_command("AI.TENSORSET", "in", "FLOAT", 256)
    assert r.execute_command("AI.MODELEXECUTE", "dbl", "INPUTS", 1, "in", "OUTPUTS", 1, "out") == b"OK"
    reply = r.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "in",
        "PERSIST",
        1,
        "o",
        "|>",
        "AI.SCRIPTEXECUTE",
        "s",
        "big",
        "INPUTS",
        1,
        "in",
        "OUTPUTS",
        1,
        "o",
    )
    assert isinstance(reply[0], redis.ResponseError) and "TENSOR_MAX_BYTES" in str(reply[0])
    assert r.exists("o") == 0
    r.close()
    server.stop()


def test_over_limit_tensor_in_rdb_still_loads_and_restore_is_refused(server_factory) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port)
    data = np.arange(1024, dtype=np.float32).tobytes()
    r.execute_command("AI.TENSORSET", "big", "FLOAT", 1024, "BLOB", data)
    r.execute_command("AI.TENSORSET", "small", "FLOAT", 2, "VALUES", 1, 2)
    payload = r.dump("big")
    r.save()
    r.close()
    server.stop()
    # The limit lowered below a tensor the RDB holds: the server starts and keeps the data
    # (documented in docs/engine-limits.md), logging a warning.
    limited = server_factory(module_args=("TENSOR_MAX_BYTES", "1024"), data_dir=server.data_dir)
    r = redis.Redis(port=limited.port)
    assert r.execute_command("AI.TENSORGET", "big", "BLOB") == data
    assert r.execute_command("AI.TENSORGET", "small", "VALUES") == [b"1", b"2"]
    assert "over TENSOR_MAX_BYTES" in Path(limited.log_path).read_text()
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert r.execute_command("AI.TENSORGET", "big", "BLOB") == data
    # A client's RESTORE is held to the limit.
    with pytest.raises(redis.ResponseError) as e:
        r.restore("copy", 0, payload)
    assert "Bad data format" in str(e.value)
    assert r.exists("copy") == 0 and r.ping()
    r.close()
    limited.stop()


# ---- SAVE / restart / AOF ----------------------------------------------------------------------


def test_65_dims_never_reach_the_rdb(server_factory) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port)
    with pytest.raises(redis.ResponseError):
        r.execute_command("AI.TENSORSET", "deep", "FLOAT", *([1] * 65))
    store_script(r)
    r.execute_command("AI.TENSORSET", "in", "FLOAT", 1, "VALUES", 3)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.SCRIPTEXECUTE", "s", "deep", "INPUTS", 1, "in", "OUTPUTS", 1, "deep")
    assert "more than 64 dimensions" in err(e.value)
    r.execute_command("AI.TENSORSET", "d64", "FLOAT", *([1] * 64), "VALUES", 3)
    assert r.exists("deep") == 0
    r.save()
    r.close()
    server.restart()
    r = redis.Redis(port=server.port)
    assert r.execute_command("AI.TENSORGET", "d64", "META", "VALUES")[3] == [1] * 64
    r.close()
    server.stop()


def test_script_outputs_survive_aof_rewrite_and_restart(server_factory) -> None:
    server = server_factory(extra_config=(("appendonly", "yes"), ("aof-use-rdb-preamble", "no")))
    r = redis.Redis(port=server.port)
    store_script(r)
    r.execute_command("AI.TENSORSET", "in", "FLOAT", 3, "VALUES", 1, 2, 3)
    # A zero-sized output is refused for that execution: TENSORSET replay would refuse it.
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.SCRIPTEXECUTE", "s", "empty_slice", "INPUTS", 1, "in", "OUTPUTS", 1, "empty")
    assert "zero-sized" in err(e.value)
    reply = r.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "in",
        "|>",
        "AI.SCRIPTEXECUTE",
        "s",
        "empty_slice",
        "INPUTS",
        1,
        "in",
        "OUTPUTS",
        1,
        "e",
        "|>",
        "AI.TENSORGET",
        "e",
        "META",
    )
    assert isinstance(reply[0], redis.ResponseError) and reply[1] == b"NA"
    assert r.exists("empty") == 0
    # A scalar output is stored, rewritten as a TENSORSET without dimensions, and replayed.
    r.execute_command("AI.SCRIPTEXECUTE", "s", "scalar", "INPUTS", 1, "in", "OUTPUTS", 1, "sc")
    before = r.execute_command("AI.TENSORGET", "sc", "META", "BLOB")
    assert before[3] == []
    r.bgrewriteaof()
    wait_rewrite(r)
    r.close()
    server.restart()
    r = redis.Redis(port=server.port)
    assert r.execute_command("AI.TENSORGET", "sc", "META", "BLOB") == before
    assert r.exists("empty") == 0
    r.close()
    server.stop()


# ---- Hostile RESTORE payloads ------------------------------------------------------------------


def restore_fails(r: redis.Redis, data: bytes) -> None:
    with pytest.raises(redis.ResponseError):
        r.restore("victim", 0, data, replace=True)
    assert r.ping()
    assert r.exists("victim") == 0


def truncations(type_name: str, fields: list[bytes]) -> list[bytes]:
    """The record cut after each field (the loader then meets the EOF opcode), and with no EOF at
    all. (Cutting bytes inside a field is not a short read in RESTORE: Redis reads the payload's
    version and checksum bytes as field data. The `string_claiming` cases cover that.)"""
    out = [rp.payload(type_name, fields[:k]) for k in range(len(fields))]
    return [*out, rp.payload(type_name, fields[:-1], eof=False)]


def test_hostile_tensor_payloads(engine: redis.Redis) -> None:
    good = rp.tensor_fields(2, 32, [2], b"\x00" * 8)
    assert engine.restore("ok", 0, rp.payload("AI_TENSOR", good)) == b"OK"
    bad: list[bytes] = truncations("AI_TENSOR", good)
    bad += [
        rp.payload("AI_TENSOR", rp.tensor_fields(2, 32, [1073741824, 4294967296], b"")),
        rp.payload("AI_TENSOR", rp.tensor_fields(2, 32, [1] * 65, b"\x00" * 4)),
        rp.payload("AI_TENSOR", rp.tensor_fields(2, 32, [0], b"")),
        rp.payload("AI_TENSOR", rp.tensor_fields(2, 32, [-1], b"")),
        rp.payload("AI_TENSOR", rp.tensor_fields(2, 32, [3], b"\x00" * 8)),
        rp.payload("AI_TENSOR", rp.tensor_fields(9, 32, [2], b"\x00" * 8)),
        rp.payload("AI_TENSOR", rp.tensor_fields(6, 8, [2], b"\x01\x07")),
        rp.payload("AI_TENSOR", rp.tensor_fields(7, 8, [2], b"ab\x00")),
        rp.payload("AI_TENSOR", [rp.uint(2), rp.uint(32), rp.uint(2**63), rp.uint(1)]),
        # A string where an integer is expected, and the reverse.
        rp.payload(
            "AI_TENSOR", [rp.string(b"2"), rp.uint(32), rp.uint(1), rp.uint(2), rp.string(b"\x00" * 8)]
        ),
        rp.payload("AI_TENSOR", [rp.uint(2), rp.uint(32), rp.uint(1), rp.uint(2), rp.uint(8)]),
        # A data length far past the end of the payload.
        rp.payload(
            "AI_TENSOR",
            [rp.uint(2), rp.uint(32), rp.uint(1), rp.uint(2), rp.string_claiming(2**40, b"\x00" * 8)],
        ),
        # STRING offsets missing.
        rp.payload("AI_TENSOR", [*rp.tensor_fields(7, 8, [2], b"a\x00b\x00"), rp.uint(0)]),
    ]
    for data in bad:
        restore_fails(engine, data)
    assert engine.execute_command("AI.TENSORGET", "ok", "META")[3] == [2]


def test_hostile_model_payloads(engine: redis.Redis) -> None:
    good = rp.model_fields(DOUBLE, chunks=3)
    assert engine.restore("ok", 0, rp.payload("AI__MODEL", good)) == b"OK"
    bad: list[bytes] = truncations("AI__MODEL", good)
    head = good[:10]
    bad += [
        # A blob length no chunk backs, chunks adding to more, a chunk count beyond the length.
        rp.payload("AI__MODEL", [*head, rp.uint(2**62), rp.uint(1), rp.string(DOUBLE)]),
        rp.payload("AI__MODEL", [*head, rp.uint(10), rp.uint(1), rp.string(DOUBLE)]),
        rp.payload("AI__MODEL", [*head, rp.uint(len(DOUBLE)), rp.uint(2**63), rp.string(DOUBLE)]),
        rp.payload("AI__MODEL", [*head[:6], rp.uint(2**40), *head[7:]]),
        rp.payload("AI__MODEL", [*head, rp.uint(len(DOUBLE)), rp.uint(1), rp.string_claiming(2**33, DOUBLE)]),
        # Wrong field types.
        rp.payload("AI__MODEL", [rp.string(b"TORCH"), *good[1:]]),
        rp.payload("AI__MODEL", [good[0], rp.uint(7), *good[2:]]),
        # A blob libtorch cannot load, from a client: refused like MODELSTORE.
        rp.payload("AI__MODEL", rp.model_fields(b"this is not a torchscript archive")),
        rp.payload("AI__MODEL", rp.model_fields(DOUBLE, device=b"NOSUCH:DEVICE\x00")),
    ]
    for data in bad:
        restore_fails(engine, data)
    assert engine.execute_command("AI.MODELGET", "ok", "BLOB") == DOUBLE


def test_hostile_script_payloads(engine: redis.Redis) -> None:
    source = b"def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n"
    good = rp.script_fields(source, [b"f"])
    assert engine.restore("ok", 0, rp.payload("AI_SCRIPT", good)) == b"OK"
    bad: list[bytes] = truncations("AI_SCRIPT", good)
    bad += [
        rp.payload("AI_SCRIPT", [*good[:3], rp.uint(2**64 - 1), *good[4:]]),
        rp.payload("AI_SCRIPT", [*good[:3], rp.uint(3), *good[4:]]),
        rp.payload("AI_SCRIPT", [rp.uint(1), *good[1:]]),
        rp.payload("AI_SCRIPT", [*good[:2], rp.string_claiming(2**35, source)]),
        rp.payload("AI_SCRIPT", rp.script_fields(b"def (:", [b"f"])),
    ]
    for data in bad:
        restore_fails(engine, data)
    assert engine.execute_command("AI.SCRIPTGET", "ok", "SOURCE") == source


# ---- Models the loader cannot restore ----------------------------------------------------------


def test_unloadable_models_in_rdb_do_not_stop_the_server(server_factory) -> None:
    config = (("rdbcompression", "no"), ("rdbchecksum", "no"))
    server = server_factory(extra_config=config)
    r = redis.Redis(port=server.port)
    r.execute_command("AI.MODELSTORE", "bad_blob", "TORCH", "CPU", "TAG", "blob", "BLOB", LINEAR)
    r.execute_command("AI.MODELSTORE", "bad_dev", "TORCH", "CPU:7", "TAG", "dev", "BLOB", DOUBLE)
    r.execute_command("AI.MODELSTORE", "good", "TORCH", "CPU", "BLOB", DOUBLE)
    store_script(r)
    r.execute_command("AI.SCRIPTSTORE", "bad_scr", "CPU:3", "ENTRY_POINTS", 1, "scalar", "SOURCE", SCRIPT)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 2, "VALUES", 1, 2)
    r.save()
    r.close()
    server.stop()
    # Edit the RDB (uncompressed, no checksum) as another libtorch or host would see it: one
    # model's blob becomes bytes no libtorch reads, the other's device a GPU this host lacks.
    rdb = server.data_dir / "dump.rdb"
    data = rdb.read_bytes()
    assert data.count(LINEAR) == 1 and data.count(b"CPU:7\x00") == 1
    garbage = bytes((b * 7 + 3) & 0xFF for b in LINEAR)
    data = data.replace(LINEAR, garbage)
    data = data.replace(b"CPU:7\x00", b"GPU:7\x00").replace(b"CPU:3\x00", b"GPU:3\x00")
    rdb.write_bytes(data)

    server.start()
    r = redis.Redis(port=server.port)
    # The rest of the data came up.
    assert r.execute_command("AI.TENSORGET", "x", "VALUES") == [b"1", b"2"]
    assert r.execute_command("AI.MODELEXECUTE", "good", "INPUTS", 1, "x", "OUTPUTS", 1, "y") == b"OK"
    assert r.execute_command("AI.SCRIPTGET", "s", "META")[5] == [e.encode() for e in ENTRY_POINTS]
    reasons = {}
    for key in ("bad_blob", "bad_dev"):
        meta = r.execute_command("AI.MODELGET", key, "META")
        assert meta[:16:2] == [
            b"backend",
            b"device",
            b"tag",
            b"batchsize",
            b"minbatchsize",
            b"inputs",
            b"outputs",
            b"minbatchtimeout",
        ]
        assert meta[16] == b"load_error" and meta[17]
        reasons[key] = meta[17].decode()
        info = r.execute_command("AI.INFO", key)
        assert info[-2:] == [b"load_error", meta[17]]
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command("AI.MODELEXECUTE", key, "INPUTS", 1, "x", "OUTPUTS", 1, "y")
        assert reasons[key] in err(e.value)
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command(
                "AI.DAGEXECUTE",
                "LOAD",
                1,
                "x",
                "|>",
                "AI.MODELEXECUTE",
                key,
                "INPUTS",
                1,
                "x",
                "OUTPUTS",
                1,
                "z",
            )
        assert reasons[key] in err(e.value)
    assert "GPU" in reasons["bad_dev"]
    # A script whose device this host lacks: the same, for scripts.
    meta = r.execute_command("AI.SCRIPTGET", "bad_scr", "META")
    assert meta[:6:2] == [b"device", b"tag", b"Entry Points"] and meta[1] == b"GPU:3"
    assert meta[6] == b"load_error" and b"GPU" in meta[7]
    assert r.execute_command("AI.INFO", "bad_scr")[-2:] == [b"load_error", meta[7]]
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.SCRIPTEXECUTE", "bad_scr", "scalar", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    assert meta[7].decode() in err(e.value)
    assert r.execute_command("AI.MODELGET", "bad_dev", "META")[3] == b"GPU:7"
    assert r.execute_command("AI.MODELGET", "bad_blob", "BLOB") == garbage
    # Saved back as it came: DEBUG RELOAD, SAVE + restart, and an AOF rewrite without the RDB
    # preamble (replayed MODELSTOREs) all keep both models, still reporting their reasons.
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    r.save()
    saved = rdb.read_bytes()
    assert garbage in saved and b"GPU:7\x00" in saved and b"GPU:3\x00" in saved
    r.config_set("aof-use-rdb-preamble", "no")
    r.config_set("appendonly", "yes")
    wait_rewrite(r)
    r.close()
    server.stop()
    aof_server = server_factory(
        extra_config=(*config, ("appendonly", "yes"), ("aof-use-rdb-preamble", "no")),
        data_dir=server.data_dir,
    )
    r = redis.Redis(port=aof_server.port)
    for key in ("bad_blob", "bad_dev"):
        meta = r.execute_command("AI.MODELGET", key, "META", "BLOB")
        assert meta[16] == b"load_error", key
    assert r.execute_command("AI.MODELGET", "bad_blob", "BLOB") == garbage
    assert r.execute_command("AI.SCRIPTGET", "bad_scr", "META")[6] == b"load_error"
    assert r.execute_command("AI.TENSORGET", "x", "VALUES") == [b"1", b"2"]
    r.close()
    aof_server.stop()
