"""The usual ways to serve a model, measured on the same model, tiles and machine as groundwatch.

Rows (each: tiles/s, latency p50/p99 per request, ratio to raw torch at batch 8):

- raw torch in process, batch 1 and batch 8: the limit, no serving at all;
- a FastAPI endpoint under uvicorn (one worker process) running the model per request: the usual
  "wrap it in a REST API" deployment;
- a Redis list queue with a Python batching worker: clients LPUSH (id, tile) and BLPOP their
  answer; one worker BRPOPs up to 8 requests, runs them as one batch, pushes each answer to the
  request's own list: the classic "scalable REST API with request queuing" pattern;
- TorchServe with the model in a custom handler, server-side batching up to 8.

Every server is started here on 127.0.0.1 free ports, in its own process group, and killed in a
`finally`; request loops are bounded by time (and optionally by count). Each server's answers
are checked against in-process torch during its warm-up.

    from bench.alternatives import run
    result = run(None, tiles, clients=8, seconds=5.0, threads=2)   # result["rows"], result["table"]

    python bench/alternatives.py --seconds 5 --clients 8 --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python bench/alternatives.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, harness

ALTERNATIVES = ("torch", "rest", "queue", "torchserve")
QUEUE_KEY = "bench:queue"
READY_KEY = "bench:worker-ready"
RESULT_PREFIX = "bench:result:"
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- answers


def expected_outputs(model_path: str | Path, tiles: np.ndarray, threads: int) -> list[np.ndarray]:
    """In-process torch's live detections for each tile, one tile at a time (the reference)."""
    import torch

    before = torch.get_num_threads()
    try:
        module = common.load_model(model_path, threads)
        return [common.live_rows(common.infer(module, tiles[i : i + 1])[0]) for i in range(len(tiles))]
    finally:
        torch.set_num_threads(before)


def same_detections(got: np.ndarray, want: np.ndarray, atol: float = 1e-3) -> bool:
    """Equal up to float noise; rows may swap where two scores tie to within that noise."""
    if got.shape != want.shape:
        return False
    if np.allclose(got, want, atol=atol, rtol=1e-4):
        return True
    order = np.lexsort(np.round(got, 2).T[::-1])
    order_w = np.lexsort(np.round(want, 2).T[::-1])
    return bool(np.allclose(got[order], want[order_w], atol=atol, rtol=1e-4))


def checker(expected: Sequence[np.ndarray] | None) -> Callable[[int, Any], None] | None:
    if expected is None:
        return None

    def check(i: int, answer: Any) -> None:
        got = common.detections_array(answer)
        if not same_detections(got, expected[i]):
            raise AssertionError(f"tile {i}: {len(got)} detections differ from in-process torch")

    return check


# --------------------------------------------------------------------------- 1. raw torch


def raw_torch(
    model_path: str | Path,
    tiles: np.ndarray,
    *,
    batch: int,
    seconds: float,
    threads: int,
    max_requests: int | None = None,
) -> dict[str, Any]:
    """The model called in this process, `batch` tiles a call, back to back for `seconds` after
    warm-up (`harness.settle`). The run's reference is bench/engine.py's `reference` row, in a
    fresh process; this one serves the module's own table."""
    import torch

    before = torch.get_num_threads()
    try:
        module = common.load_model(model_path, threads)
        n = len(tiles)
        batches = [
            np.ascontiguousarray(tiles[[(s + j) % n for j in range(batch)]]) for s in range(0, n, batch)
        ] or [tiles]
        warm = harness.settle(lambda: common.infer(module, batches[0]), max_calls=10 if max_requests else 40)
        cpu0 = common.cpu_seconds()
        latencies, wall = harness.timed_loop(
            lambda i: common.infer(module, batches[i % len(batches)]), seconds, max_calls=max_requests
        )
        cpu = common.cpu_seconds() - cpu0
    finally:
        torch.set_num_threads(before)
    r = common.row(
        f"raw torch, batch {batch}",
        tiles=len(latencies) * batch,
        wall_s=wall,
        latencies_s=latencies,
        cpu_s=cpu,
        note=f"in process, {threads} threads; latency per batch of {batch}",
    )
    r["warmup_calls"] = warm
    return r


