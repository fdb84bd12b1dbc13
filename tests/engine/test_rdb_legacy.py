"""RDB encodings 0-3 (RedisAI 1.0 to 1.2.4): payloads built here byte for byte from
../shared/spec/redisai-rdb-legacy.md are RESTOREd (and loaded from an RDB file at start-up), then
used (TENSORGET, MODELEXECUTE, SCRIPTEXECUTE); DEBUG RELOAD writes them back as version 4 and
keeps them; truncated or crafted legacy records are `Bad data format` with the server up; an
encoding above 4 is refused with RedisAI's message."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import rdb_payloads as rp
import redis
from engine_helpers import ADD, DOUBLE, err
from test_rdb_format import Reader

from groundwatch.server import RedisServer

U, B = rp.uint, rp.string


def restore(r: redis.Redis, key: str, type_name: str, fields: Sequence[bytes], encver: int) -> object:
    return r.restore(key, 0, rp.payload(type_name, fields, encver=encver), replace=True)


def bad_data(r: redis.Redis, key: str, type_name: str, fields: Sequence[bytes], encver: int) -> None:
    with pytest.raises(redis.ResponseError) as e:
        restore(r, key, type_name, fields, encver)
    assert err(e.value) == "Bad data format"
    assert r.exists(key) == 0 and r.ping()


def encver_of(payload: bytes) -> tuple[int, list[object]]:
    mid, fields = Reader(payload).fields()
    return mid & 0x3FF, fields


# ---- AI_TENSOR 0-3 ----------------------------------------------------------------------------


def legacy_tensor(
    code: int, bits: int, shape: Sequence[int], data: bytes, device_id: int = 0, lanes: int = 1
) -> list[bytes]:
    """Device type (CPU), device id, bits, code, lanes, ndim, shape, strides, byte offset, data."""
    strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]
    return [
        U(1),
        U(device_id),
        U(bits),
        U(code),
        U(lanes),
        U(len(shape)),
        *(U(d) for d in shape),
        *(U(s) for s in strides),
        U(0),
        B(data),
    ]


def test_spec_example_tensor_in_every_legacy_encoding(engine: redis.Redis) -> None:
    # The spec's example, field for field: FLOAT [2] holding 1.0, 2.0.
    fields = [U(1), U(0), U(32), U(2), U(1), U(1), U(2), U(1), U(0), B(b"\x00\x00\x80\x3f\x00\x00\x00\x40")]
    assert fields == legacy_tensor(2, 32, [2], np.array([1, 2], "<f4").tobytes())
    for encver in range(4):
        assert restore(engine, f"t{encver}", "AI_TENSOR", fields, encver) == b"OK"
        assert engine.execute_command("AI.TENSORGET", f"t{encver}", "META", "VALUES") == [
            b"dtype",
            b"FLOAT",
            b"shape",
            [2],
            b"values",
            [b"1", b"2"],
        ]
        # Written back as version 4 (code, bits, ndim, shape, data).
        assert encver_of(engine.dump(f"t{encver}")) == (4, [2, 32, 1, 2, b"\x00\x00\x80\x3f\x00\x00\x00\x40"])


@pytest.mark.parametrize(
    "code,bits,dtype,np_type,values",
    [
        (2, 64, "DOUBLE", "<f8", [1.5, -2.0, 0.25, 8.0, -0.5, 3.0]),
        (0, 8, "INT8", "i1", [-128, 127, 0, 1, -1, 5]),
        (0, 16, "INT16", "<i2", [-300, 7, 0, 1, 2, 3]),
        (0, 32, "INT32", "<i4", [70000, -70000, 0, 1, 2, 3]),
        (0, 64, "INT64", "<i8", [-(2**40), 2**40, 0, 1, 2, 3]),
        (1, 8, "UINT8", "u1", [0, 255, 1, 2, 3, 4]),
        (1, 16, "UINT16", "<u2", [0, 65535, 1, 2, 3, 4]),
        (6, 8, "BOOL", "u1", [1, 0, 1, 1, 0, 0]),
    ],
)
def test_legacy_tensor_dtypes_and_reload(
    engine: redis.Redis, code: int, bits: int, dtype: str, np_type: str, values: list
) -> None:
    raw = np.array(values).astype(np_type).tobytes()
    # The device id as RedisAI wrote it for CPU tensors: 0 or the 64-bit pattern of -1.
    for encver, device_id in ((0, 0), (1, -1), (2, 0), (3, -1)):
        key = f"t{encver}"
        assert (
            restore(engine, key, "AI_TENSOR", legacy_tensor(code, bits, [2, 3], raw, device_id), encver)
            == b"OK"
        )
    engine.execute_command("DEBUG", "RELOAD")
    for encver in range(4):
        meta = engine.execute_command("AI.TENSORGET", f"t{encver}", "META", "BLOB")
        assert meta == [b"dtype", dtype.encode(), b"shape", [2, 3], b"blob", raw]
        assert encver_of(engine.dump(f"t{encver}"))[0] == 4


def test_malformed_legacy_tensors_are_bad_data(engine: redis.Redis) -> None:
    good = legacy_tensor(2, 32, [2], bytes(8))
    for encver in (0, 3):
        # Every truncation of the record.
        for cut in range(len(good)):
            bad_data(engine, "t", "AI_TENSOR", good[:cut], encver)
        # A string where a number belongs and the reverse.
        bad_data(engine, "t", "AI_TENSOR", [B(b"1"), *good[1:]], encver)
        bad_data(engine, "t", "AI_TENSOR", [*good[:-1], U(8)], encver)
    crafted: list[list[bytes]] = [
        [U(2), *good[1:]],  # a GPU tensor (RedisAI asserted CPU)
        legacy_tensor(2, 32, [2], bytes(8), lanes=2),
        legacy_tensor(7, 8, [2], b"a\x00b\x00"),  # STRING came with encoding 4
        legacy_tensor(2, 16, [2], bytes(4)),  # no such dtype
        legacy_tensor(2, 32, [3], bytes(8)),  # data does not match the shape
        legacy_tensor(2, 32, [0], b""),
        legacy_tensor(6, 8, [2], b"\x01\x02"),  # BOOL holds 0 or 1
        # Counts that would size allocations: rank 2^40, a dim of 2^62.
        [U(1), U(0), U(32), U(2), U(1), U(2**40), U(1)],
        [U(1), U(0), U(32), U(2), U(1), U(1), U(2**62), U(1), U(0), B(bytes(8))],
        [U(1), U(0), U(32), U(2), U(1), U(2**64 - 1), U(1), U(1), U(0), B(bytes(4))],
    ]
    for fields in crafted:
        bad_data(engine, "t", "AI_TENSOR", fields, 2)
    # A field too many: Redis finds no EOF marker where the record should end.
    bad_data(engine, "t", "AI_TENSOR", [*good, U(0)], 1)


# ---- AI__MODEL 0-3 ----------------------------------------------------------------------------


def chunks_of(blob: bytes, size: int) -> list[bytes]:
    """RedisAI's chunking: length // size + 1 chunks, so an exact multiple ends empty."""
    return [blob[i * size : (i + 1) * size] for i in range(len(blob) // size + 1)]


def legacy_model(encver: int, blob: bytes, device: bytes = b"CPU", tag: bytes = b"v1", bs: int = 0,
                 mbs: int = 0, mbt: int = 0, names: tuple[list[bytes], list[bytes]] = ([], []),
                 chunk: int = 1 << 30, backend: int = 2) -> list[bytes]:  # fmt: skip
    inputs, outputs = names
    fields = [U(backend), B(device + b"\x00"), B(tag + b"\x00") if encver == 0 else B(tag), U(bs), U(mbs)]
    if encver >= 2:
        fields.append(U(mbt))
    fields += [
        U(len(inputs)),
        *(B(n + b"\x00") for n in inputs),
        U(len(outputs)),
        *(B(n + b"\x00") for n in outputs),
    ]
    if encver == 0:
        return [*fields, B(blob)]
    parts = chunks_of(blob, chunk)
    return [*fields, U(len(blob)), U(len(parts)), *(B(p) for p in parts)]


def model_meta(r: redis.Redis, key: str) -> dict:
    meta = r.execute_command("AI.MODELGET", key, "META")
    return dict(zip(meta[::2], meta[1::2], strict=True))


def test_spec_example_models(engine: redis.Redis) -> None:
    # RedisAI 1.0, TORCH, tag "v1": U2 B("CPU\0") B("v1\0") U0 U0 U0 U0 B(<TorchScript zip>).
    v0 = [U(2), B(b"CPU\x00"), B(b"v1\x00"), U(0), U(0), U(0), U(0), B(DOUBLE)]
    assert v0 == legacy_model(0, DOUBLE)
    # 1.2.x with TAG v1 BATCHSIZE 8 MINBATCHSIZE 2 MINBATCHTIMEOUT 50 (encver 2-3; 1 lacks U50).
    names = ([b"x"], [b""])
    v2 = [U(2), B(b"CPU\x00"), B(b"v1"), U(8), U(2), U(50), U(1), B(b"x\x00"), U(1), B(b"\x00"),
          U(len(DOUBLE)), U(1), B(DOUBLE)]  # fmt: skip
    assert v2 == legacy_model(2, DOUBLE, bs=8, mbs=2, mbt=50, names=names)
    v1 = legacy_model(1, DOUBLE, bs=8, mbs=2, names=names)
    assert v1 == v2[:5] + v2[6:]
    cases = [(0, v0, (0, 0, 0)), (1, v1, (8, 2, 0)), (2, v2, (8, 2, 50)), (3, v2, (8, 2, 50))]
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 2, "VALUES", 1.5, -4)
    for encver, fields, (bs, mbs, mbt) in cases:
        key = f"m{encver}"
        assert restore(engine, key, "AI__MODEL", fields, encver) == b"OK"
        meta = model_meta(engine, key)
        # TORCH recomputes inputs/outputs from the blob (a 1.0 record has empty lists).
        assert meta == {
            b"backend": b"TORCH", b"device": b"CPU", b"tag": b"v1", b"batchsize": bs,
            b"minbatchsize": mbs, b"inputs": [b"x"], b"outputs": [b""], b"minbatchtimeout": mbt,
        }  # fmt: skip
        assert engine.execute_command("AI.MODELGET", key, "BLOB") == DOUBLE
        info = engine.execute_command("AI.INFO", key)
        assert info[:10] == [
            b"key",
            key.encode(),
            b"type",
            b"MODEL",
            b"backend",
            b"TORCH",
            b"device",
            b"CPU",
            b"tag",
            b"v1",
        ]
        out = f"y{encver}"
        args = ["INPUTS", 1, "x", "OUTPUTS", 1, out, "TIMEOUT", 60000]
        assert engine.execute_command("AI.MODELEXECUTE", key, *args) == b"OK"
        assert engine.execute_command("AI.TENSORGET", out, "VALUES") == [b"3", b"-8"]


def test_legacy_models_chunks_devices_tags_and_reload(engine: redis.Redis) -> None:
    chunk = 97  # no chunk size is recorded: any split must do
    cases = [
        (0, legacy_model(0, ADD, device=b"cpu", tag=b"old", bs=4, mbs=1), b"cpu", b"old"),
        # A raw (v1+) tag is taken verbatim, a trailing NUL included.
        (1, legacy_model(1, ADD, device=b"Cpu:0", tag=b"bin\x00", chunk=chunk), b"Cpu:0", b"bin\x00"),
        (2, legacy_model(2, ADD, tag=b"", chunk=len(ADD)), b"CPU", b""),  # exact multiple: empty last chunk
        (3, legacy_model(3, ADD, device=b"cpu", names=([b"a", b"b"], [b""]), chunk=chunk), b"cpu", b"v1"),
    ]
    assert len(cases[2][1]) == 12 and cases[2][1][-1] == B(b"")
    for encver, fields, _, _ in cases:
        assert restore(engine, f"m{encver}", "AI__MODEL", fields, encver) == b"OK"
    engine.execute_command("DEBUG", "RELOAD")
    engine.execute_command("AI.TENSORSET", "a", "FLOAT", 1, "VALUES", 2)
    engine.execute_command("AI.TENSORSET", "b", "FLOAT", 1, "VALUES", 5)
    for encver, _, device, tag in cases:
        key = f"m{encver}"
        meta = model_meta(engine, key)
        assert (meta[b"device"], meta[b"tag"], meta[b"inputs"]) == (device, tag, [b"a", b"b"])
        assert engine.execute_command("AI.MODELGET", key, "BLOB") == ADD
        engine.execute_command("AI.MODELEXECUTE", key, "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c")
        assert engine.execute_command("AI.TENSORGET", "c", "VALUES") == [b"7"]
        version, written = encver_of(engine.dump(key))
        assert version == 4 and written[:3] == [2, device + b"\x00", tag]
    assert model_meta(engine, "m0")[b"batchsize"] == 4 and model_meta(engine, "m0")[b"minbatchtimeout"] == 0


def test_malformed_legacy_models_are_bad_data(engine: redis.Redis) -> None:
    for encver in (0, 1, 2):
        good = legacy_model(encver, DOUBLE, names=([b"x"], [b""]), chunk=500)
        for cut in range(len(good)):
            bad_data(engine, "m", "AI__MODEL", good[:cut], encver)
        # TF/TFLITE/ONNX records are read whole, then refused (no such backend here).
        for backend in (0, 1, 3):
            bad_data(engine, "m", "AI__MODEL", legacy_model(encver, b"graph", backend=backend), encver)
        # A blob libtorch cannot read.
        bad_data(engine, "m", "AI__MODEL", legacy_model(encver, b"not a model"), encver)
    for encver in (1, 3):
        fields = legacy_model(encver, DOUBLE, chunk=500)
        at = fields.index(U(len(DOUBLE)))
        for total, count in ((len(DOUBLE) + 1, None), (len(DOUBLE) - 1, None), (len(DOUBLE), 2**40)):
            bent = list(fields)
            bent[at] = U(total)
            if count is not None:
                bent[at + 1] = U(count)
            bad_data(engine, "m", "AI__MODEL", bent, encver)
    # A name count that would size an allocation.
    bad_data(engine, "m", "AI__MODEL", [U(2), B(b"CPU\x00"), B(b"t\x00"), U(0), U(0), U(2**50)], 0)


# ---- AI_SCRIPT 0-3 ----------------------------------------------------------------------------

OLD_SCRIPT = b"""
def add(a, b):
    return a + b

def first_and_rest(a, rest: List[Tensor]):
    return a * 10 + rest[0] + rest[1]

def entry(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] - tensors[1]
"""


def legacy_script(encver: int, source: bytes, tag: bytes = b"s", device: bytes = b"CPU", entry_points: Sequence[bytes] = ()) -> list[bytes]:  # fmt: skip
    fields = [B(device + b"\x00"), B(tag + b"\x00") if encver == 0 else B(tag), B(source + b"\x00")]
    if encver >= 3:
        fields += [U(len(entry_points)), *(B(e + b"\x00") for e in entry_points)]
    return fields


def test_spec_example_scripts_and_best_effort_calls(engine: redis.Redis) -> None:
    src = b"def f(a, b):\n    return a + b\n"
    assert legacy_script(0, src) == [B(b"CPU\x00"), B(b"s\x00"), B(src + b"\x00")]
    assert legacy_script(1, src) == [B(b"CPU\x00"), B(b"s"), B(src + b"\x00")]
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        engine.execute_command("AI.TENSORSET", key, "FLOAT", 1, "VALUES", value)
    for encver in (0, 1, 2):
        key = f"s{encver}"
        assert (
            restore(engine, key, "AI_SCRIPT", legacy_script(encver, OLD_SCRIPT, device=b"cpu"), encver)
            == b"OK"
        )
        assert engine.execute_command("AI.SCRIPTGET", key, "META") == [
            b"device",
            b"cpu",
            b"tag",
            b"s",
            b"Entry Points",
            [],
        ]
        assert engine.execute_command("AI.SCRIPTGET", key, "SOURCE") == OLD_SCRIPT
        # No entry points: every function runs in best-effort mode (tensors bound in order).
        engine.execute_command("AI.SCRIPTEXECUTE", key, "add", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "y")
        assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"3"]
        engine.execute_command(
            "AI.SCRIPTRUN", key, "first_and_rest", "INPUTS", "a", "$", "b", "c", "OUTPUTS", "y"
        )
        assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"15"]
        engine.execute_command("AI.SCRIPTEXECUTE", key, "entry", "INPUTS", 2, "c", "a", "OUTPUTS", 1, "y")
        assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"2"]
        for fn, message in (
            ("nope", "Function does not exist: nope"),
            ("add", "Wrong number of inputs provided to function: add"),
        ):
            with pytest.raises(redis.ResponseError) as e:
                engine.execute_command("AI.SCRIPTEXECUTE", key, fn, "INPUTS", 1, "a", "OUTPUTS", 1, "z")
            assert err(e.value) == message
        info = engine.execute_command("AI.INFO", key)
        assert info[info.index(b"type") + 1] == b"SCRIPT" and info[info.index(b"samples") + 1] == -1
    # encver 3 has entry points, checked as SCRIPTSTORE checks them.
    fields = legacy_script(3, OLD_SCRIPT, tag=b"t\x00", entry_points=[b"entry"])
    assert restore(engine, "s3", "AI_SCRIPT", fields, 3) == b"OK"
    assert engine.execute_command("AI.SCRIPTGET", "s3", "META") == [
        b"device",
        b"CPU",
        b"tag",
        b"t\x00",
        b"Entry Points",
        [b"entry"],
    ]
    engine.execute_command("AI.SCRIPTEXECUTE", "s3", "entry", "INPUTS", 2, "c", "b", "OUTPUTS", 1, "y")
    assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"1"]
    # Reloaded (written back as version 4: 0 entry points for the old ones) and still callable.
    engine.execute_command("DEBUG", "RELOAD")
    for encver in range(4):
        version, fields4 = encver_of(engine.dump(f"s{encver}"))
        assert version == 4 and fields4[3] == (1 if encver == 3 else 0)
        engine.execute_command(
            "AI.SCRIPTEXECUTE", f"s{encver}", "entry", "INPUTS", 2, "c", "a", "OUTPUTS", 1, "y"
        )
        assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"2"]


