"""A seeded fuzz campaign against a real redis-server with the engine: randomized and malformed
AI.* commands (wrong arity, types, shapes, blobs, broken DAG pipes, garbage model blobs), scripts
(odd outputs, runaway loops, random redis.execute calls) and RESTORE payloads (valid DUMPs of the
three types, mutated, with the checksum recomputed so the engine's decoders see them). The server
must answer every command with a well-formed reply or an error; afterwards it must be up, and
every key must survive DEBUG RELOAD, a restart from the RDB, a restart from the AOF and an AOF
rewrite, unchanged (same DUMP).

`make test` runs a few thousand commands; `make fuzz-server` runs 100,000 against the
AddressSanitizer build (GW_FUZZ_COMMANDS, GW_FUZZ_SEED; GW_FUZZ_REPORT writes the figures as JSON).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from engine_helpers import ADD, DOUBLE, LINEAR, store_script

from groundwatch.server import RedisServer

# Fixed by default so a failure reproduces; GW_FUZZ_SEED / GW_FUZZ_COMMANDS for longer soaks.
SEED = int(os.environ.get("GW_FUZZ_SEED", "20261125"))
COMMANDS = int(os.environ.get("GW_FUZZ_COMMANDS", "3000"))

TYPES = [
    "FLOAT",
    "DOUBLE",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "BOOL",
    "STRING",
    "float",
    "HALF",
    "",
    "INT128",
]
KEYS = ["t1", "t2", "t3", "m1", "m2", "s1", "str", "nokey", "{a}x", ""]
DIMS = [1, 2, 3, 4, 0, -1, 2**33, "x", "1.5", ""]
WORDS = [
    "INPUTS",
    "OUTPUTS",
    "KEYS",
    "ARGS",
    "BLOB",
    "VALUES",
    "META",
    "TIMEOUT",
    "LOAD",
    "PERSIST",
    "ROUTING",
    "|>",
    "TAG",
    "BATCHSIZE",
    "MINBATCHSIZE",
    "MINBATCHTIMEOUT",
    "ENTRY_POINTS",
    "SOURCE",
    "$",
    "-1",
    "0",
    "1",
    "2",
    "999999999999999999999",
]


def rand_value(rng: random.Random) -> object:
    return rng.choice(
        [rng.randint(-300, 300), rng.random() * 10, "nan", "inf", "abc", "", "1e400", "\x00", "0", "1"]
    )


def rand_blob(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 2, 3, 4, 8, 12, 16, 24, 33])
    return bytes(rng.getrandbits(8) for _ in range(n))


def tensorset(rng: random.Random, key: str | None = None) -> list[object]:
    dims = [rng.choice(DIMS[:4]) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:
        dims[rng.randrange(len(dims))] = rng.choice(DIMS)
    cmd: list[object] = ["AI.TENSORSET", key or rng.choice(KEYS), rng.choice(TYPES), *dims]
    mode = rng.random()
    if mode < 0.4:
        n = 1
        for d in dims:
            n *= d if isinstance(d, int) and 0 < d < 10 else 1
        cmd += ["VALUES", *[rand_value(rng) for _ in range(n + rng.choice([0, 0, 0, 1, -1]))]]
    elif mode < 0.8:
        cmd += ["BLOB", rand_blob(rng)] + ([rand_blob(rng)] if rng.random() < 0.1 else [])
    return cmd


def garbage_model(rng: random.Random) -> bytes:
    base = rng.choice([ADD, DOUBLE, LINEAR])
    choice = rng.random()
    if choice < 0.3:
        return rand_blob(rng) * rng.randint(1, 50)
    if choice < 0.6:
        return base[: rng.randrange(len(base))]
    data = bytearray(base)
    for _ in range(rng.randint(1, 20)):
        data[rng.randrange(len(data))] = rng.getrandbits(8)
    return bytes(data)


def modelstore(rng: random.Random) -> list[object]:
    cmd: list[object] = [
        rng.choice(["AI.MODELSTORE", "AI.MODELSET"]),
        rng.choice(KEYS),
        rng.choice(["TORCH", "TF", "torch", "ONNX"]),
        rng.choice(["CPU", "cpu:0", "GPU:x", "CPU"]),
    ]
    if rng.random() < 0.3:
        cmd += ["TAG", "tag"]
    if rng.random() < 0.3:
        cmd += ["BATCHSIZE", rng.choice([0, 2, 4, -1, "x"])]
        if rng.random() < 0.5:
            cmd += ["MINBATCHSIZE", rng.choice([1, 2, 3]), "MINBATCHTIMEOUT", rng.choice([1, 5, 20])]
    cmd += ["BLOB", rng.choice([ADD, DOUBLE, garbage_model(rng)])]
    return cmd


def execute(rng: random.Random) -> list[object]:
    kind = rng.random()
    if kind < 0.5:
        ins = [rng.choice(KEYS) for _ in range(rng.randint(0, 3))]
        outs = [rng.choice(KEYS) for _ in range(rng.randint(0, 2))]
        cmd: list[object] = [
            "AI.MODELEXECUTE",
            rng.choice(KEYS),
            "INPUTS",
            len(ins) + rng.choice([0, 0, 1, -1]),
            *ins,
            "OUTPUTS",
            len(outs),
            *outs,
        ]
        if rng.random() < 0.5:
            cmd += ["TIMEOUT", rng.choice([1, 100, 1000, 0, "x"])]
        return cmd
    if kind < 0.8:
        fn = rng.choice(["double", "add_args", "set_key", "call_model", "fail", "nofn"])
        cmd = ["AI.SCRIPTEXECUTE", rng.choice(KEYS), fn]
        for word in rng.sample(["KEYS", "INPUTS", "ARGS", "OUTPUTS"], rng.randint(0, 4)):
            items = [rng.choice([*KEYS, "1", "0.5"]) for _ in range(rng.randint(0, 2))]
            cmd += [word, len(items), *items]
        return cmd
    return ["AI.MODELRUN", rng.choice(KEYS), "INPUTS", rng.choice(KEYS), "OUTPUTS", rng.choice(KEYS)]


def dag(rng: random.Random) -> list[object]:
    cmd: list[object] = [rng.choice(["AI.DAGEXECUTE", "AI.DAGEXECUTE_RO", "AI.DAGRUN", "AI.DAGRUN_RO"])]
    if rng.random() < 0.6:
        cmd += ["LOAD", rng.choice([1, 2, 0, -1]), "t1", "t2"][: rng.randint(2, 5)]
    if rng.random() < 0.4:
        cmd += ["PERSIST", 1, rng.choice(["o1", "t1", "x"])]
    if rng.random() < 0.3:
        cmd += ["ROUTING", "r"]
    if rng.random() < 0.2:
        cmd += ["TIMEOUT", rng.choice([1, 1000, "x"])]
    for _ in range(rng.randint(0, 4)):
        cmd.append(rng.choice(["|>", "|>", "|>", "|", ">"]))
        op = rng.random()
        if op < 0.35:
            cmd += tensorset(rng, key=rng.choice(["x", "o1", "t1"]))
        elif op < 0.55:
            cmd += [
                "AI.TENSORGET",
                rng.choice(["x", "o1", "t1", "zz"]),
                rng.choice(["VALUES", "BLOB", "META"]),
            ]
        elif op < 0.85:
            cmd += [
                "AI.MODELEXECUTE",
                rng.choice(["m1", "m2"]),
                "INPUTS",
                2,
                "t1",
                rng.choice(["x", "t2"]),
                "OUTPUTS",
                1,
                rng.choice(["o1", "x"]),
            ]
        else:
            cmd += [
                "AI.SCRIPTEXECUTE",
                "s1",
                "double",
                "INPUTS",
                1,
                rng.choice(["x", "t1"]),
                "OUTPUTS",
                1,
                "o1",
            ]
    return cmd


def misc(rng: random.Random) -> list[object]:
    return rng.choice(
        [
            [
                "AI.TENSORGET",
                rng.choice(KEYS),
                *rng.sample(["META", "BLOB", "VALUES", "FOO"], rng.randint(0, 3)),
            ],
            ["AI.MODELGET", rng.choice(KEYS), *rng.sample(["META", "BLOB", "X"], rng.randint(0, 2))],
            ["AI.MODELDEL", rng.choice(KEYS)],
            ["AI.SCRIPTGET", rng.choice(KEYS), rng.choice(["META", "SOURCE", "X"])],
            ["AI.SCRIPTDEL", rng.choice(KEYS)],
            [
                "AI.SCRIPTSTORE",
                rng.choice(KEYS),
                "CPU",
                "ENTRY_POINTS",
                rng.choice([1, 0, 2, "x"]),
                "f",
                "SOURCE",
                rng.choice(
                    [
                        "def f(:",
                        "garbage",
                        "def f(t: List[Tensor], k: List[str], a: List[str]):\n    return t[0]\n",
                    ]
                ),
            ],
            ["AI.INFO", rng.choice(KEYS), *(["RESETSTAT"] if rng.random() < 0.3 else [])],
            [
                "AI.CONFIG",
                rng.choice(["GET", "MODEL_CHUNK_SIZE", "FOO", "BACKENDSPATH"]),
                rng.choice(["MODEL_CHUNK_SIZE", "x", "100000"]),
            ],
            ["AI._MODELSCAN"],
            ["AI._SCRIPTSCAN"],
        ]
    )


# ==== Scripts =================================================================================

SCRIPT_BODIES = [
    "return tensors[0] * 2",
    "return tensors[0][:0]",  # zero-sized: not storable
    "return torch.tensor(7)",  # a scalar
    "return torch.zeros(int(args[0]))",  # as large as the argument says
    "return torch.ones([1] * 70)",  # rank 70: not storable
    "return tensors[0].to(torch.float16)",  # a dtype tensors cannot hold
    "return [tensors[0], tensors[0] + 1]",
    "x = tensors[0]\n    for i in range(int(args[0])):\n        x = x + 1\n    return x",
    "redis.execute(args[0], keys[0])\n    return tensors[0]",
    "redis.execute(args[0], keys[0], args[0])\n    return tensors[0]",
    "return redisAI.model_execute(keys[0], tensors, 1)[0]",
    "return redisAI.model_execute(keys[0], [tensors[0], tensors[0]], 1)[0]",
    "raise Exception('boom')",
    "return tensors[int(args[0])]",
]
SCRIPT_ARGS = [
    "1",
    "0",
    "-1",
    "3",
    "1000",
    # 600 MB of floats: over TENSOR_MAX_BYTES as an output, and a loop the timeout ends. (Much
    # larger sizes make libtorch itself allocate that much, which maxmemory does not bound.)
    "150000000",
    "GET",
    "SET",
    "DEL",
    "INCR",
    "FLUSHALL",
    "CONFIG",
    "x",
]


def script_source(rng: random.Random) -> str:
    body = rng.choice(SCRIPT_BODIES)
    source = f"def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n    {body}\n"
    if rng.random() < 0.1:
        source = source[: rng.randrange(len(source))]
    return source


def scripts(rng: random.Random) -> list[object]:
    key = rng.choice(["sc1", "sc2", "s1", "str", "t1"])
    if rng.random() < 0.3:
        device = rng.choice(["CPU", "cpu", "CPU:0", "CPU:00", "GPU:x"])
        return ["AI.SCRIPTSTORE", key, device, "ENTRY_POINTS", 1, "f", "SOURCE", script_source(rng)]
    return [
        "AI.SCRIPTEXECUTE", key, rng.choice(["f", "f", "double", "nofn"]),
        "KEYS", 1, rng.choice(["m1", "m2", "t1", "str", "nokey"]),
        "INPUTS", 1, rng.choice(["t1", "t2", "nokey"]),
        "ARGS", 1, rng.choice(SCRIPT_ARGS),
        "OUTPUTS", 1, rng.choice(["o1", "o2", "t2"]),
    ]  # fmt: skip


# ==== RESTORE payloads ========================================================================


def _crc64_table() -> list[int]:
    """CRC-64/Jones (reflected), the checksum Redis puts at the end of a DUMP payload."""
    poly = 0x95AC9329AC4BC9B5  # 0xad93d23594c935a9 bit-reversed
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC64_TABLE = _crc64_table()


def crc64(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = CRC64_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def seal(body: bytes, version: bytes) -> bytes:
    """A DUMP payload: value, RDB version (2 bytes), CRC64 of both (8 bytes, little-endian)."""
    head = body + version
    return head + crc64(head).to_bytes(8, "little")


def mutate_dump(rng: random.Random, payload: bytes, others: list[bytes]) -> bytes:
    body, version = payload[:-10], payload[-10:-8]
    data = bytearray(body)
    action = rng.random()
    if action < 0.3:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(1, len(data))] = rng.getrandbits(8)
    elif action < 0.5:
        data = data[: rng.randrange(1, len(data))]
    elif action < 0.65:
        at = rng.randrange(1, len(data))
        data[at:at] = data[rng.randrange(len(data)) :][: rng.randint(1, 64)]
    elif action < 0.8:
        # Length encodings: 0x80 announces a 32-bit length, 0x81 a 64-bit one.
        at = rng.randrange(1, len(data))
        data[at : at + 9] = bytes([rng.choice([0x80, 0x81, 0xC0, 0xFF])]) + rng.randbytes(8)
    elif action < 0.9:
        other = rng.choice(others)[:-10]
        cut = rng.randrange(1, len(data))
        data = data[:cut] + other[rng.randrange(1, len(other)) :]
    if rng.random() < 0.05:
        return bytes(data) + version + b"\0" * 8  # wrong checksum: Redis's own check
    return seal(bytes(data), version)


def restore(rng: random.Random, dumps: list[bytes]) -> list[object]:
    payload = rng.choice(dumps)
    if rng.random() < 0.85:
        payload = mutate_dump(rng, payload, dumps)
    return ["RESTORE", rng.choice(["r1", "r2", "r3", "t1", "m1", "s1", "str"]), 0, payload, "REPLACE"]


def mutate(rng: random.Random, cmd: list[object]) -> list[object]:
    cmd = list(cmd)
    for _ in range(rng.randint(1, 3)):
        if len(cmd) <= 1:
            break
        i = rng.randrange(1, len(cmd))
        action = rng.random()
        if action < 0.3:
            del cmd[i]
        elif action < 0.6:
            cmd[i] = rng.choice(WORDS + KEYS + DIMS)
        elif action < 0.8:
            cmd.insert(i, rng.choice(WORDS + DIMS))
        else:
            cmd = cmd[:i]
    return cmd


def may_wait_forever(cmd: list[object]) -> bool:
    """MINBATCHSIZE without a positive MINBATCHTIMEOUT legitimately waits for company forever."""
    words = [str(c).upper() for c in cmd if not isinstance(c, bytes)]
    if "MINBATCHSIZE" not in words:
        return False
    if "MINBATCHTIMEOUT" not in words:
        return True
    i = words.index("MINBATCHTIMEOUT")
    return i + 1 >= len(words) or not words[i + 1].isdigit() or int(words[i + 1]) <= 0


def well_formed(reply: object) -> bool:
    if isinstance(reply, (bytes, int, type(None), redis.ResponseError)):
        return True
    if isinstance(reply, list):
        return all(well_formed(x) for x in reply)
    return False


Snapshot = dict[bytes, tuple[bytes, bytes | None]]


def snapshot(c: redis.Redis) -> Snapshot:
    """Every key with its type and DUMP payload."""
    out: Snapshot = {}
    for key in c.keys("*"):
        out[key] = (c.type(key), c.dump(key))
    return out


def server_env(tmp: Path) -> dict[str, str]:
    """redis-server's environment; under ASan its reports go to files we can count."""
    env = dict(os.environ)
    preload = os.environ.get("GW_TEST_LD_PRELOAD")
    if preload:
        env["LD_PRELOAD"] = preload
        # allocator_may_return_null: Redis's own RDB string loader asks malloc for whatever length
        # a payload announces and handles NULL (ztrymalloc); ASan would abort there instead.
        env["ASAN_OPTIONS"] = f"detect_leaks=0:allocator_may_return_null=1:log_path={tmp / 'asan'}"
        env["UBSAN_OPTIONS"] = f"print_stacktrace=1:log_path={tmp / 'ubsan'}"
    return env


