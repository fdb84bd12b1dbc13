"""The engine against raw torch: the same TorchScript model on the same input, same threads.

Rows (each bounded to a few seconds):
  raw torch, batch 1 / batch 8      the model called in this process (torch.inference_mode)
  raw torch, batch 8, keeps blocks  the same in a child whose glibc malloc keeps large blocks
                                    (the engine's backend caches them; default malloc page-faults
                                    a batch's large activations in on every call)
  engine DAG, 1 client              AI.DAGEXECUTE |> TENSORSET |> MODELEXECUTE |> TENSORGET
  engine DAG, N clients, BATCHSIZE  N concurrent clients on a model stored with BATCHSIZE N
  tiny model DAG / SET+GET          per-request overhead: a model that adds 1, vs SET+GET of the
                                    same payload (pipelined in one round trip), at two sizes
Optional rows (issue 8), with run(optimized=True) and run(int8_model=..., int8_source=...):
  engine DAG, batch 8 [OPTIMIZE]    8 samples in one request, the model stored plainly and with
                                    OPTIMIZE (frozen + optimize_for_inference in the engine)
  ... detector rows                 the float detector (int8_source, default the shipped one) in
                                    process as these rows' reference, then in the engine plainly and
                                    with OPTIMIZE (optimized=True), and the int8 file (int8_model) in
                                    process and in the engine; batch 8 of uint16 scene tiles
Figures are printed, never asserted. `run(...) -> dict` is what `make bench` calls.

    python bench/engine.py [--seconds 3] [--clients 8] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from groundwatch import connection
from groundwatch.errors import ServerError
from groundwatch.server import RedisServer
from groundwatch.settings import REPO_ROOT

ENGINE_SO = REPO_ROOT / "engine" / "build" / "engine.so"
INPUT_SHAPE = (3, 512, 512)
SHIPPED_DETECTOR = REPO_ROOT / "models" / "artifacts" / "detector.pt"  # float source of int8 rows


class AddOne(torch.nn.Module):
    """The tiny model: all the cost is in moving the tensor in and out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def _raw_outputs(path: Path, batch: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(batch))).numpy().copy()


def _save_tiny(path: Path) -> Path:
    torch.jit.save(torch.jit.script(AddOne()), str(path))
    return path


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    """n float32 inputs [n, 3, 512, 512] (the stand-in's log1p front end wants non-negative)."""
    return common.make_tiles(n, bands=INPUT_SHAPE[0], size=INPUT_SHAPE[1], seed=seed).astype(np.float32)


def _timed_loop(
    call: Callable[[int], object], seconds: float, max_calls: int | None
) -> tuple[list[float], float]:
    """Call call(i) until `seconds` pass (at least twice); returns latencies and wall time."""
    latencies: list[float] = []
    t_start = time.perf_counter()
    i = 0
    while True:
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
        i += 1
        if i >= 2 and time.perf_counter() - t_start >= seconds:
            break
        if max_calls is not None and i >= max_calls:
            break
    return latencies, time.perf_counter() - t_start


def _row(
    name: str,
    samples_per_request: int,
    latencies: Sequence[float],
    wall_s: float,
    *,
    errors: int = 0,
    note: str = "",
) -> dict[str, Any]:
    r = common.row(
        name,
        tiles=samples_per_request * len(latencies),
        wall_s=wall_s,
        latencies_s=latencies,
        errors=errors,
        note=note,
    )
    r["samples_per_s"] = r["throughput"]
    r["requests_per_s"] = len(latencies) / wall_s if wall_s > 0 else 0.0
    return r


# --------------------------------------------------------------------------- rows


