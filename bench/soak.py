"""`make soak`: the pipeline under churn for SOAK_MINUTES (default 60).

One redis-server with the engine (AOF on), 2 producers publishing synthetic scenes continuously
(ingest.scene.publish_array), 3 consumers (`groundwatch consume`, default names: stable per host
and slot), a model switch every `--switch-min` minutes (a new version loaded and activated with
the loaders) and one consumer SIGKILLed and restarted every `--kill-min` minutes (always the
same one, so the other two live the whole run). Every `--sample-s` seconds it records the
resident memory of redis-server and of each consumer, Redis's used_memory, and the engine's
figures from INFO MODULES when the engine reports any memory there.

At the end the producers stop, the consumers drain, and the run is checked: every published
frame has exactly one per-tile result, every scene exactly one scene result, no dead letters.
The report (soak.md, soak.json) gives the memory samples and, for redis-server and each
long-lived consumer, the change from the end of warm-up (a quarter of the run) to the end.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from groundwatch import connection, keys
from groundwatch.settings import REPO_ROOT, Settings

FEED = "soak"
MODEL = "soak"
TILE, OVERLAP = 64, 16
SCENE_PX = 160  # 3 x 3 tiles of 64 with 16 overlap


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def model_file(path: Path) -> Path:
    """A small conv net with the detector's contract and metadata (bench.common.StandIn)."""
    import warnings

    import torch

    from bench.common import StandIn

    torch.manual_seed(0)
    meta = {
        "contract": 1,
        "classes": ["ship", "platform"],
        "bands": 1,
        "dtype": "uint16",
        "tile_size": TILE,
        "max_detections": 16,
        "score_threshold_hint": 0.6,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.script(StandIn(bands=1, k=16, width=8).eval())
        torch.jit.save(module, str(path), _extra_files={"groundwatch.json": json.dumps(meta)})
    return path


# --- producer (a subprocess) -------------------------------------------------------------------


def produce(url: str, index: int, stop_file: Path, rate: float) -> int:
    import redis

    from ingest.errors import IngestError
    from ingest.scene import publish_array

    client = connection.client_for(url, timeout_s=60)
    settings = Settings(redis_url=url, feed=FEED, tile_size=TILE, tile_overlap=OVERLAP, max_lag=400)
    rng = np.random.default_rng(index)
    n = 0
    transform = (10.0, 0.0, 500000.0 + index * 1e4, 0.0, -10.0, 6000000.0)
    while not stop_file.exists():
        t0 = time.monotonic()
        scene = rng.integers(50, 400, size=(1, SCENE_PX, SCENE_PX), dtype=np.uint16)
        scene[0, rng.integers(0, SCENE_PX, 5), rng.integers(0, SCENE_PX, 5)] = 60000
        try:
            publish_array(client, settings, scene, transform, "EPSG:32631", scene=f"p{index}-{n}")
            n += 1
        except (IngestError, redis.RedisError) as e:  # backpressure or Redis: the scene is tried again
            print(f"producer {index}: {e}", file=sys.stderr, flush=True)
            continue
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t0)))
    print(f"producer {index}: {n} scenes", flush=True)
    return 0


# --- the run -----------------------------------------------------------------------------------


def consumer_cmd(url: str) -> list[str]:
    return [sys.executable, "-m", "groundwatch.cli", "--redis-url", url, "consume", "--feed", FEED]


