"""Building DUMP/RESTORE payloads of the engine's types field by field, so tests can hand Redis
truncated and crafted records. The framing follows Redis: type byte, module id, one opcode per
saved field, EOF, RDB version, CRC64 (Jones)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
RDB_TYPE_MODULE_2 = 7
OP_EOF, OP_UINT, OP_STRING = 0, 2, 5


def crc64(data: bytes) -> int:
    """Redis' CRC-64/Jones: reflected, polynomial 0xad93d23594c935a9, init 0, no final xor."""
    poly = int(f"{0xAD93D23594C935A9:064b}"[::-1], 2)
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (poly if crc & 1 else 0)
        table.append(crc)
    crc = 0
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def module_id(name: str, encver: int = 4) -> int:
    value = 0
    for ch in name:
        value = (value << 6) | CHARSET.index(ch)
    return (value << 10) | encver


def enc_len(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    if n <= 0xFFFFFFFF:
        return b"\x80" + struct.pack(">I", n)
    return b"\x81" + struct.pack(">Q", n)


def uint(n: int) -> bytes:
    """One UINT field (signed values as their two's-complement pattern, as Redis saves them)."""
    return enc_len(OP_UINT) + enc_len(n & 0xFFFFFFFFFFFFFFFF)


def string(b: bytes) -> bytes:
    return enc_len(OP_STRING) + enc_len(len(b)) + b


def string_claiming(length: int, b: bytes) -> bytes:
    """A STRING field whose length prefix says `length` but which carries only `b`."""
    return enc_len(OP_STRING) + enc_len(length) + b


def payload(
    type_name: str, fields: Sequence[bytes], rdb_version: int = 9, eof: bool = True, encver: int = 4
) -> bytes:
    """A DUMP payload; encver is the encoding version inside the module id (0-3: RedisAI 1.0-1.2.4)."""
    data = bytes([RDB_TYPE_MODULE_2]) + enc_len(module_id(type_name, encver)) + b"".join(fields)
    if eof:
        data += enc_len(OP_EOF)
    data += struct.pack("<H", rdb_version)
    return data + struct.pack("<Q", crc64(data))


def raw_payload(body: bytes, rdb_version: int = 9) -> bytes:
    """Any bytes, framed with a valid version and checksum (so Redis hands them to the loader)."""
    data = body + struct.pack("<H", rdb_version)
    return data + struct.pack("<Q", crc64(data))


def tensor_fields(code: int, bits: int, shape: Sequence[int], data: bytes) -> list[bytes]:
    return [uint(code), uint(bits), uint(len(shape)), *(uint(d) for d in shape), string(data)]


def model_fields(blob: bytes, device: bytes = b"CPU\x00", chunks: int = 1) -> list[bytes]:
    size = max(1, -(-len(blob) // chunks))
    parts = [blob[i : i + size] for i in range(0, len(blob), size)] or [b""]
    return [
        uint(2),
        string(device),
        string(b"tag"),
        uint(0),
        uint(0),
        uint(0),
        uint(1),
        string(b"x\x00"),
        uint(1),
        string(b"\x00"),
        uint(len(blob)),
        uint(len(parts)),
        *(string(p) for p in parts),
    ]


def script_fields(source: bytes, entry_points: Sequence[bytes]) -> list[bytes]:
    return [
        string(b"CPU\x00"),
        string(b""),
        string(source + b"\x00"),
        uint(len(entry_points)),
        *(string(e + b"\x00") for e in entry_points),
    ]