def test_malformed_legacy_scripts_are_bad_data(engine: redis.Redis) -> None:
    src = b"def entry(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n"
    for encver in range(4):
        good = legacy_script(encver, src, entry_points=[b"entry"])
        for cut in range(len(good)):
            bad_data(engine, "s", "AI_SCRIPT", good[:cut], encver)
        bad_data(engine, "s", "AI_SCRIPT", legacy_script(encver, b"def f(:\n"), encver)  # does not compile
        bad_data(engine, "s", "AI_SCRIPT", [*good, U(1)], encver)  # a field too many
    # Entry points are checked as SCRIPTSTORE checks them; a count that would size an allocation.
    bad_data(engine, "s", "AI_SCRIPT", legacy_script(3, OLD_SCRIPT, entry_points=[b"add"]), 3)
    bad_data(engine, "s", "AI_SCRIPT", legacy_script(3, OLD_SCRIPT, entry_points=[b"nope"]), 3)
    bad_data(engine, "s", "AI_SCRIPT", [*legacy_script(3, src)[:3], U(2**60)], 3)


# ---- Encodings above 4; an RDB file from RedisAI 1.0-1.2.4 at start-up -------------------------


def test_encodings_above_4_are_refused(server_factory: Callable[..., RedisServer]) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port)
    cases = [
        ("AI_TENSOR", rp.tensor_fields(2, 32, [1], bytes(4)), "tensor"),
        ("AI__MODEL", rp.model_fields(DOUBLE), "model"),
        ("AI_SCRIPT", rp.script_fields(b"def f(a):\n    return a\n", []), "script"),
    ]
    for type_name, fields, what in cases:
        assert restore(r, "k", type_name, fields, 4) == b"OK"  # the same record as version 4 loads
        for encver in (5, 1023):
            bad_data(r, "x", type_name, fields, encver)
        log = server.log_path.read_text()
        assert f"Failed loading {what}, RedisAI version (10207) is not forward compatible." in log
    r.close()
    server.stop()