def run(args: argparse.Namespace) -> int:

    from groundwatch.server import RedisServer
    from loaders.loader import LoadOptions, load

    out = Path(args.out or tempfile.mkdtemp(prefix="gw-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    server = RedisServer(
        data_dir=out / "redis",
        engine_module=REPO_ROOT / "engine" / "build" / "engine.so",
        extra_config=(("appendonly", "yes"),),
    )
    (out / "redis").mkdir(exist_ok=True)
    server.start()
    url = server.url
    r = connection.client_for(url, timeout_s=60)
    path = model_file(out / "soak.pt")
    load(r, path, LoadOptions(name=MODEL, feeds=(FEED,), batch=8))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    stop_file = out / "stop"
    stop_file.unlink(missing_ok=True)

    def spawn(cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(out / log, "ab") as f:
            return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    consumers = [spawn(consumer_cmd(url), f"consumer-{i}.log") for i in range(3)]
    producers = [
        spawn(
            [sys.executable, "-m", "bench.soak", "producer", url, str(i), str(stop_file), str(args.rate)],
            f"producer-{i}.log",
        )
        for i in range(2)
    ]
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_switch = t0 + args.switch_min * 60
    next_kill = t0 + args.kill_min * 60
    next_sample = t0
    samples: list[dict[str, Any]] = []
    events: list[str] = []
    versions = 1
    kills = 0
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(r, server, consumers, now - t0))
                next_sample += args.sample_s
            if now >= next_switch:
                rec = load(r, path, LoadOptions(name=MODEL, feeds=(FEED,), batch=8))
                versions += 1
                events.append(f"{(now - t0) / 60:.1f} min: switched to {rec.label}")
                next_switch += args.switch_min * 60
            if now >= next_kill:
                victim = consumers[0]
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
                consumers[0] = spawn(consumer_cmd(url), "consumer-0.log")
                kills += 1
                events.append(f"{(now - t0) / 60:.1f} min: SIGKILL consumer 0 (pid {victim.pid}), restarted")
                next_kill += args.kill_min * 60
            for i, p in enumerate(producers):
                if p.poll() is not None:
                    raise SystemExit(f"producer {i} exited with {p.returncode}; see {out}/producer-{i}.log")
            for i, c in enumerate(consumers):
                if c.poll() is not None:
                    raise SystemExit(f"consumer {i} exited with {c.returncode}; see {out}/consumer-{i}.log")
            time.sleep(1.0)
        stop_file.touch()
        for p in producers:
            p.wait(120)
        drained = wait_drained(r, 600)
        samples.append(sample(r, server, consumers, time.monotonic() - t0))
    finally:
        stop_file.touch()
        for p in [*producers, *consumers]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [*producers, *consumers]:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    checks = check(r)
    checks["drained"] = drained
    server.stop()
    report = {
        "minutes": args.minutes,
        "versions": versions,
        "kills": kills,
        "events": events,
        "checks": checks,
        "samples": samples,
        "growth": growth(samples),
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    text = render(report)
    (out / "soak.md").write_text(text)
    print(text)
    print(f"(files in {out})")
    ok = drained and checks["frames_in"] > 0 and not checks["problems"]
    return 0 if ok else 1


def sample(r: Any, server: Any, consumers: list[subprocess.Popen[bytes]], t: float) -> dict[str, Any]:
    info = r.info("memory")
    s: dict[str, Any] = {
        "t_min": round(t / 60, 2),
        "redis_rss_mb": rss_mb(server.process.pid) if server.process else None,
        "used_memory_mb": round(int(info["used_memory"]) / 2**20, 2),
        "consumers_rss_mb": [rss_mb(c.pid) for c in consumers],
        "frames_done": int(r.hget(keys.stats(FEED), "frames_done") or 0),
    }
    # The engine's own memory figures, where it reports any (ai_*mem* fields other than limits).
    engine = {
        k: v
        for k, v in r.info("modules").items()
        if k.startswith("ai_") and "mem" in k and not k.endswith("_limit")
    }
    if engine:
        s["engine_memory"] = engine
    return s


def wait_drained(r: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = r.xinfo_groups(keys.frames(FEED))
        if groups and all(int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0 for g in groups):
            return True
        time.sleep(1.0)
    return False


def check(r: Any) -> dict[str, Any]:
    stats = {k.decode(): int(v) for k, v in r.hgetall(keys.stats(FEED)).items()}
    per_frame: Counter[bytes] = Counter()
    for _id, f in r.xrange(keys.detections(FEED)):
        per_frame[f[b"frame"]] += 1
    per_scene: Counter[bytes] = Counter()
    for _id, f in r.xrange(keys.scenes(FEED)):
        per_scene[f[b"scene"]] += 1
    problems = []
    frames_in, scenes_in = stats.get("frames_in", 0), stats.get("scenes_in", 0)
    if len(per_frame) != frames_in:
        problems.append(f"{frames_in} frames published but {len(per_frame)} have a result")
    twice = [f for f, n in per_frame.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} frames have more than one result, e.g. {twice[0]!r}")
    if len(per_scene) != scenes_in or any(n > 1 for n in per_scene.values()):
        problems.append(
            f"{scenes_in} scenes published, {len(per_scene)} scene results, {sum(per_scene.values())} entries"
        )
    dead = int(r.xlen(keys.dead_letters(FEED)))
    if dead:
        problems.append(f"{dead} dead letters")
    # What Redis holds at the end, by design: the results (capped streams) and the idempotency
    # markers (TTL scene_ttl_s); used_memory grows with them until the caps and TTLs apply.
    retained = {
        "keys": int(r.dbsize()),
        "detections_stream_mb": round((r.memory_usage(keys.detections(FEED), samples=0) or 0) / 2**20, 2),
        "scenes_stream_mb": round((r.memory_usage(keys.scenes(FEED), samples=0) or 0) / 2**20, 2),
        "used_memory_mb": round(int(r.info("memory")["used_memory"]) / 2**20, 2),
    }
    return {
        "retained": retained,
        "frames_in": frames_in,
        "frames_with_one_result": sum(1 for n in per_frame.values() if n == 1),
        "scenes_in": scenes_in,
        "scene_results": len(per_scene),
        "dead_letters": dead,
        "counters": stats,
        "problems": problems,
    }


def growth(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """Change from the end of warm-up (the first sample past a quarter of the run) to the end, %."""
    if len(samples) < 2:
        return {}
    start = next(s for s in samples if s["t_min"] >= samples[-1]["t_min"] / 4)
    last = samples[-1]

    def pct(a: float | None, b: float | None) -> float | None:
        return None if not a or b is None else round(100.0 * (b - a) / a, 1)

    out = {"redis_rss": pct(start["redis_rss_mb"], last["redis_rss_mb"])}
    out["used_memory"] = pct(start["used_memory_mb"], last["used_memory_mb"])
    for i in (1, 2):  # consumer 0 is the one killed: 1 and 2 live the whole run
        out[f"consumer_{i}_rss"] = pct(start["consumers_rss_mb"][i], last["consumers_rss_mb"][i])
    return out


def render(rep: dict[str, Any]) -> str:
    c = rep["checks"]
    lines = [
        f"# soak: {rep['minutes']} min, {rep['versions']} model versions, {rep['kills']} consumer kills",
        "",
        f"- frames published {c['frames_in']}, with exactly one result {c['frames_with_one_result']}; "
        f"scenes {c['scenes_in']}, scene results {c['scene_results']}; dead letters {c['dead_letters']}; "
        f"drained {c['drained']}",
        f"- problems: {'; '.join(c['problems']) or 'none'}",
        f"- counters: {c['counters']}",
        f"- retained in Redis at the end (results and idempotency markers, by design): {c['retained']}",
        "",
        *(f"- {e}" for e in rep["events"]),
        "",
        "| t (min) | redis RSS MB | used_memory MB | consumer 0 (killed) | consumer 1 | consumer 2 | frames done |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in rep["samples"]:
        cs = [("-" if v is None else f"{v:.1f}") for v in s["consumers_rss_mb"]]
        redis_rss = "-" if s["redis_rss_mb"] is None else f"{s['redis_rss_mb']:.1f}"
        lines.append(
            f"| {s['t_min']:.1f} | {redis_rss} | {s['used_memory_mb']:.1f} | {' | '.join(cs)} | {s['frames_done']} |"
        )
    lines += ["", f"Growth after warm-up (a quarter of the run) to the end, %: {rep['growth']}"]
    engine = [s.get("engine_memory") for s in rep["samples"] if s.get("engine_memory")]
    lines.append(
        f"Engine memory from INFO: {engine[-1] if engine else 'the engine reports no memory figures in INFO'}"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["producer"]:
        url, index, stop_file, rate = argv[1:5]
        return produce(url, int(index), Path(stop_file), float(rate))
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--switch-min", type=float, default=10.0)
    p.add_argument("--kill-min", type=float, default=15.0)
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=1.0, help="scenes per second per producer (9 frames each)")
    p.add_argument("--out", default=None, help="folder for the report and logs (default: a temp folder)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
