"""The model in process (the reference) and in the engine, on the harness (bench/harness.py).

Row functions (each runs in a fresh process, started by the harness):
  reference        the model called in process with torch.inference_mode, `batch` tiles a call,
                   `threads` intra-op threads, warmed until TorchScript's profiling executor has
                   settled. Its child environment picks the allocator: `KEEP_BLOCKS_ENV` (glibc
                   malloc serves large blocks from the heap and keeps them, as the engine's block
                   cache does for its runs) or glibc's default (large blocks mmapped afresh and
                   unmapped on free, so page-faulted in again on every call)
  engine_clients   `clients` concurrent clients, one AI.DAGEXECUTE (TENSORSET, MODELEXECUTE,
                   TENSORGET) per tile, the model stored with BATCHSIZE `batch`: the engine's
                   auto-batching; output checked against in-process torch first
  engine_batch     one client, `batch` tiles in one DAG (the model stored plainly or OPTIMIZE)
  tiny_round_trip  per-request overhead: a model that adds 1 (kind "dag") against a pipelined
                   SET+GET of the same payload (kind "set_get"), on the same engine server
`specs()` lists the rows, `ratios()` what they are compared by; `python bench/engine.py` runs
them through the harness and prints the table (figures are printed, never asserted).

    python bench/engine.py [--rounds 3] [--seconds 3] [--clients 8] [--threads 2]
                           [--optimized] [--int8-model FILE] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, harness
from groundwatch import ai, connection

# glibc serves blocks above its mmap threshold with a fresh mmap and unmaps them on free, and
# gives the heap's top back above its trim threshold: a batch's large activations are then
# page-faulted in on every call. With mmap off and trimming pushed out of reach, freed large
# blocks stay in the heap for the next call of the same shapes: what the engine's block cache
# (TORCH_CPU_CACHE_MB, docs/engine-limits.md) does for its runs. A raised mmap threshold alone
# is not enough: the heap is then trimmed on free (docs/performance.md, "The allocator").
KEEP_BLOCKS_ENV = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"}
DEFAULT_THREADS = os.cpu_count() or 1  # the engine's INTRA_OP_PARALLELISM 0 is libtorch's default: all cores


def _load(model: str, threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(model, map_location="cpu").eval()


def _batches(tiles: np.ndarray, batch: int) -> list[np.ndarray]:
    n = len(tiles)
    return [np.ascontiguousarray(tiles[[(s + k) % n for k in range(batch)]]) for s in range(0, n, batch)]


# --------------------------------------------------------------------------- rows


def reference(model: str, batch: int, threads: int, seconds: float, n_tiles: int = 16) -> dict[str, Any]:
    """The model in process, `batch` tiles a call, back to back for `seconds` after warm-up."""
    import time

    import torch

    module = _load(model, threads)
    batches = [torch.from_numpy(b) for b in _batches(common.make_tiles(n_tiles, bands=1), batch)]
    with torch.inference_mode():
        warm = harness.settle(lambda: module(batches[0]))
        cpu0 = time.process_time()
        lat, wall = harness.timed_loop(lambda i: module(batches[i % len(batches)]), seconds)
        cpu = time.process_time() - cpu0
    jit = harness.jit_state()
    return harness.sample(
        tiles=len(lat) * batch,
        wall_s=wall,
        latencies_s=lat,
        cpu_s=cpu,
        warmup_calls=warm,
        note=f"latency per call of {batch}",
        per_tile_ms=1000.0 * float(np.median(lat)) / batch,
        **jit,
    )


@contextlib.contextmanager
def _engine(threads: int) -> Iterator[tuple[Any, redis.Redis]]:
    """(server, client) of a fresh engine server (common.engine_server), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="gw-bench-engine-") as tmp:
        server = common.engine_server(Path(tmp), threads).start()
        try:
            yield server, connection.client_for(server.url, timeout_s=120)
        finally:
            server.stop()


def _dag_client(url: str, key: str, route: str) -> Callable[[np.ndarray], np.ndarray]:
    client = connection.client_for(url, timeout_s=120)
    return lambda tile: ai.dag_result(client.execute_command(*ai.dag_command(key, route, tile[np.newaxis])))