def rdb_file(entries: Sequence[tuple[bytes, str, Sequence[bytes], int]]) -> bytes:
    """An RDB file (version 9) holding module values, as a RedisAI 1.0-1.2.4 server saved them:
    header, SELECTDB 0, per key the module type byte, the key, the value (module id, fields,
    EOF), then the EOF opcode and the CRC64 of everything before it."""
    data = b"REDIS0009" + b"\xfe\x00"
    for key, type_name, fields, encver in entries:
        value = rp.enc_len(rp.module_id(type_name, encver)) + b"".join(fields) + rp.enc_len(rp.OP_EOF)
        data += bytes([rp.RDB_TYPE_MODULE_2]) + rp.enc_len(len(key)) + key + value
    data += b"\xff"
    return data + struct.pack("<Q", rp.crc64(data))


def test_rdb_file_of_legacy_values_loads_at_start_up(
    server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    (tmp_path / "dump.rdb").write_bytes(
        rdb_file(
            [
                (b"t", "AI_TENSOR", legacy_tensor(0, 32, [3], np.array([1, -2, 3], "<i4").tobytes()), 0),
                (b"m", "AI__MODEL", legacy_model(0, DOUBLE, tag=b"one-oh"), 0),
                (b"m2", "AI__MODEL", legacy_model(1, DOUBLE, device=b"cpu", bs=2, mbs=1, chunk=300), 1),
                (b"s", "AI_SCRIPT", legacy_script(2, OLD_SCRIPT), 2),
                (b"s3", "AI_SCRIPT", legacy_script(3, OLD_SCRIPT, entry_points=[b"entry"]), 3),
            ]
        )
    )
    server = server_factory(data_dir=tmp_path)
    r = redis.Redis(port=server.port)
    assert sorted(r.keys()) == [b"m", b"m2", b"s", b"s3", b"t"]
    assert r.execute_command("AI.TENSORGET", "t", "META", "VALUES")[1::2] == [b"INT32", [3], [1, -2, 3]]
    for key in ("m", "m2"):
        r.execute_command("AI.MODELEXECUTE", key, "INPUTS", 1, "t", "OUTPUTS", 1, "y")
        assert r.execute_command("AI.TENSORGET", "y", "VALUES") == [2, -4, 6]
    assert model_meta(r, "m")[b"tag"] == b"one-oh" and model_meta(r, "m2")[b"device"] == b"cpu"
    for key in ("s", "s3"):
        r.execute_command("AI.SCRIPTEXECUTE", key, "add", "INPUTS", 2, "t", "t", "OUTPUTS", 1, "y")
        assert r.execute_command("AI.TENSORGET", "y", "VALUES") == [2, -4, 6]
    # Saved back as version 4, and loaded again.
    r.save()
    r.close()
    server.restart()
    r = redis.Redis(port=server.port)
    assert all(encver_of(r.dump(k))[0] == 4 for k in ("t", "m", "m2", "s", "s3"))
    assert r.execute_command("AI.SCRIPTGET", "s3", "META")[5] == [b"entry"]
    r.close()
    server.stop()