def raw_torch(
    path: Path, inputs: np.ndarray, *, batch: int, seconds: float, max_calls: int | None
) -> tuple[dict[str, Any], np.ndarray]:
    module = torch.jit.load(str(path), map_location="cpu").eval()
    n = len(inputs)
    batches = [
        torch.from_numpy(np.ascontiguousarray(inputs[[(i * batch + k) % n for k in range(batch)]]))
        for i in range(max(1, n // batch))
    ]
    with torch.inference_mode():
        for _ in range(3):  # the profiling executor optimises over the first calls
            module(batches[0])
        first = module(torch.from_numpy(inputs[:1])).numpy().copy()

        def call(i: int) -> None:
            module(batches[i % len(batches)])

        lat, wall = _timed_loop(call, seconds, max_calls)
    return _row(f"raw torch, batch {batch}", batch, lat, wall, note="in process"), first


# glibc maps blocks above its mmap threshold afresh and unmaps them on free; these settings keep
# them in the heap instead, as the TORCH backend's block cache does for the engine.
KEEP_BLOCKS_ENV = {"MALLOC_MMAP_THRESHOLD_": str(512 << 20), "MALLOC_TRIM_THRESHOLD_": str(1024 << 20)}


def raw_torch_kept_blocks(
    path: Path, *, batch: int, seconds: float, threads: int, n_inputs: int, max_calls: int | None
) -> dict[str, Any]:
    """Raw torch in a child process whose glibc malloc keeps large blocks (KEEP_BLOCKS_ENV): the
    reference without the page faults that default malloc costs raw torch at large batches."""
    env = {**os.environ, **KEEP_BLOCKS_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    args = [sys.executable, str(Path(__file__).resolve()), "_raw", str(path), str(batch), str(seconds),
            str(threads), str(n_inputs), str(max_calls or 0)]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60 + 4 * seconds)
    if proc.returncode != 0:
        return common.skipped(f"raw torch, batch {batch}, malloc keeps blocks", proc.stderr.strip()[-200:])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["name"] = f"raw torch, batch {batch}, malloc keeps blocks"
    row["note"] = "child process, MALLOC_MMAP_THRESHOLD_=512MiB"
    return dict(row)


def _raw_child(argv: Sequence[str]) -> int:
    path, batch, seconds, threads, n_inputs, max_calls = argv
    torch.set_num_threads(int(threads))
    row, _ = raw_torch(Path(path), _inputs(int(n_inputs)), batch=int(batch), seconds=float(seconds),
                       max_calls=int(max_calls) or None)  # fmt: skip
    print(json.dumps(row))
    return 0


def _dag_args(model_key: str, tag: str, blob: bytes) -> list[Any]:
    return [
        "AI.DAGEXECUTE",
        "ROUTING",
        tag,
        "|>",
        "AI.TENSORSET",
        f"in{tag}",
        "FLOAT",
        1,
        *INPUT_SHAPE,
        "BLOB",
        blob,
        "|>",
        "AI.MODELEXECUTE",
        model_key,
        "INPUTS",
        1,
        f"in{tag}",
        "OUTPUTS",
        1,
        f"out{tag}",
        "|>",
        "AI.TENSORGET",
        f"out{tag}",
        "BLOB",
    ]


def _dag_caller(port: int, model_key: str, tag: str) -> Callable[[bytes], bytes]:
    client = connection.client_for(connection.local_url(port), timeout_s=120)

    def call(blob: bytes) -> bytes:
        reply = client.execute_command(*_dag_args(model_key, tag, blob))
        if not isinstance(reply, list) or len(reply) != 3 or not isinstance(reply[2], bytes):
            raise RuntimeError(f"unexpected DAG reply: {str(reply)[:200]}")
        return reply[2]

    return call


def engine_single(
    port: int, blobs: list[bytes], expected: np.ndarray, *, seconds: float, max_calls: int | None
) -> dict[str, Any]:
    call = _dag_caller(port, "detector", "{a}")
    out = np.frombuffer(call(blobs[0]), dtype=np.float32).reshape(expected.shape)
    same = bool(np.allclose(out, expected, rtol=1e-4, atol=1e-3))
    for _ in range(2):
        call(blobs[0])
    lat, wall = _timed_loop(lambda i: call(blobs[i % len(blobs)]), seconds, max_calls)
    note = "1 DAG per request; output " + ("matches raw torch" if same else "DIFFERS from raw torch")
    return _row("engine DAG, 1 client", 1, lat, wall, errors=0 if same else 1, note=note)


def engine_batched(
    port: int, blobs: list[bytes], *, clients: int, seconds: float, max_calls: int | None
) -> dict[str, Any]:
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def make_client() -> Callable[[bytes], bytes]:
        with lock:
            c = next(counter)
        return _dag_caller(port, "detector_b", f"{{b{c}}}")

    # closed_loop only indexes and measures `tiles`: the serialized inputs are passed as they are
    res = common.closed_loop(
        cast(Any, make_client), cast(Any, blobs), clients=clients, seconds=seconds, max_requests=max_calls
    )
    info = _ai_info(port, "detector_b")
    mean_batch = (info.get("samples", 0) / info["calls"]) if info.get("calls") else None
    note = f"{clients} clients, 1 DAG per request, BATCHSIZE {clients}"
    if mean_batch is not None:
        note += f"; mean batch {mean_batch:.2f} (AI.INFO samples/calls)"
    if res.first_error:
        note += f"; first error: {res.first_error[:120]}"
    r = _row(
        f"engine DAG, {clients} clients, BATCHSIZE {clients}",
        1,
        res.latencies_s,
        res.wall_s,
        errors=res.errors,
        note=note,
    )
    r["mean_batch"] = mean_batch
    return r


def _ai_info(port: int, key: str) -> dict[str, Any]:
    try:
        reply = connection.client_for(connection.local_url(port)).execute_command("AI.INFO", key)
    except redis.ResponseError:
        return {}
    items = list(reply)
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): v
        for k, v in zip(items[::2], items[1::2], strict=False)
    }