def engine_clients(
    model: str,
    clients: int,
    threads: int,
    seconds: float,
    batch: int | None = None,
    min_batch_timeout_ms: int = 5,
    n_tiles: int = 16,
) -> dict[str, Any]:
    """`clients` clients, one tile a DAG, on the model stored with BATCHSIZE `batch` (default
    `clients`) MINBATCHSIZE `batch` MINBATCHTIMEOUT `min_batch_timeout_ms`. CPU: redis-server's
    and the clients' (this process)."""
    batch = clients if batch is None else batch
    tiles = common.make_tiles(n_tiles, bands=1)
    module = _load(model, threads)
    import torch

    with torch.inference_mode():
        expected = module(torch.from_numpy(tiles[:1])).numpy()[0]
    with _engine(threads) as (server, client):
        engine = ai.Engine(client)
        key, route = "bench:{b}:detector", "bench:{b}:route"
        blob = Path(model).read_bytes()
        if batch > 1:
            engine.model_store(
                key, blob, batch=batch, min_batch=batch, min_batch_timeout_ms=min_batch_timeout_ms
            )
        else:
            engine.model_store(key, blob)
        got = _dag_client(server.url, key, route)(tiles[0])
        same = bool(np.allclose(got, expected, rtol=1e-4, atol=1e-3))

        def make() -> Callable[[np.ndarray], np.ndarray]:
            return _dag_client(server.url, key, route)

        # Warm-up: the same load for a while, so every batch size the batcher forms has run a
        # few times (the profiling executor specialises per shape).
        warm = harness.closed_loop(make, tiles, clients=clients, seconds=60.0, max_requests=clients * 12)
        client.execute_command("AI.INFO", key, "RESETSTAT")
        assert server.process is not None
        cpu0 = common.cpu_seconds([server.process.pid])
        res = harness.closed_loop(make, tiles, clients=clients, seconds=seconds)
        cpu = common.cpu_seconds([server.process.pid]) - cpu0
        info = engine.model_info(key)
    mean_batch = info.samples / info.calls if info.calls else None
    note = f"mean batch {mean_batch:.2f} (AI.INFO)" if mean_batch else ""
    note += "" if same else "; output DIFFERS from in-process torch"
    if res.first_error:
        note += f"; first error: {res.first_error[:120]}"
    return harness.sample(
        tiles=res.tiles,
        wall_s=res.wall_s,
        latencies_s=res.latencies_s,
        cpu_s=cpu,
        warmup_calls=len(warm.latencies_s),
        errors=res.errors + (0 if same else 1),
        note=note,
        mean_batch=mean_batch,
    )


def engine_batch(
    model: str, batch: int, threads: int, seconds: float, optimize: bool = False, n_tiles: int = 16
) -> dict[str, Any]:
    """One client, `batch` tiles in one DAG, the model stored plainly or with OPTIMIZE."""
    tiles = common.make_tiles(n_tiles, bands=1)
    batches = _batches(tiles, batch)
    with _engine(threads) as (server, client):
        engine = ai.Engine(client)
        key, route = "bench:{b}:m", "bench:{b}:route"
        engine.model_store(key, Path(model).read_bytes(), optimize=optimize)
        state = engine.optimize_state(key) if optimize else None

        def call(i: int) -> None:
            ai.dag_result(client.execute_command(*ai.dag_command(key, route, batches[i % len(batches)])))

        warm = harness.settle(lambda: call(0))
        assert server.process is not None
        cpu0 = common.cpu_seconds([server.process.pid])
        lat, wall = harness.timed_loop(call, seconds)
        cpu = common.cpu_seconds([server.process.pid]) - cpu0
    note = f"1 client, {batch} tiles a DAG" + (f"; OPTIMIZE: {state}" if optimize else "")
    return harness.sample(
        tiles=len(lat) * batch, wall_s=wall, latencies_s=lat, cpu_s=cpu, warmup_calls=warm, note=note
    )


TINY_SHAPE = (1, 1, 512, 512)  # a tile's size, float32: 1 MiB in and 1 MiB out


def tiny_round_trip(kind: str, seconds: float) -> dict[str, Any]:
    """`kind` "dag": a model that adds 1, TENSORSET + MODELEXECUTE + TENSORGET in one DAG;
    "set_get": SET + GET of the same bytes, pipelined in one round trip. Latency per request."""
    import torch

    payload = np.random.default_rng(0).random(TINY_SHAPE, dtype=np.float32)
    blob = payload.tobytes()
    with tempfile.TemporaryDirectory(prefix="gw-bench-tiny-") as tmp:
        server = common.engine_server(Path(tmp) / "redis", 1).start()
        try:
            client = connection.client_for(server.url, timeout_s=120)
            if kind == "dag":

                class AddOne(torch.nn.Module):
                    def forward(self, x: torch.Tensor) -> torch.Tensor:
                        return x + 1

                path = Path(tmp) / "tiny.pt"
                torch.jit.save(torch.jit.script(AddOne()), str(path))
                ai.Engine(client).model_store("tiny{t}", path.read_bytes())

                def call(_: int) -> None:
                    out = ai.dag_result(client.execute_command(*ai.dag_command("tiny{t}", "r{t}", payload)))
                    if out.nbytes != len(blob):
                        raise RuntimeError("tiny model output has the wrong size")

            elif kind == "set_get":

                def call(_: int) -> None:
                    pipe = client.pipeline(transaction=False)
                    pipe.set("plain{t}", blob)
                    pipe.get("plain{t}")
                    if len(pipe.execute()[1]) != len(blob):
                        raise RuntimeError("GET returned the wrong size")

            else:
                raise ValueError(f"kind must be dag or set_get, not {kind!r}")
            warm = harness.settle(lambda: call(0), min_calls=10)
            lat, wall = harness.timed_loop(call, seconds)
        finally:
            server.stop()
    return harness.sample(
        tiles=len(lat),
        wall_s=wall,
        latencies_s=lat,
        warmup_calls=warm,
        note=f"{len(blob)} B in and out, 1 round trip",
    )