# --------------------------------------------------------------------------- HTTP client


def http_caller(
    port: int, path: str, answer_key: str = "detections"
) -> Callable[[], Callable[[np.ndarray], Any]]:
    """A client factory: one keep-alive HTTP connection a client thread, POST raw tile bytes."""

    def make() -> Callable[[np.ndarray], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def call(tile: np.ndarray) -> Any:
            conn.request(
                "POST", path, body=np.ascontiguousarray(tile).tobytes(), headers=common.tile_headers(tile)
            )
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
            return json.loads(body)[answer_key]

        return call

    return make


def _measure(
    name: str,
    make_client: Callable[[], Callable[[np.ndarray], Any]],
    tiles: np.ndarray,
    *,
    clients: int,
    seconds: float,
    expected: Sequence[np.ndarray] | None,
    max_requests: int | None,
    note: str,
    server_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Warm up (answers checked against `expected`), then the timed closed loop. CPU is counted
    for this process (the clients) and `server_pids` with all their descendants."""
    warm = harness.closed_loop(
        make_client,
        tiles,
        clients=clients,
        seconds=60.0,
        max_requests=max(clients * 6, len(tiles)),
        check=checker(expected),
        max_errors=3,
    )
    if warm.errors:
        r = common.row(name, errors=warm.errors, note=f"failed in warm-up: {warm.first_error}")
        r["throughput"] = None
        return r
    cpu0 = common.cpu_seconds(server_pids)
    res = harness.closed_loop(make_client, tiles, clients=clients, seconds=seconds, max_requests=max_requests)
    cpu = common.cpu_seconds(server_pids) - cpu0
    if res.first_error:
        note = f"{note}; first error: {res.first_error}"
    r = common.row(
        name,
        tiles=res.tiles,
        wall_s=res.wall_s,
        latencies_s=res.latencies_s,
        errors=res.errors,
        note=note,
        cpu_s=cpu,
    )
    r["warmup_calls"] = len(warm.latencies_s)
    return r


# --------------------------------------------------------------------------- 2. REST endpoint


def rest_app(model_path: str, threads: int) -> Any:
    """The FastAPI app: POST /predict (raw tile bytes, X-Dtype and X-Shape headers) -> JSON."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool

    module = common.load_model(model_path, threads)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    async def predict(request: Request) -> dict[str, Any]:
        body = await request.body()
        tile = common.tile_from_bytes(
            body, request.headers[common.DTYPE_HEADER], request.headers[common.SHAPE_HEADER]
        )
        out = await run_in_threadpool(common.infer, module, tile[None])
        return {"detections": common.detections_json(out[0])}

    # FastAPI reads annotations to inject the request; with postponed annotations they are strings
    # naming a class this module does not import at top level, so give it the class itself.
    predict.__annotations__ = {"request": Request, "return": dict}
    app.post("/predict")(predict)
    return app


def serve_rest(model_path: str, port: int, threads: int) -> None:
    import uvicorn

    uvicorn.run(rest_app(model_path, threads), host="127.0.0.1", port=port, log_level="warning", workers=1)


def rest_endpoint(
    model_path: str | Path,
    tiles: np.ndarray,
    *,
    clients: int,
    seconds: float,
    threads: int,
    expected: Sequence[np.ndarray] | None = None,
    max_requests: int | None = None,
) -> dict[str, Any]:
    name = "FastAPI REST, per request"
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return common.skipped(name, f"{exc.name} is not installed (pip install -e '.[bench]')")
    port = common.free_port()
    with tempfile.TemporaryDirectory(prefix="gw-bench-rest-") as tmp:
        log = Path(tmp) / "server.log"
        proc = common.spawn(
            [
                sys.executable,
                "-m",
                "bench.alternatives",
                "_serve-rest",
                str(model_path),
                str(port),
                str(threads),
            ],
            env=common.thread_env(threads),
            cwd=REPO_ROOT,
            log=log,
        )
        try:
            common.wait_http(f"http://127.0.0.1:{port}/health", 60.0, proc, log)
            return _measure(
                name,
                http_caller(port, "/predict"),
                tiles,
                clients=clients,
                seconds=seconds,
                expected=expected,
                max_requests=max_requests,
                note=f"uvicorn, 1 worker, {threads} torch threads, model calls overlap; {clients} clients",
                server_pids=[proc.pid],
            )
        except RuntimeError as exc:
            return common.skipped(name, f"server failed: {exc}")
        finally:
            common.kill_group(proc)


# --------------------------------------------------------------------------- 3. Redis list queue


def queue_worker(url: str, model_path: str, threads: int, max_batch: int) -> None:
    """BRPOP a request, RPOP up to max_batch-1 more, run them as one batch, answer each one."""
    from groundwatch import connection

    r = connection.client_for(url, timeout_s=None)
    module = common.load_model(model_path, threads)
    r.set(READY_KEY, "1")
    while True:
        item = r.brpop([QUEUE_KEY], timeout=1)
        if item is None:
            continue
        items = [item[1]]
        if max_batch > 1:
            more = r.rpop(QUEUE_KEY, max_batch - 1)
            items += list(more or [])
        parsed = [_parse_request(raw) for raw in items]
        by_shape: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for k, (_, tile) in enumerate(parsed):
            by_shape.setdefault((tile.dtype.str, tile.shape), []).append(k)
        pipe = r.pipeline(transaction=False)
        for idxs in by_shape.values():
            out = common.infer(module, np.stack([parsed[k][1] for k in idxs]))
            for k, det in zip(idxs, out, strict=True):
                key = RESULT_PREFIX + parsed[k][0]
                pipe.lpush(key, json.dumps({"detections": common.detections_json(det)}))
                pipe.expire(key, 120)
        pipe.execute()


def _request_bytes(req_id: str, tile: np.ndarray) -> bytes:
    shape = ",".join(str(d) for d in tile.shape)
    return f"{req_id}\n{tile.dtype.str}\n{shape}\n".encode() + np.ascontiguousarray(tile).tobytes()


def _parse_request(raw: bytes) -> tuple[str, np.ndarray]:
    req_id, dtype, shape, body = raw.split(b"\n", 3)
    return req_id.decode(), common.tile_from_bytes(body, dtype.decode(), shape.decode())


def queue_caller(url: str) -> Callable[[], Callable[[np.ndarray], Any]]:
    def make() -> Callable[[np.ndarray], Any]:
        from groundwatch import connection

        r = connection.client_for(url, timeout_s=None)

        def call(tile: np.ndarray) -> Any:
            req_id = uuid.uuid4().hex
            r.lpush(QUEUE_KEY, _request_bytes(req_id, tile))
            got = r.blpop([RESULT_PREFIX + req_id], timeout=120)
            if got is None:
                raise TimeoutError("no answer from the queue worker in 120 s")
            return json.loads(got[1])["detections"]

        return call

    return make


def redis_queue(
    model_path: str | Path,
    tiles: np.ndarray,
    *,
    clients: int,
    seconds: float,
    threads: int,
    expected: Sequence[np.ndarray] | None = None,
    max_requests: int | None = None,
    max_batch: int = 8,
) -> dict[str, Any]:
    from groundwatch import connection
    from groundwatch.errors import ServerError
    from groundwatch.server import RedisServer

    name = "Redis list queue + Python batching worker"
    with tempfile.TemporaryDirectory(prefix="gw-bench-queue-") as tmp:
        server = RedisServer(data_dir=Path(tmp) / "redis", engine_module=None)
        log = Path(tmp) / "worker.log"
        proc: subprocess.Popen[bytes] | None = None
        try:
            try:
                server.start()
            except ServerError as exc:
                return common.skipped(name, f"redis-server: {exc}")
            proc = common.spawn(
                [
                    sys.executable,
                    "-m",
                    "bench.alternatives",
                    "_queue-worker",
                    server.url,
                    str(model_path),
                    str(threads),
                    str(max_batch),
                ],
                env=common.thread_env(threads),
                cwd=REPO_ROOT,
                log=log,
            )
            r = connection.client_for(server.url, timeout_s=None)
            deadline = time.monotonic() + 60.0
            while not r.exists(READY_KEY):
                if proc.poll() is not None or time.monotonic() > deadline:
                    return common.skipped(name, f"worker did not start{common.log_tail(log)}")
                time.sleep(0.05)
            return _measure(
                name,
                queue_caller(server.url),
                tiles,
                clients=clients,
                seconds=seconds,
                expected=expected,
                max_requests=max_requests,
                note=f"redis-server + 1 worker, batch <= {max_batch}, {threads} torch threads; {clients} clients",
                server_pids=[proc.pid] + ([server.process.pid] if server.process else []),
            )
        finally:
            common.kill_group(proc)
            server.stop()


# --------------------------------------------------------------------------- 4. TorchServe

TS_HANDLER = '''
"""TorchServe handler for the bench: raw tile bytes (X-Dtype, X-Shape headers) -> detections."""
import json
import os

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler


class TileHandler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(int(os.environ.get("GW_BENCH_THREADS", "1")))
        model_dir = context.system_properties.get("model_dir")
        serialized = context.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu").eval()
        self.initialized = True

    def handle(self, data, context):
        tiles = []
        for i, req in enumerate(data):
            headers = {k.lower(): v for k, v in context.get_all_request_header(i).items()}
            body = req.get("body") or req.get("data")
            dims = tuple(int(d) for d in headers["x-shape"].split(",") if d)
            tiles.append(np.frombuffer(bytes(body), dtype=np.dtype(headers["x-dtype"])).reshape(dims))
        answers = [None] * len(tiles)
        groups = {}
        for k, t in enumerate(tiles):
            groups.setdefault((t.dtype.str, t.shape), []).append(k)
        with torch.inference_mode():
            for idxs in groups.values():
                out = self.model(torch.from_numpy(np.stack([tiles[k] for k in idxs]))).numpy()
                for k, det in zip(idxs, out):
                    live = det[det[:, 4] > 0]
                    answers[k] = json.dumps({"detections": [[float(v) for v in r] for r in live]})
        return answers
'''


def _torchserve_tools() -> tuple[str, str] | str:
    """(torchserve, torch-model-archiver) executables, or the reason they cannot run here."""
    bindir = Path(sys.executable).parent
    found = []
    for tool in ("torchserve", "torch-model-archiver"):
        exe = bindir / tool
        path = str(exe) if exe.exists() else shutil.which(tool)
        if path is None:
            return f"{tool} is not installed (pip install -e '.[bench]')"
        found.append(path)
    java = shutil.which("java")
    if java is None:
        return "java is not on PATH (TorchServe needs Java 11+)"
    return found[0], found[1]


def _ts_failure(log: Path) -> str:
    """The Python error a TorchServe backend worker died of, from the server's log, if any."""
    if not log.exists():
        return ""
    lines = [
        ln.split("MODEL_LOG - ", 1)[1]
        for ln in log.read_text(errors="replace").splitlines()
        if "MODEL_LOG - " in ln
    ]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return f" (backend: {errors[-1].strip()})" if errors else common.log_tail(log, 5)


def torchserve(
    model_path: str | Path,
    tiles: np.ndarray,
    *,
    clients: int,
    seconds: float,
    threads: int,
    expected: Sequence[np.ndarray] | None = None,
    max_requests: int | None = None,
    max_batch: int = 8,
    max_batch_delay_ms: int = 5,
    start_timeout_s: float = 120.0,
) -> dict[str, Any]:
    name = "TorchServe, batch <= 8"
    tools = _torchserve_tools()
    if isinstance(tools, str):
        return common.skipped(name, tools)
    ts_exe, archiver = tools
    with tempfile.TemporaryDirectory(prefix="gw-bench-ts-") as tmp_s:
        tmp = Path(tmp_s)
        store = tmp / "store"
        store.mkdir()
        (tmp / "handler.py").write_text(TS_HANDLER)
        shutil.copy(model_path, tmp / "model.pt")
        arch = subprocess.run(
            [
                archiver,
                "--model-name",
                "detector",
                "--version",
                "1.0",
                "--serialized-file",
                str(tmp / "model.pt"),
                "--handler",
                str(tmp / "handler.py"),
                "--export-path",
                str(store),
                "--force",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=common.thread_env(threads),
        )
        if arch.returncode != 0:
            return common.skipped(name, f"torch-model-archiver failed: {arch.stderr.strip()[-300:]}")
        ports = [common.free_port() for _ in range(3)]
        (tmp / "config.properties").write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{ports[0]}",
                    f"management_address=http://127.0.0.1:{ports[1]}",
                    f"metrics_address=http://127.0.0.1:{ports[2]}",
                    "default_workers_per_model=1",
                    "install_py_dep_per_model=false",
                    "disable_token_authorization=true",
                    "enable_model_api=true",
                    "job_queue_size=1000",
                    "vmargs=-Xmx1g -XX:+UseContainerSupport",
                    f"model_store={store}",
                    "",
                ]
            )
        )
        log = tmp / "torchserve.log"
        env = common.thread_env(threads)
        env["LOG_LOCATION"] = str(tmp / "logs")
        env["METRICS_LOCATION"] = str(tmp / "logs")
        proc = common.spawn(
            [
                ts_exe,
                "--start",
                "--foreground",
                "--ncs",
                "--disable-token-auth",
                "--enable-model-api",
                "--ts-config",
                str(tmp / "config.properties"),
                "--model-store",
                str(store),
            ],
            env=env,
            cwd=tmp,
            log=log,
        )
        try:
            common.wait_http(f"http://127.0.0.1:{ports[0]}/ping", start_timeout_s, proc, log)
            conn = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=start_timeout_s)
            conn.request(
                "POST",
                f"/models?url=detector.mar&batch_size={max_batch}&max_batch_delay={max_batch_delay_ms}"
                "&initial_workers=1&synchronous=true&response_timeout=120",
            )
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status != 200:
                text = body.decode(errors="replace")
                message = json.loads(text).get("message", text[:200]) if text.startswith("{") else text[:200]
                return common.skipped(
                    name, f"model registration: HTTP {resp.status} {message}{_ts_failure(log)}"
                )
            return _measure(
                name,
                http_caller(ports[0], "/predictions/detector"),
                tiles,
                clients=clients,
                seconds=seconds,
                expected=expected,
                max_requests=max_requests,
                note=f"1 worker, batch <= {max_batch}, delay {max_batch_delay_ms} ms, {threads} torch threads; "
                f"{clients} clients",
                server_pids=[proc.pid],
            )
        except (RuntimeError, OSError) as exc:
            return common.skipped(name, f"server failed: {exc}")
        finally:
            common.kill_group(proc, timeout_s=15.0)


