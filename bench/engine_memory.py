"""A long run of the engine alone: batches through the bundled detector, the engine's memory
figures (groundwatch.enginestats) sampled at a fixed interval, one JSON line per sample.

    python -m bench.engine_memory --minutes 30 --interval-s 30 --out engine-memory.jsonl

It answers one question: after warm-up, do the engine's figures (RSS, its heap, the tensors of
runs, the block cache, the weights) stay flat while it keeps running? The summary printed at
the end compares the first sample after warm-up with the last and with the highest.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from groundwatch import connection, enginestats
from groundwatch.commands import engine_args
from groundwatch.server import RedisServer
from groundwatch.settings import Settings

MIB = 1 << 20
FIGURES = ("rss", "redis_used", "outside_redis", "unexplained", "torch_allocated", "model_weights", "cache")


def drive(port: int, model: str, batch: int, stop: threading.Event, counts: list[int], seed: int) -> None:
    """One client: MODELEXECUTE of `batch` tiles in a loop (a fresh input every call)."""
    client = connection.client_for(connection.local_url(port), timeout_s=600)
    tiles = common.make_tiles(n=batch * 4, seed=seed)
    i = 0
    while not stop.is_set():
        x = np.ascontiguousarray(tiles[(i % 4) * batch : (i % 4 + 1) * batch])
        key, out = f"x{seed}", f"y{seed}"
        client.execute_command("AI.TENSORSET", key, "UINT16", *x.shape, "BLOB", x.tobytes())
        client.execute_command("AI.MODELEXECUTE", model, "INPUTS", 1, key, "OUTPUTS", 1, out)
        counts[seed] += 1
        i += 1


def summarise(samples: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    steady = samples[warmup:] or samples
    first, last = steady[0], steady[-1]
    out: dict[str, Any] = {"samples": len(samples), "warmup_samples": warmup}
    for name in FIGURES:
        values = [s[name] for s in steady]
        out[name] = {
            "first_mib": round(first[name] / MIB, 1),
            "last_mib": round(last[name] / MIB, 1),
            "max_mib": round(max(values) / MIB, 1),
            "growth_mib": round((last[name] - first[name]) / MIB, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval-s", type=float, default=30.0)
    p.add_argument("--warmup-samples", type=int, default=2, help="samples left out of the summary")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="INTRA_OP_PARALLELISM")
    p.add_argument("--out", type=Path, default=Path("engine-memory.jsonl"))
    args = p.parse_args(argv)

    settings = Settings(intra_op_threads=args.threads)
    with (
        tempfile.TemporaryDirectory(prefix="gw-engine-memory-") as tmp,
        common.model_file(None) as (path, what),
    ):
        server = RedisServer(
            data_dir=Path(tmp) / "redis",
            engine_module=settings.engine_module,
            module_args=engine_args(settings),
        ).start()
        try:
            r = connection.client_for(connection.local_url(server.port), timeout_s=600)
            r.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", path.read_bytes())
            stop = threading.Event()
            counts = [0] * args.clients
            workers = [
                threading.Thread(
                    target=drive, args=(server.port, "m", args.batch, stop, counts, i), daemon=True
                )
                for i in range(args.clients)
            ]
            for w in workers:
                w.start()
            samples: list[dict[str, Any]] = []
            t0 = time.monotonic()
            with args.out.open("w") as log:
                while True:
                    m = enginestats.read(r)
                    if m is None:
                        raise SystemExit("the server reports no ai_memory section: build the engine")
                    sample = {"t_s": round(time.monotonic() - t0, 1), "runs": sum(counts), **m.as_dict()}
                    samples.append(sample)
                    log.write(json.dumps(sample) + "\n")
                    log.flush()
                    print(
                        f"{sample['t_s']:7.0f} s  runs {sample['runs']:6d}  "
                        + "  ".join(f"{n} {sample[n] / MIB:.1f}" for n in FIGURES),
                        flush=True,
                    )
                    if time.monotonic() - t0 >= args.minutes * 60:
                        break
                    time.sleep(args.interval_s)
            stop.set()
            for w in workers:
                w.join(timeout=600)
        finally:
            server.stop()
    print(
        json.dumps({"model": what, "batch": args.batch, **summarise(samples, args.warmup_samples)}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
