"""`groundwatch bench` (`make bench`): groundwatch beside the usual ways of serving a model.

Same detector (models/artifacts/detector.pt), same uint16 tiles, same machine, one run:
raw torch in process (the limit), the engine with one client and with 8 auto-batching clients,
the groundwatch pipeline end to end (1 and 2 consumers), a FastAPI REST endpoint, a Redis list
queue with a Python batching worker, and TorchServe when it is installed. Every row gets the
ratio of its throughput to raw torch at batch 8 measured in the same run. Results go to
<out>/results.md and <out>/results.json; nothing is asserted.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import alternatives, common
from bench import ingest as ingest_bench
from bench import pipeline as pipeline_bench
from bench import profiling as profiling_bench
from groundwatch import ai, connection
from groundwatch.errors import ServerError
from groundwatch.server import RedisServer
from groundwatch.settings import Settings

MODEL_KEY = "bench:{b}:detector"
BATCHED_KEY = "bench:{b}:detector_b8"
ROUTE = "bench:{b}:route"


def engine_rows(
    settings: Settings, detector: Path, tiles: np.ndarray, *, clients: int, seconds: float, threads: int
) -> list[dict[str, Any]]:
    """The detector in the engine: one client, then `clients` clients on a BATCHSIZE model."""
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        server = RedisServer(
            data_dir=Path(tmp),
            engine_module=settings.engine_module,
            module_args=("THREADS_PER_QUEUE", "1", "INTRA_OP_PARALLELISM", str(threads)),
        )
        try:
            server.start()
        except ServerError as e:
            return [common.skipped("engine", str(e).splitlines()[0])]
        try:
            engine = ai.Engine(connection.connect(settings, url=server.url, timeout_s=120))
            blob = detector.read_bytes()
            engine.model_store(MODEL_KEY, blob)
            # MINBATCHTIMEOUT lets a batch fill up from clients whose requests are a moment apart.
            engine.model_store(BATCHED_KEY, blob, batch=clients, min_batch=clients, min_batch_timeout_ms=5)

            def make(key: str) -> Any:
                def factory() -> Any:
                    client = connection.connect(settings, url=server.url, timeout_s=120)
                    return lambda tile: ai.dag_result(
                        client.execute_command(*ai.dag_command(key, ROUTE, tile[np.newaxis]))
                    )

                return factory

            out = []
            for key, n, label in (
                (MODEL_KEY, 1, "engine DAG, 1 client"),
                (BATCHED_KEY, clients, f"engine DAG, {clients} clients, BATCHSIZE {clients}"),
            ):
                make(key)()(tiles[0])  # warm up
                res = common.closed_loop(make(key), tiles, clients=n, seconds=seconds)
                info = engine.model_info(key)
                r = common.row(
                    label,
                    tiles=len(res.latencies_s),
                    wall_s=res.wall_s,
                    latencies_s=res.latencies_s,
                    errors=res.errors,
                )
                r["note"] = f"mean batch {info.samples / info.calls:.2f} (AI.INFO)" if info.calls else ""
                out.append(r)
            return out
        finally:
            server.stop()


def pipeline_rows(detector: Path, seconds: float) -> list[dict[str, Any]]:
    result = pipeline_bench.run(seconds=seconds, model_path=str(detector))
    rows = []
    for p in result["pipelines"]:
        r = common.row(p["name"], tiles=p["frames"], wall_s=p["wall_s"])
        r["p50_ms"], r["p99_ms"] = p["p50_ms"], p["p99_ms"]
        r["note"] = "XADD to detections published; " + (
            f"x{p['ratio']:.2f} the engine alone in the same run" if p.get("ratio") else ""
        )
        rows.append(r)
    return rows


def main(settings: Settings, *, quick: bool = False, out: str = "bench/results") -> int:
    detector = common.DETECTOR_PATH
    if not detector.exists():
        raise ServerError(f"{detector} is missing; train it with `groundwatch train`")
    seconds, clients, threads = (2.0 if quick else 6.0), 8, 2
    tiles = common.make_tiles(16, bands=1)
    started = time.monotonic()
    alt = alternatives.run(str(detector), tiles, clients=clients, seconds=seconds, threads=threads)
    rows = [r for r in alt["rows"] if r["name"].startswith("raw torch")]
    rows += engine_rows(settings, detector, tiles, clients=clients, seconds=seconds, threads=threads)
    rows += pipeline_rows(detector, seconds)
    rows += [r for r in alt["rows"] if not r["name"].startswith("raw torch")]
    reference = next((r["throughput"] for r in rows if r["name"] == "raw torch, batch 8"), None)
    common.add_ratios(rows, reference)
    ingest = ingest_bench.run(repeats=1 if quick else 3)
    prof = profiling_bench.run(settings, frames=16 if quick else 64, rounds=3)
    result = {
        "machine": common.machine(),
        "model": str(detector),
        "tiles": list(tiles.shape),
        "clients": clients,
        "seconds_per_row": seconds,
        "torch_threads": threads,
        "rows": rows,
        "ingest": ingest["rows"],
        "profiling": {k: v for k, v in prof.items() if k != "table"},
        "wall_s": time.monotonic() - started,
    }
    table = common.markdown_table(rows)
    m = result["machine"]
    text = (
        f"# groundwatch bench\n\n{m['cpu']} x {m['cores']} cores, torch {m['torch']}, {threads} torch threads; "
        f"detector on uint16 tiles {list(tiles.shape)}; {clients} clients; {seconds:.0f} s a row.\n\n"
        f"{table}\n## Ingest\n\n{ingest['table']}\n\n## Monitoring's cost\n\n{prof['table']}"
    )
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(text)
    common.write_json(folder / "results.json", result)
    print(text)
    print(f"written: {folder / 'results.md'}, {folder / 'results.json'}")
    return 0