# --------------------------------------------------------------------------- the rows of a run

REF_B1 = "reference: in process, batch 1"
REF_B8 = "reference: in process, batch 8"
REF_B8_DEFAULT = "in process, batch 8, default malloc"
ENGINE = "engine, {clients} clients, auto-batching"
TINY_DAG = "tiny model DAG round trip"
SET_GET = "SET+GET, same payload"


def specs(
    model: str,
    *,
    seconds: float = 3.0,
    clients: int = 8,
    threads: int = DEFAULT_THREADS,
    optimized: bool = False,
    int8_model: str | None = None,
) -> list[harness.Spec]:
    """The engine rows of a run: the reference (batch 1 and 8, blocks kept), batch 8 with glibc's
    default malloc (what the allocator alone costs), the engine with `clients` auto-batching
    clients, and the tiny-model round trip beside SET+GET. Optional: OPTIMIZE and int8 rows."""
    ref = {"model": model, "threads": threads, "seconds": seconds}
    target = "bench.engine:"
    out = [
        harness.Spec(REF_B1, target + "reference", {**ref, "batch": 1}, env=KEEP_BLOCKS_ENV, reference=True,
                     note=f"{threads} threads, malloc keeps blocks"),
        harness.Spec(REF_B8, target + "reference", {**ref, "batch": 8}, env=KEEP_BLOCKS_ENV, reference=True,
                     note=f"{threads} threads, malloc keeps blocks"),
        harness.Spec(REF_B8_DEFAULT, target + "reference", {**ref, "batch": 8},
                     note=f"{threads} threads, glibc's default malloc"),
        harness.Spec(ENGINE.format(clients=clients), target + "engine_clients",
                     {"model": model, "clients": clients, "threads": threads, "seconds": seconds},
                     note=f"1 tile a DAG, BATCHSIZE {clients} MINBATCHSIZE {clients} MINBATCHTIMEOUT 5; "
                          "CPU: redis-server + clients"),
        harness.Spec(TINY_DAG, target + "tiny_round_trip", {"kind": "dag", "seconds": seconds / 2}),
        harness.Spec(SET_GET, target + "tiny_round_trip", {"kind": "set_get", "seconds": seconds / 2},
                     note="pipelined"),
    ]  # fmt: skip
    if optimized:
        for opt in (False, True):
            out.append(harness.Spec(f"engine, batch 8 a DAG{', OPTIMIZE' if opt else ''}", target + "engine_batch",
                                    {"model": model, "batch": 8, "threads": threads, "seconds": seconds,
                                     "optimize": opt}))  # fmt: skip
    if int8_model is not None:
        out.append(harness.Spec("int8 model in process, batch 8", target + "reference",
                                {**ref, "model": int8_model, "batch": 8}, env=KEEP_BLOCKS_ENV))  # fmt: skip
        out.append(harness.Spec("int8 model in the engine, batch 8 a DAG", target + "engine_batch",
                                {"model": int8_model, "batch": 8, "threads": threads, "seconds": seconds}))  # fmt: skip
    return out


def ratios(clients: int = 8) -> list[harness.Ratio]:
    engine = ENGINE.format(clients=clients)
    return [
        harness.Ratio("engine / reference", engine, harness.REFERENCE, goal=(">=", 0.9),
                      meaning="the engine with auto-batching clients against the best the model does in process"),
        harness.Ratio("default malloc / kept blocks", REF_B8_DEFAULT, REF_B8,
                      meaning="what glibc's default allocator costs the in-process model at batch 8"),
        harness.Ratio("tiny DAG / SET+GET, p50", TINY_DAG, SET_GET, metric="p50_ms", goal=("<=", 1.5),
                      meaning="the engine's per-request overhead over moving the same bytes in and out"),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/engine.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--model", default=str(common.DETECTOR_PATH), help="TorchScript file (default: the detector)"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per row and round")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument(
        "--optimized", action="store_true", help="add batch-8 rows: plain and OPTIMIZE in the engine"
    )
    p.add_argument("--int8-model", default=None, help="add rows for this int8 model file")
    p.add_argument("--out", type=Path, default=None, help="write engine.md and engine.json here")
    args = p.parse_args(argv)
    result = harness.run(
        specs(args.model, seconds=args.seconds, clients=args.clients, threads=args.threads,
              optimized=args.optimized, int8_model=args.int8_model),
        ratios(args.clients),
        rounds=args.rounds,
        title="bench/engine.py",
        context={"model": args.model},
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip
    print(result["table"])
    if args.out is not None:
        harness.write(result, args.out, "engine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