def sanitizer_reports(tmp: Path) -> list[str]:
    """Report files holding an error (allocator_may_return_null leaves warnings, not errors)."""
    found = []
    for p in sorted(tmp.iterdir()):
        if p.name.startswith(("asan.", "ubsan.")):
            text = p.read_text(errors="replace")
            if "ERROR: " in text or "runtime error:" in text:
                found.append(p.name)
    return found


def start(data: Path, engine_module: Path, env: dict[str, str], appendonly: bool) -> RedisServer:
    server = RedisServer(
        data_dir=data,
        engine_module=engine_module,
        # A small execution timeout keeps runaway scripts short.
        module_args=("MODEL_EXECUTION_TIMEOUT", "300"),
        extra_config=(
            ("appendonly", "yes" if appendonly else "no"),
            ("aof-use-rdb-preamble", "no"),
        ),
        env=env,
    )
    # Replaying a long campaign's AOF takes a while (every MODELSTORE is loaded again).
    return server.start(timeout_s=1200)


def fixtures(c: redis.Redis) -> None:
    c.delete("m1", "t1", "t2", "s1")
    c.execute_command("AI.MODELSTORE", "m1", "TORCH", "CPU", "BLOB", ADD)
    c.execute_command("AI.TENSORSET", "t1", "FLOAT", 2, "VALUES", 1, 2)
    c.execute_command("AI.TENSORSET", "t2", "FLOAT", 2, "VALUES", 3, 4)
    store_script(c, "s1")