# --------------------------------------------------------------------------- on the harness

SERVERS = {"rest": "rest_endpoint", "queue": "redis_queue", "torchserve": "torchserve"}


def served(
    kind: str, model: str, clients: int, seconds: float, threads: int, n_tiles: int = 16
) -> dict[str, Any]:
    """One alternative (`kind` in SERVERS) as a harness row: its server started here, answers
    checked against in-process torch in its warm-up, then the closed loop. A row that could not
    run comes back as {"failed": why}."""
    tiles = common.make_tiles(n_tiles, bands=1)
    expected = expected_outputs(model, tiles, threads)
    measure = globals()[SERVERS[kind]]
    r = measure(model, tiles, clients=clients, seconds=seconds, threads=threads, expected=expected)
    if r.get("throughput") is None:
        return {"failed": str(r.get("note", ""))}
    return {k: v for k, v in r.items() if k not in ("name", "ratio")}


ROWS = {
    "rest": "FastAPI REST, per request",
    "queue": "Redis list queue + Python batching worker",
    "torchserve": "TorchServe, batch <= 8",
}


def specs(
    model: str,
    *,
    clients: int = 8,
    seconds: float = 3.0,
    threads: int = 2,
    only: Sequence[str] = tuple(SERVERS),
) -> list[harness.Spec]:
    """The served alternatives as harness rows (the in-process rows are bench/engine.py's)."""
    params = {"model": model, "clients": clients, "seconds": seconds, "threads": threads}
    return [
        harness.Spec(ROWS[k], "bench.alternatives:served", {"kind": k, **params}, timeout_s=420.0)
        for k in only
    ]