def tiny_overhead(
    port: int, payload: np.ndarray, *, seconds: float, max_calls: int | None, label: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    client = connection.client_for(connection.local_url(port), timeout_s=120)
    blob = np.ascontiguousarray(payload).tobytes()
    shape = [1, *payload.shape]
    dag = [
        "AI.DAGEXECUTE", "ROUTING", "{t}",
        "|>", "AI.TENSORSET", "x{t}", "FLOAT", *shape, "BLOB", blob,
        "|>", "AI.MODELEXECUTE", "tiny", "INPUTS", 1, "x{t}", "OUTPUTS", 1, "y{t}",
        "|>", "AI.TENSORGET", "y{t}", "BLOB",
    ]  # fmt: skip

    def model_call(_: int) -> None:
        reply = client.execute_command(*dag)
        if len(reply[2]) != len(blob):
            raise RuntimeError("tiny model output has the wrong size")

    def set_get(_: int) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set("plain{t}", blob)
        pipe.get("plain{t}")
        _, got = pipe.execute()
        if len(got) != len(blob):
            raise RuntimeError("GET returned the wrong size")

    for _ in range(3):
        model_call(0)
        set_get(0)
    lat_m, wall_m = _timed_loop(model_call, seconds, max_calls)
    lat_s, wall_s = _timed_loop(set_get, seconds, max_calls)
    nbytes = len(blob)
    m = _row(f"tiny model DAG, {label}", 1, lat_m, wall_m, note=f"{nbytes} B in and out, 1 round trip")
    s = _row(f"SET+GET, {label}", 1, lat_s, wall_s, note=f"{nbytes} B in and out, pipelined, 1 round trip")
    return m, s


def _engine_rows(
    port: int,
    model_path: Path,
    tiny_path: Path,
    inputs: np.ndarray,
    expected: np.ndarray,
    *,
    clients: int,
    seconds: float,
    max_calls: int | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows measured against a running server: (model rows, per-request overhead rows)."""
    client = connection.client_for(connection.local_url(port), timeout_s=120)
    blob = model_path.read_bytes()
    client.execute_command("AI.MODELSTORE", "detector", "TORCH", "CPU", "BLOB", blob)
    client.execute_command("AI.MODELSTORE", "detector_b", "TORCH", "CPU", "BATCHSIZE", clients, "BLOB", blob)
    client.execute_command("AI.MODELSTORE", "tiny", "TORCH", "CPU", "BLOB", tiny_path.read_bytes())
    blobs = [np.ascontiguousarray(x[None]).tobytes() for x in inputs]
    rows = [engine_single(port, blobs, expected, seconds=seconds, max_calls=max_calls)]
    # warm the batched model at a few batch sizes before measuring
    engine_batched(port, blobs, clients=clients, seconds=min(1.0, seconds), max_calls=max_calls)
    client.execute_command("AI.INFO", "detector_b", "RESETSTAT")
    rows.append(engine_batched(port, blobs, clients=clients, seconds=seconds, max_calls=max_calls))
    overhead: list[dict[str, Any]] = []
    for label, payload in (("3x512x512 float32", inputs[0]), ("16 float32", inputs[0].ravel()[:16].copy())):
        m, s = tiny_overhead(port, payload, seconds=seconds / 2, max_calls=max_calls, label=label)
        m["ratio_vs_set_get"] = (m["p50_ms"] / s["p50_ms"]) if s["p50_ms"] else None
        overhead += [m, s]
    client.close()
    return rows, overhead


def engine_batch8(
    port: int, model_key: str, batch: np.ndarray, *, name: str, seconds: float, max_calls: int | None
) -> tuple[dict[str, Any], np.ndarray]:
    """One client, `len(batch)` samples per AI.DAGEXECUTE (same batch as the raw torch row)."""
    client = connection.client_for(connection.local_url(port), timeout_s=120)
    data = np.ascontiguousarray(batch)
    dtype = "UINT16" if data.dtype == np.uint16 else "FLOAT"
    args = [
        "AI.DAGEXECUTE", "ROUTING", model_key,
        "|>", "AI.TENSORSET", "in", dtype, *data.shape, "BLOB", data.tobytes(),
        "|>", "AI.MODELEXECUTE", model_key, "INPUTS", 1, "in", "OUTPUTS", 1, "out",
        "|>", "AI.TENSORGET", "out", "BLOB",
    ]  # fmt: skip
    first = None
    for _ in range(3):
        first = client.execute_command(*args)[2]
    lat, wall = _timed_loop(lambda i: client.execute_command(*args), seconds, max_calls)
    client.close()
    out = np.frombuffer(cast(bytes, first), dtype=np.float32).reshape(len(batch), -1)
    return _row(name, len(batch), lat, wall, note=f"1 client, {len(batch)} samples per DAG"), out


def optimized_rows(
    port: int,
    model_path: Path,
    inputs: np.ndarray,
    reference: np.ndarray,
    *,
    seconds: float,
    max_calls: int | None,
) -> list[dict[str, Any]]:
    """The same model at batch 8 in one request: stored plainly, and stored with OPTIMIZE."""
    client = connection.client_for(connection.local_url(port), timeout_s=120)
    blob = model_path.read_bytes()
    client.execute_command("AI.MODELSTORE", "detector_p8", "TORCH", "CPU", "BLOB", blob)
    client.execute_command("AI.MODELSTORE", "detector_o8", "TORCH", "CPU", "OPTIMIZE", "BLOB", blob)
    meta = client.execute_command("AI.MODELGET", "detector_o8", "META")
    state = dict(zip(meta[::2], meta[1::2], strict=True))
    client.close()
    batch = np.ascontiguousarray(inputs[:8])
    rows = []
    for key, name in (
        ("detector_p8", "engine DAG, batch 8"),
        ("detector_o8", "engine DAG, batch 8, OPTIMIZE"),
    ):
        row, out = engine_batch8(port, key, batch, name=name, seconds=seconds, max_calls=max_calls)
        same = bool(np.allclose(out, reference.reshape(len(batch), -1), rtol=1e-3, atol=1e-3))
        row["note"] += "; output " + ("matches raw torch" if same else "DIFFERS from raw torch")
        if key == "detector_o8":
            row["note"] += f"; optimized={state.get(b'optimized')} ({_text(state.get(b'optimize_status'))})"
        rows.append(row)
    return rows


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def detector_rows(
    port: int | None,
    detector: Path,
    *,
    int8_model: Path | None,
    optimized: bool,
    seconds: float,
    max_calls: int | None,
) -> list[dict[str, Any]]:
    """The float detector in process (the reference of these rows), and as asked: its int8 variant
    in process and in the engine, and the float detector in the engine plainly and with OPTIMIZE.
    Batch 8 of uint16 synthetic scene tiles [8, 1, 512, 512] (models.scenes, seeds 900..907)."""
    from models.scenes import SceneConfig, draw_scene

    config = SceneConfig(width_px=512, height_px=512, n_ships=4, n_platforms=2)
    tiles = np.stack([draw_scene(900 + i, config)[0] for i in range(8)])
    x = torch.from_numpy(tiles)
    rows, outs = [], {}
    files = [(detector, "float")] + ([(int8_model, "int8")] if int8_model is not None else [])
    for path, name in files:
        module = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.inference_mode():
            for _ in range(3):
                outs[name] = module(x).numpy().copy()

            def call(_: int, m: Any = module) -> None:
                m(x)

            lat, wall = _timed_loop(call, seconds, max_calls)
        rows.append(
            _row(f"raw torch, batch 8, {name} detector", 8, lat, wall, note=f"in process, {path.name}")
        )
    if port is not None:
        client = connection.client_for(connection.local_url(port), timeout_s=120)
        engine_models = []
        if optimized:
            blob = detector.read_bytes()
            client.execute_command("AI.MODELSTORE", "det_f8", "TORCH", "CPU", "BLOB", blob)
            client.execute_command("AI.MODELSTORE", "det_o8", "TORCH", "CPU", "OPTIMIZE", "BLOB", blob)
            engine_models += [
                ("det_f8", "float detector", "float"),
                ("det_o8", "float detector, OPTIMIZE", "float"),
            ]
        if int8_model is not None:
            client.execute_command("AI.MODELSTORE", "det_q8", "TORCH", "CPU", "BLOB", int8_model.read_bytes())
            engine_models.append(("det_q8", "int8 detector", "int8"))
        client.close()
        for key, label, ref in engine_models:
            row, out = engine_batch8(
                port, key, tiles, name=f"engine DAG, batch 8, {label}", seconds=seconds, max_calls=max_calls
            )
            same = bool(np.allclose(out, outs[ref].reshape(8, -1), rtol=1e-3, atol=2e-3))
            row["note"] += f"; output {'matches' if same else 'DIFFERS from'} the {ref} file in process"
            rows.append(row)
    float_tput = rows[0]["throughput"]
    for r in rows:
        r["ratio_vs_float_detector"] = r["throughput"] / float_tput if float_tput else None
        if float_tput:
            r["note"] += f"; x{r['ratio_vs_float_detector']:.2f} the float detector in process"
    if "int8" in outs:
        live = outs["float"][..., 4] >= 0.5
        delta = float(np.abs(outs["int8"][..., 4] - outs["float"][..., 4])[live].max()) if live.any() else 0.0
        rows[1]["note"] += f"; max score delta vs float on detections >= 0.5: {delta:.3f}"
    return rows


# --------------------------------------------------------------------------- all of it


def run(
    *,
    seconds: float = 3.0,
    clients: int = 8,
    threads: int = 2,
    engine_module: Path | str = ENGINE_SO,
    max_calls: int | None = None,
    n_inputs: int = 16,
    optimized: bool = False,
    int8_model: Path | str | None = None,
    int8_source: Path | str | None = None,
) -> dict[str, Any]:
    """Measure every row; returns {"rows", "table", context...}.

    `threads` is both torch.set_num_threads here and the engine's INTRA_OP_PARALLELISM.
    `max_calls` bounds each row's request count too (for quick smoke runs).
    `optimized` adds batch-8 engine rows of the same model stored plainly and with OPTIMIZE;
    `int8_model` (with `int8_source`, its float detector; default the shipped one) adds int8 rows.
    """
    engine_module = Path(engine_module).resolve()
    torch.set_num_threads(threads)
    inputs = _inputs(n_inputs)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-engine-") as tmp:
        tmpdir = Path(tmp)
        model_path = common.save_standin(tmpdir / "standin.pt", bands=INPUT_SHAPE[0])
        tiny_path = _save_tiny(tmpdir / "tiny.pt")
        overhead: list[dict[str, Any]] = []
        r1, expected = raw_torch(model_path, inputs, batch=1, seconds=seconds, max_calls=max_calls)
        rows.append(r1)
        r8, _ = raw_torch(model_path, inputs, batch=8, seconds=seconds, max_calls=max_calls)
        rows.append(r8)
        rows.append(
            raw_torch_kept_blocks(
                model_path, batch=8, seconds=seconds, threads=threads, n_inputs=n_inputs, max_calls=max_calls
            )
        )

        server = RedisServer(
            data_dir=tmpdir / "redis",
            engine_module=engine_module,
            module_args=("THREADS_PER_QUEUE", "1", "INTRA_OP_PARALLELISM", str(threads)),
        )
        (tmpdir / "redis").mkdir()
        try:
            server.start()
        except ServerError as exc:
            reason = f"engine did not start ({engine_module}): {str(exc).splitlines()[0]}"
            rows.append(common.skipped("engine rows", reason))
        else:
            try:
                engine, overhead = _engine_rows(
                    server.port, model_path, tiny_path, inputs, expected[0],
                    clients=clients, seconds=seconds, max_calls=max_calls,
                )  # fmt: skip
                rows += engine
                if optimized:
                    ref8 = _raw_outputs(model_path, inputs[:8])
                    rows += optimized_rows(
                        server.port, model_path, inputs, ref8, seconds=seconds, max_calls=max_calls
                    )
                if int8_model is not None or optimized:
                    rows += detector_rows(
                        server.port, Path(int8_source or SHIPPED_DETECTOR),
                        int8_model=Path(int8_model) if int8_model is not None else None,
                        optimized=optimized, seconds=seconds, max_calls=max_calls,
                    )  # fmt: skip
            except (redis.RedisError, OSError, RuntimeError) as exc:
                # reported, not raised: the raw torch rows still mean something
                rows.append(common.skipped("engine rows", f"failed: {exc!r}"[:300]))
            finally:
                server.stop()
    reference = next((r["throughput"] for r in rows if r["name"] == "raw torch, batch 8"), None)
    common.add_ratios(rows, reference)
    common.add_ratios(overhead, None)
    return {
        "input": list(INPUT_SHAPE),
        "dtype": "float32",
        "model": "stand-in conv net (bench/common.py), 3 bands",
        "clients": clients,
        "seconds": seconds,
        "threads": threads,
        "machine": common.machine(),
        "rows": rows + overhead,
        "table": table(rows, overhead),
    }


def table(rows: Sequence[dict[str, Any]], overhead: Sequence[dict[str, Any]]) -> str:
    def f(v: Any, d: int = 1) -> str:
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"

    lines = [
        "| what | req/s | samples/s | p50 ms | p99 ms | x raw torch b8 | x SET+GET p50 | errors | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in [*rows, *overhead]:
        lines.append(
            f"| {r['name']} | {f(r.get('requests_per_s'))} | {f(r.get('samples_per_s'))} | {f(r['p50_ms'], 2)} | "
            f"{f(r['p99_ms'], 2)} | {f(r.get('ratio'), 2)} | {f(r.get('ratio_vs_set_get'), 2)} | "
            f"{r.get('errors', 0)} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_raw"]:
        return _raw_child(argv[1:])
    p = argparse.ArgumentParser(prog="bench/engine.py", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", type=Path, default=ENGINE_SO)
    p.add_argument("--max-calls", type=int, default=None)
    p.add_argument("--json", type=Path, help="write the result here as JSON")
    p.add_argument(
        "--optimized", action="store_true", help="add batch-8 rows: plain and OPTIMIZE in the engine"
    )
    p.add_argument("--int8-model", type=Path, default=None, help="add rows for this int8 detector file")
    p.add_argument(
        "--int8-source", type=Path, default=None, help="its float detector (default: the shipped one)"
    )
    args = p.parse_args(argv)
    result = run(
        seconds=args.seconds,
        clients=args.clients,
        threads=args.threads,
        engine_module=args.engine,
        max_calls=args.max_calls,
        optimized=args.optimized,
        int8_model=args.int8_model,
        int8_source=args.int8_source,
    )
    m = result["machine"]
    print(
        f"model: {result['model']}; input 1x{'x'.join(map(str, result['input']))} float32; "
        f"{args.threads} torch threads; {m['cpu']} x {m['cores']}; torch {m['torch']}"
    )
    print(result["table"])
    if args.json:
        common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
