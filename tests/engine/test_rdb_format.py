"""The v4 encodings byte for byte: DUMP payloads of our three types are taken apart and checked
against RedisAI 1.2's field order, and payloads built here from scratch (as RedisAI 1.2 would
have written them) are RESTOREd. The payload framing follows Redis: type byte, module id, one
opcode per saved field, EOF, RDB version, CRC64 (Jones)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import rdb_payloads as rp
import redis
from engine_helpers import DOUBLE
from rdb_payloads import OP_EOF, OP_STRING, OP_UINT, RDB_TYPE_MODULE_2, crc64, module_id, string, uint

# The serialization primitives have one home, rdb_payloads (also used by the hostile-payload tests).


def payload(type_name: str, body: bytes, rdb_version: int = 9) -> bytes:
    return rp.payload(type_name, [body], rdb_version)


def lzf_decompress(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # a literal run
            out += data[i : i + ctrl + 1]
            i += ctrl + 1
            continue
        length = ctrl >> 5
        if length == 7:
            length += data[i]
            i += 1
        ref = len(out) - ((ctrl & 0x1F) << 8) - 1 - data[i]
        i += 1
        for k in range(length + 2):  # back-references may overlap what they produce
            out.append(out[ref + k])
    return bytes(out)


class Reader:
    """Takes a DUMP payload apart into (opcode, value) fields."""

    def __init__(self, data: bytes) -> None:
        assert crc64(data[:-8]) == struct.unpack("<Q", data[-8:])[0]
        self.data = data[:-10]
        self.pos = 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def length(self) -> int:
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F
        if kind == 1:
            return ((first & 0x3F) << 8) | self.byte()
        if first == 0x80:
            self.pos += 4
            return struct.unpack(">I", self.data[self.pos - 4 : self.pos])[0]
        if first == 0x81:
            self.pos += 8
            return struct.unpack(">Q", self.data[self.pos - 8 : self.pos])[0]
        raise AssertionError(f"special string encoding {first:#x} in a length")

    def raw_string(self) -> bytes:
        first = self.data[self.pos]
        if first == 0xC3:  # LZF-compressed (Redis compresses long strings)
            self.pos += 1
            clen = self.length()
            size = self.length()
            self.pos += clen
            out = lzf_decompress(self.data[self.pos - clen : self.pos])
            assert len(out) == size
            return out
        if first >> 6 == 3:  # integer encodings; the tests avoid numeric strings
            raise AssertionError(f"encoded string {first:#x}")
        n = self.length()
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def fields(self) -> tuple[int, list[object]]:
        assert self.byte() == RDB_TYPE_MODULE_2
        mid = self.length()
        out: list[object] = []
        while True:
            op = self.length()
            if op == OP_EOF:
                break
            if op == OP_UINT:
                out.append(self.length())
            elif op == OP_STRING:
                out.append(self.raw_string())
            else:
                raise AssertionError(f"opcode {op}")
        assert self.pos == len(self.data)
        return mid, out


def test_crc64_matches_redis_check_value() -> None:
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA


# ---- What we write -----------------------------------------------------------------------------


def test_tensor_dump_layout(engine: redis.Redis) -> None:
    data = np.random.default_rng(5).random((2, 3)).astype(np.float32).tobytes()
    engine.execute_command("AI.TENSORSET", "t", "FLOAT", 2, 3, "BLOB", data)
    mid, fields = Reader(engine.dump("t")).fields()
    assert mid == module_id("AI_TENSOR", 4)
    # dtype code (float), bits, ndim, dims, data
    assert fields == [2, 32, 2, 2, 3, data]


def test_string_tensor_dump_layout(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "t", "STRING", 3, "VALUES", "alpha-one", "", "gamma-three")
    _, fields = Reader(engine.dump("t")).fields()
    blob = b"alpha-one\x00\x00gamma-three\x00"
    # ..., data, then each element's start offset
    assert fields == [7, 8, 1, 3, blob, 0, 10, 11]


def test_model_dump_layout(engine: redis.Redis) -> None:
    engine.execute_command(
        "AI.MODELSTORE",
        "m",
        "TORCH",
        "CPU",
        "TAG",
        "version-seven",
        "BATCHSIZE",
        4,
        "MINBATCHSIZE",
        2,
        "MINBATCHTIMEOUT",
        7,
        "BLOB",
        DOUBLE,
    )
    chunk = 1000
    engine.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", chunk)
    try:
        mid, fields = Reader(engine.dump("m")).fields()
    finally:
        engine.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 511 * 1024 * 1024)
    assert mid == module_id("AI__MODEL", 4)
    n = len(DOUBLE) // chunk + 1
    assert fields[:11] == [2, b"CPU\x00", b"version-seven", 4, 2, 7, 1, b"x\x00", 1, b"\x00", len(DOUBLE)]
    assert fields[11] == n
    assert b"".join(fields[12:]) == DOUBLE and len(fields) == 12 + n  # type: ignore[arg-type]


def test_script_dump_layout(engine: redis.Redis) -> None:
    src = "def fn_a(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n"
    engine.execute_command(
        "AI.SCRIPTSTORE", "s", "CPU", "TAG", "tag-of-script", "ENTRY_POINTS", 1, "fn_a", "SOURCE", src
    )
    mid, fields = Reader(engine.dump("s")).fields()
    assert mid == module_id("AI_SCRIPT", 4)
    assert fields == [b"CPU\x00", b"tag-of-script", src.encode() + b"\x00", 1, b"fn_a\x00"]


# ---- What RedisAI 1.2 wrote --------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,bits,dtype,values",
    [
        (2, 64, "DOUBLE", [b"1.5", b"-2"]),
        (0, 16, "INT16", [-7, 300]),
        (1, 8, "UINT8", [0, 255]),
        (6, 8, "BOOL", [1, 0]),
    ],
)
def test_restore_handmade_tensor_payload(
    engine: redis.Redis, code: int, bits: int, dtype: str, values: list
) -> None:
    np_type = {"DOUBLE": "<f8", "INT16": "<i2", "UINT8": "u1", "BOOL": "u1"}[dtype]
    raw = np.array([float(v) if isinstance(v, bytes) else v for v in values]).astype(np_type).tobytes()
    body = uint(code) + uint(bits) + uint(1) + uint(2) + string(raw)
    assert engine.restore("t", 0, payload("AI_TENSOR", body)) == b"OK"
    assert engine.execute_command("AI.TENSORGET", "t", "META", "VALUES") == [
        b"dtype",
        dtype.encode(),
        b"shape",
        [2],
        b"values",
        values,
    ]


def test_restore_handmade_string_tensor_payload(engine: redis.Redis) -> None:
    blob = b"ab\x00\x00cde\x00"
    body = uint(7) + uint(8) + uint(1) + uint(3) + string(blob) + uint(0) + uint(3) + uint(4)
    assert engine.restore("t", 0, payload("AI_TENSOR", body)) == b"OK"
    assert engine.execute_command("AI.TENSORGET", "t", "VALUES") == [b"ab", b"", b"cde"]


def test_restore_handmade_model_payload_with_chunks(engine: redis.Redis) -> None:
    chunk = 700
    chunks = [DOUBLE[i : i + chunk] for i in range(0, len(DOUBLE), chunk)]
    if len(DOUBLE) % chunk == 0:
        chunks.append(b"")
    body = (
        uint(2)
        + string(b"CPU\x00")
        + string(b"from-redisai")
        + uint(8)
        + uint(0)
        + uint(0)
        + uint(1)
        + string(b"x\x00")
        + uint(1)
        + string(b"\x00")
        + uint(len(DOUBLE))
        + uint(len(chunks))
        + b"".join(string(c) for c in chunks)
    )
    assert engine.restore("m", 0, payload("AI__MODEL", body)) == b"OK"
    meta = engine.execute_command("AI.MODELGET", "m", "META", "BLOB")
    assert meta[5] == b"from-redisai" and meta[7] == 8 and meta[-1] == DOUBLE
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 2, "VALUES", 1, 2)
    assert engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y") == b"OK"
    assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"2", b"4"]


def test_restore_handmade_script_payload(engine: redis.Redis) -> None:
    src = b"def twice(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0] * 2\n"
    body = string(b"CPU\x00") + string(b"") + string(src + b"\x00") + uint(1) + string(b"twice\x00")
    assert engine.restore("s", 0, payload("AI_SCRIPT", body)) == b"OK"
    assert engine.execute_command("AI.SCRIPTGET", "s", "META") == [
        b"device",
        b"CPU",
        b"tag",
        b"",
        b"Entry Points",
        [b"twice"],
    ]
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 3)
    engine.execute_command("AI.SCRIPTEXECUTE", "s", "twice", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"6"]


def test_restore_of_malformed_payload_is_refused(engine: redis.Redis) -> None:
    # A shape that does not match the data: refused, server up.
    body = uint(2) + uint(32) + uint(1) + uint(3) + string(b"\x00" * 4)
    with pytest.raises(redis.ResponseError):
        engine.restore("t", 0, payload("AI_TENSOR", body))
    assert engine.exists("t") == 0
    assert engine.ping()