# --------------------------------------------------------------------------- all of it


def run(
    model_path: str | None,
    tiles: np.ndarray,
    *,
    clients: int = 8,
    seconds: float = 5.0,
    threads: int = 2,
    only: Sequence[str] | None = None,
    verify: bool = True,
    max_requests: int | None = None,
) -> dict[str, Any]:
    """Measure every alternative on `tiles` (uint16 [N, C, H, W]); returns rows, a table and context.

    `model_path` None means models/artifacts/detector.pt, or the stand-in when that is missing.
    `only` picks among ALTERNATIVES. `verify` checks each server's warm-up answers against
    in-process torch (a mismatch fails that row). Ratios are to raw torch at batch 8.
    """
    chosen = tuple(only) if only else ALTERNATIVES
    unknown = set(chosen) - set(ALTERNATIVES)
    if unknown:
        raise ValueError(f"unknown alternatives: {', '.join(sorted(unknown))}")
    tiles = np.ascontiguousarray(tiles)
    rows: list[dict[str, Any]] = []
    with common.model_file(model_path, bands=int(tiles.shape[1])) as (path, described):
        expected = expected_outputs(path, tiles, threads) if verify else None
        served = {
            "clients": clients,
            "seconds": seconds,
            "threads": threads,
            "expected": expected,
            "max_requests": max_requests,
        }
        if "torch" in chosen:
            for batch in (1, 8):
                rows.append(
                    raw_torch(
                        path, tiles, batch=batch, seconds=seconds, threads=threads, max_requests=max_requests
                    )
                )
        if "rest" in chosen:
            rows.append(rest_endpoint(path, tiles, **served))  # type: ignore[arg-type]
        if "queue" in chosen:
            rows.append(redis_queue(path, tiles, **served))  # type: ignore[arg-type]
        if "torchserve" in chosen:
            rows.append(torchserve(path, tiles, **served))  # type: ignore[arg-type]
    reference = next((r["throughput"] for r in rows if r["name"] == "raw torch, batch 8"), None)
    common.add_ratios(rows, reference)
    return {
        "model": described,
        "tiles": list(tiles.shape),
        "dtype": str(tiles.dtype),
        "clients": clients,
        "seconds": seconds,
        "threads": threads,
        "machine": common.machine(),
        "rows": rows,
        "table": common.markdown_table(rows),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve-rest"]:
        serve_rest(argv[1], int(argv[2]), int(argv[3]))
        return 0
    if argv[:1] == ["_queue-worker"]:
        with contextlib.suppress(KeyboardInterrupt):
            queue_worker(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return 0
    p = argparse.ArgumentParser(
        prog="bench/alternatives.py", description=__doc__.split("\n")[0] if __doc__ else ""
    )
    p.add_argument("--model", default=None, help="TorchScript model (default: the detector, else a stand-in)")
    p.add_argument("--tiles", type=int, default=16, help="synthetic tiles to cycle through")
    p.add_argument("--bands", type=int, default=1)
    p.add_argument("--size", type=int, default=common.TILE)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="+", choices=ALTERNATIVES)
    p.add_argument("--json", type=Path, help="write the result here as JSON")
    args = p.parse_args(argv)
    tiles = common.make_tiles(args.tiles, args.bands, args.size)
    result = run(
        args.model, tiles, clients=args.clients, seconds=args.seconds, threads=args.threads, only=args.only
    )
    print(
        f"model: {result['model']}; tiles {result['tiles']} {result['dtype']}; "
        f"{args.clients} clients, {args.seconds:g} s a row, {args.threads} torch threads; "
        f"{result['machine']['cpu']} x {result['machine']['cores']}"
    )
    print(result["table"])
    if args.json:
        common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
