"""`groundwatch bench` (`make bench`): every figure of docs/performance.md from one run.

The shipped detector (models/artifacts/detector.pt) on synthetic uint16 tiles [1, 512, 512],
every row in a fresh process, in interleaved rounds (bench/harness.py): the reference (the model
in process at batch 1 and 8, malloc keeping large blocks as the engine's cache does), batch 8
with glibc's default malloc, the engine with 8 auto-batching clients, the tiny-model round trip
beside SET+GET, the pipeline end to end (1, 2 and 4 consumers, with their WATCH conflicts; the
same 2 on a 3-master cluster; latency at half the 2-consumer throughput), FastAPI, a Redis list
queue and TorchServe, and
ingest; then the ratios that issue 17's goals are stated in. After the rounds: monitoring's cost
(bench/profiling.py). The table goes to <out>/results.md (and results.json, per-round samples
included) and is printed; nothing is asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import alternatives, common, harness
from bench import engine as engine_bench
from bench import pipeline as pipeline_bench
from bench import profiling as profiling_bench
from groundwatch.errors import ServerError
from groundwatch.settings import Settings

INGEST = "ingest, tiled GeoTIFF"
MODEL_ROWS = (
    engine_bench.REF_B1,
    engine_bench.REF_B8,
    engine_bench.ENGINE.format(clients=8),
    pipeline_bench.ONE,
    pipeline_bench.TWO,
    *alternatives.ROWS.values(),
)


def specs(detector: str, *, quick: bool, threads: int) -> list[harness.Spec]:
    """The rows of a run; `quick` shortens every row (the figures get noisier, not different)."""
    seconds = 1.0 if quick else 3.0
    frames = pipeline_bench.BACKLOG // 3 if quick else pipeline_bench.BACKLOG
    return [
        *engine_bench.specs(detector, seconds=seconds, clients=8, threads=threads),
        *pipeline_bench.specs(detector, frames=frames, threads=threads, consumers=(1, 2, 4), cluster=3),
        *alternatives.specs(detector, clients=8, seconds=seconds, threads=threads),
        harness.Spec(INGEST, "bench.ingest:ingest_row", {"size": 2048, "repeats": 2 if quick else 3},
                     note="CPU: ingest + redis-server"),
    ]  # fmt: skip


def ratios() -> list[harness.Ratio]:
    """What issue 17's goals (and issue 16's cluster line) are measured by; each names its sides."""
    P = pipeline_bench
    engine = engine_bench.ENGINE.format(clients=8)
    rest, ts = alternatives.ROWS["rest"], alternatives.ROWS["torchserve"]
    return [
        *engine_bench.ratios(8),
        harness.Ratio("pipeline 1 consumer / engine", P.ONE, engine,
                      meaning="end to end with one consumer against the engine alone"),
        harness.Ratio("pipeline 2 consumers / engine", P.TWO, engine, goal=(">=", 0.9),
                      meaning="end to end against the engine alone, the same model and server"),
        harness.Ratio("pipeline 2 consumers / engine, CPU ms per tile", P.TWO, engine, metric="cpu_ms_per_tile",
                      goal=("<=", 1.15), meaning="what the pipeline's own work costs per tile beyond the engine's"),
        harness.Ratio("cluster / 1 server, tiles/s", P.CLUSTER, P.TWO,
                      meaning="the same feed and consumers on a 3-master cluster (one feed lives on one master)"),
        harness.Ratio("cluster / 1 server, CPU ms per tile", P.CLUSTER, P.TWO, metric="cpu_ms_per_tile",
                      meaning="the cost per tile must not grow on a cluster (issue 16)"),
        harness.Ratio("latency p99 at 50% load / (2 x batch-1 + 10 ms)", P.LATENCY, engine_bench.REF_B1,
                      metric="p99_ms", den_metric="p50_ms", den_scale=2.0, den_offset=10.0, goal=("<=", 1.0),
                      meaning="end-to-end p99 (XADD to published) against the model's own batch-1 call time"),
        harness.Ratio("latency p50 at 50% load / batch-1", P.LATENCY, engine_bench.REF_B1,
                      metric="p50_ms", den_metric="p50_ms"),
        harness.Ratio("pipeline / FastAPI, tiles/s", P.TWO, rest, goal=(">=", 1.5)),
        harness.Ratio("pipeline / TorchServe, tiles/s", P.TWO, ts, goal=(">=", 2.0)),
        harness.Ratio("pipeline p99 at 50% load / FastAPI p99", P.LATENCY, rest, metric="p99_ms", goal=("<=", 1.0),
                      meaning="FastAPI's p99 is under 8 closed-loop clients (saturated)"),
        harness.Ratio("pipeline p99 at 50% load / TorchServe p99", P.LATENCY, ts, metric="p99_ms", goal=("<=", 1.0),
                      meaning="TorchServe's p99 is under 8 closed-loop clients (saturated)"),
        harness.Ratio("ingest / fastest model row", INGEST, "", den_max_of=MODEL_ROWS, goal=(">=", 5.0)),
    ]  # fmt: skip


def main(settings: Settings, *, quick: bool = False, out: str = "bench/results", rounds: int = 3) -> int:
    detector = common.DETECTOR_PATH
    if not detector.exists():
        raise ServerError(f"{detector} is missing; train it with `groundwatch train`")
    threads = engine_bench.DEFAULT_THREADS
    m = common.machine()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = harness.run(
        specs(str(detector), quick=quick, threads=threads),
        ratios(),
        rounds=rounds,
        title="groundwatch bench" + (" (quick)" if quick else ""),
        context={
            "machine": f"{m['cpu']} x {m['cores']} cores, torch {m['torch']}, {threads} intra-op threads",
            "model": f"{detector.name} on synthetic uint16 tiles [1, 512, 512]",
        },
        log=folder / "rows.log",
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    prof = profiling_bench.run(settings, frames=16 if quick else 32, rounds=3)
    result["profiling"] = {k: v for k, v in prof.items() if k != "table"}
    result["table"] += f"\n### Monitoring's cost (bench/profiling.py)\n\n{prof['table']}"
    md, js = harness.write(result, folder)
    print(result["table"])
    print(f"written: {md}, {js}")
    return 0