def test_crc64_matches_redis_dump_checksums(engine: redis.Redis) -> None:
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA  # the CRC-64/Jones check value
    engine.execute_command("AI.TENSORSET", "t", "FLOAT", 2, "VALUES", 1, 2)
    engine.set("k", "v")
    for key in ("t", "k"):
        payload = engine.dump(key)
        assert seal(payload[:-10], payload[-10:-8]) == payload


@pytest.mark.timeout(max(300, COMMANDS // 10))
def test_fuzz_campaign_keeps_server_up_and_data_loadable(tmp_path: Path, engine_module: Path | None) -> None:
    if engine_module is None:
        pytest.skip("the campaign needs the engine")
    rng = random.Random(SEED)
    data = tmp_path / "data"
    env = server_env(tmp_path)
    server = start(data, engine_module, env, appendonly=True)
    report: dict[str, object] = {"seed": SEED, "commands": COMMANDS}
    try:
        c = redis.Redis(port=server.port, socket_timeout=120)
        c.execute_command("AI.MODELSTORE", "m2", "TORCH", "CPU", "BATCHSIZE", 4, "BLOB", ADD)
        c.execute_command("AI.TENSORSET", "s", "STRING", 2, "VALUES", "a", "bc")
        fixtures(c)
        c.set("str", "x")
        dumps = [c.dump(k) for k in ("t1", "s", "m1", "m2", "s1")]
        dumps = [d for d in dumps if d]
        generators: list[Callable[[random.Random], list[object]]] = [
            tensorset, modelstore, execute, dag, misc, scripts, lambda g: restore(g, dumps),
        ]  # fmt: skip
        counts = {"ok": 0, "error": 0, "skipped": 0}
        began = time.monotonic()
        for n in range(COMMANDS):
            cmd = rng.choice(generators)(rng)
            if rng.random() < 0.4:
                cmd = mutate(rng, cmd)
            if may_wait_forever(cmd) or not cmd:
                counts["skipped"] += 1
                continue
            try:
                reply = c.execute_command(*cmd)
            except redis.ResponseError as e:
                reply = e
            except redis.ConnectionError as e:  # the server died or hung
                raise AssertionError(f"command #{n} (seed {SEED}) broke the server: {cmd!r}") from e
            assert well_formed(reply), (n, cmd, reply)
            counts["error" if isinstance(reply, redis.ResponseError) else "ok"] += 1
            # Keep the fixtures around so later commands have something real to hit.
            if n % 200 == 0:
                fixtures(c)
        report["seconds"] = round(time.monotonic() - began, 1)
        print("fuzz campaign: commands sent", counts, report["seconds"], "s", flush=True)
        report.update(counts)
        c.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 511 * 1024 * 1024)
        c.execute_command("AI.CONFIG", "BACKENDSPATH", str(engine_module.parent / "backends"))
        assert c.ping()
        assert counts["ok"] > COMMANDS // 20 and counts["error"] > COMMANDS // 20, counts
        # Still fully functional.
        fixtures(c)
        assert c.execute_command("AI.MODELEXECUTE", "m1", "INPUTS", 2, "t1", "t1", "OUTPUTS", 1, "o") == b"OK"
        assert c.execute_command("AI.TENSORGET", "o", "VALUES") == [b"2", b"4"]
        before = snapshot(c)
        report["keys"] = len(before)
        assert c.execute_command("DEBUG", "RELOAD") == b"OK"
        after: dict[str, Snapshot] = {"debug_reload": snapshot(c)}
        phases = {"campaign": report["seconds"]}
        mark = time.monotonic()
        assert c.save()
        c.close()
        server.stop()
        server = start(data, engine_module, env, appendonly=False)
        c = redis.Redis(port=server.port, socket_timeout=120)
        after["rdb_restart"] = snapshot(c)
        phases["rdb_restart"], mark = round(time.monotonic() - mark, 1), time.monotonic()
        c.close()
        server.stop()
        server = start(data, engine_module, env, appendonly=True)
        c = redis.Redis(port=server.port, socket_timeout=120)
        after["aof_replay"] = snapshot(c)
        phases["aof_replay"], mark = round(time.monotonic() - mark, 1), time.monotonic()
        c.bgrewriteaof()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            persistence = c.info("persistence")
            if not persistence["aof_rewrite_in_progress"] and not persistence["aof_rewrite_scheduled"]:
                break
            time.sleep(0.1)
        assert c.info("persistence")["aof_last_bgrewrite_status"] == "ok"
        c.close()
        server.stop()
        server = start(data, engine_module, env, appendonly=True)
        c = redis.Redis(port=server.port, socket_timeout=120)
        after["aof_rewrite_replay"] = snapshot(c)
        phases["aof_rewrite_replay"], mark = round(time.monotonic() - mark, 1), time.monotonic()
        c.close()
        report["keys_after"] = {name: len(snap) for name, snap in after.items()}
        report["phase_seconds"] = phases
        report["sanitizer_reports"] = sanitizer_reports(tmp_path)
        print("fuzz campaign", json.dumps(report))
        if os.environ.get("GW_FUZZ_REPORT"):
            Path(os.environ["GW_FUZZ_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
        for name, snap in after.items():
            missing = sorted(set(before) - set(snap))
            changed = sorted(k for k in before if k in snap and snap[k] != before[k])
            extra = sorted(set(snap) - set(before))
            assert not missing and not changed and not extra, (name, missing, changed, extra)
        assert report["sanitizer_reports"] == []
    finally:
        server.stop()
