"""Thousands of randomized and malformed AI.* commands (seeded): wrong arity, types, shapes,
blobs, broken DAG pipes, garbage model blobs and scripts. The server must stay up and answer
every command with a well-formed reply or an error."""

from __future__ import annotations

import os
import random

import redis
from engine_helpers import ADD, DOUBLE, LINEAR, store_script

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


def test_fuzz_commands_keep_server_up(engine: redis.Redis) -> None:
    rng = random.Random(SEED)
    port = engine.connection_pool.connection_kwargs["port"]
    c = redis.Redis(port=port, socket_timeout=60)
    c.execute_command("AI.MODELSTORE", "m1", "TORCH", "CPU", "BLOB", ADD)
    c.execute_command("AI.MODELSTORE", "m2", "TORCH", "CPU", "BATCHSIZE", 4, "BLOB", ADD)
    store_script(c, "s1")
    c.execute_command("AI.TENSORSET", "t1", "FLOAT", 2, "VALUES", 1, 2)
    c.execute_command("AI.TENSORSET", "t2", "FLOAT", 2, "VALUES", 3, 4)
    c.set("str", "x")
    generators = [tensorset, modelstore, execute, dag, misc]
    counts = {"ok": 0, "error": 0, "skipped": 0}
    backends_path = c.execute_command("AI.CONFIG", "GET", "BACKENDSPATH")
    try:
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
                c.delete("m1", "t1", "t2", "s1")
                c.execute_command("AI.MODELSTORE", "m1", "TORCH", "CPU", "BLOB", ADD)
                c.execute_command("AI.TENSORSET", "t1", "FLOAT", 2, "VALUES", 1, 2)
                c.execute_command("AI.TENSORSET", "t2", "FLOAT", 2, "VALUES", 3, 4)
                store_script(c, "s1")
    finally:
        c.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 511 * 1024 * 1024)
        c.execute_command("AI.CONFIG", "BACKENDSPATH", backends_path)
    assert c.ping()
    print("fuzz outcome", counts)
    assert counts["ok"] > 100 and counts["error"] > 100, counts
    # Still fully functional afterwards.
    c.delete("m1", "t1")
    c.execute_command("AI.MODELSTORE", "m1", "TORCH", "CPU", "BLOB", ADD)
    c.execute_command("AI.TENSORSET", "t1", "FLOAT", 2, "VALUES", 1, 2)
    assert c.execute_command("AI.MODELEXECUTE", "m1", "INPUTS", 2, "t1", "t1", "OUTPUTS", 1, "o") == b"OK"
    assert c.execute_command("AI.TENSORGET", "o", "VALUES") == [b"2", b"4"]
    assert c.execute_command("DEBUG", "RELOAD") == b"OK"
    c.close()
