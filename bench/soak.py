"""`make soak`: the pipeline under churn for SOAK_MINUTES (default 60).

One redis-server with the engine (AOF on), 2 producers publishing synthetic scenes continuously
(ingest.scene.publish_array), 3 consumers (`groundwatch consume`, default names: stable per host
and slot), a model switch every `--switch-min` minutes (a new version loaded and activated with
the loaders) and one consumer SIGKILLed and restarted every `--kill-min` minutes (always the
same one, so the other two live the whole run); after each switch the version before the
previous one is removed (`loaders.loader.remove`: an operator keeps the active version and one to
roll back to). Consumers and producers run with small retention (`--results-maxlen` entries in
the result streams, `--ttl-s` for the idempotency markers and scene keys) so that the data Redis
holds stops growing within the warm-up. Every `--sample-s` seconds it records the
resident memory of redis-server and of each consumer, Redis's used_memory, what the data holds
(result and frame stream lengths and bytes, keys and keys with a TTL: the idempotency markers)
and the engine's own figures (INFO MODULES ai_memory via groundwatch.enginestats: heap outside
Redis, weights, tensors of runs, block cache), so growth of data and growth of the engine can be
told apart.

An observer (`Observer`) reads the result streams as they are written, so exactly-once is
checked over the whole run although the streams are capped. At the end the producers stop, the
consumers drain, and the run is checked: every published frame has exactly one per-tile result,
every scene exactly one scene result, no dead letters, and the observer read every entry ever
added to the result streams (XINFO STREAM entries-added: the cap never trimmed an entry before it
was read). The report (soak.md, soak.json) gives the memory samples and, after warm-up (a quarter
of the run): redis-server RSS first/last/max and %, used_memory growth (data), the engine's
figures, each long-lived consumer's RSS %. The memory criterion: the resident memory of
redis-server and of each long-lived consumer within 5 % from the end of warm-up to the end.
Exit status 1 when a check or the memory criterion fails.
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

from groundwatch import connection, enginestats, keys
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


def produce(url: str, index: int, stop_file: Path, rate: float, ttl_s: int) -> int:
    import redis

    from ingest.errors import IngestError
    from ingest.scene import publish_array

    client = connection.client_for(url, timeout_s=60)
    settings = Settings(
        redis_url=url,
        feed=FEED,
        tile_size=TILE,
        tile_overlap=OVERLAP,
        max_lag=400,
        scene_ttl_s=ttl_s,
        progress_ttl_s=ttl_s,
    )
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


class Observer:
    """Reads the detections and scenes streams from their first entry as they are written and
    counts results per frame and per scene, so that exactly-once can be checked over a run
    whose result streams are capped far below its length. `complete()` tells whether it read
    every entry ever added (XINFO STREAM entries-added), i.e. the cap never trimmed an entry it
    had not read yet."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self.last = {keys.detections(FEED): "0-0", keys.scenes(FEED): "0-0"}
        self.read = dict.fromkeys(self.last, 0)
        self.per_frame: Counter[bytes] = Counter()
        self.per_scene: Counter[bytes] = Counter()

    def poll(self) -> None:
        while True:
            got = self.r.xread(dict(self.last), count=5000)
            if not got:
                return
            for stream, entries in got:
                name = stream.decode() if isinstance(stream, bytes) else stream
                for _entry_id, f in entries:
                    if name == keys.detections(FEED):
                        self.per_frame[f[b"frame"]] += 1
                    else:
                        self.per_scene[f[b"scene"]] += 1
                self.read[name] += len(entries)
                last = entries[-1][0]
                self.last[name] = last.decode() if isinstance(last, bytes) else last

    def complete(self) -> dict[str, tuple[int, int]]:
        """stream -> (entries read, entries ever added)."""
        return {
            k: (n, int(self.r.xinfo_stream(k)["entries-added"]) if self.r.exists(k) else 0)
            for k, n in self.read.items()
        }


def run(args: argparse.Namespace) -> int:

    from groundwatch.server import RedisServer
    from loaders.loader import LoadOptions, load, remove

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
    versions = [load(r, path, LoadOptions(name=MODEL, feeds=(FEED,), batch=8)).version]
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        GROUNDWATCH_RESULTS_MAXLEN=str(args.results_maxlen),
        GROUNDWATCH_SCENE_TTL_S=str(args.ttl_s),
    )
    observer = Observer(r)
    stop_file = out / "stop"
    stop_file.unlink(missing_ok=True)

    def spawn(cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(out / log, "ab") as f:
            return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    consumers = [spawn(consumer_cmd(url), f"consumer-{i}.log") for i in range(3)]
    producers = [
        spawn(
            [
                sys.executable,
                "-m",
                "bench.soak",
                "producer",
                url,
                str(i),
                str(stop_file),
                str(args.rate),
                str(args.ttl_s),
            ],
            f"producer-{i}.log",
        )
        for i in range(2)
    ]
    load_start = os.getloadavg()
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_switch = t0 + args.switch_min * 60
    next_kill = t0 + args.kill_min * 60
    next_sample = t0
    samples: list[dict[str, Any]] = []
    events: list[str] = []
    kills = 0
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            observer.poll()
            if now >= next_sample:
                samples.append(sample(r, server, consumers, now - t0))
                next_sample += args.sample_s
            if now >= next_switch:
                rec = load(r, path, LoadOptions(name=MODEL, feeds=(FEED,), batch=8))
                versions.append(rec.version)
                events.append(f"{(now - t0) / 60:.1f} min: switched to {rec.label}")
                if len(versions) >= 3:
                    gone = remove(r, MODEL, versions[-3])
                    events.append(f"{(now - t0) / 60:.1f} min: removed {gone.label}")
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
        stopped_by = time.monotonic() + 120
        for p in producers:
            while p.poll() is None:
                if time.monotonic() > stopped_by:
                    raise SystemExit(f"a producer did not stop within 120 s; see {out}/producer-*.log")
                observer.poll()
                time.sleep(0.5)
        drained = wait_drained(r, 600, observer)
        observer.poll()
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
    checks = check(r, observer)
    checks["drained"] = drained
    load_end = os.getloadavg()
    server.stop()
    report = {
        "minutes": args.minutes,
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in load_end],
        "versions": len(versions),
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
    ok = ok and bool(report["growth"].get("memory_ok"))
    return 0 if ok else 1


# The engine's figures a sample keeps (EngineMemory fields and derived ones), in MB.
ENGINE_FIGURES = ("outside_redis", "model_weights", "run_tensors", "cache", "torch_allocated", "unexplained")


def sample(r: Any, server: Any, consumers: list[subprocess.Popen[bytes]], t: float) -> dict[str, Any]:
    """One point of the memory record: the process (RSS), Redis's data (used_memory, what the
    streams and keys hold) and the engine (INFO MODULES ai_memory), so that growth of one can be
    told from growth of the others."""
    info = r.info("memory")
    space = r.info("keyspace").get("db0", {})
    s: dict[str, Any] = {
        "t_min": round(t / 60, 2),
        "redis_rss_mb": rss_mb(server.process.pid) if server.process else None,
        "used_memory_mb": round(int(info["used_memory"]) / 2**20, 2),
        "consumers_rss_mb": [rss_mb(c.pid) for c in consumers],
        "frames_done": int(r.hget(keys.stats(FEED), "frames_done") or 0),
        # Data retained by design: result streams (capped at RESULTS_MAXLEN entries), the frames
        # stream (trimmed by the producers to what a group still needs) and keys with a TTL (the
        # per-frame idempotency markers, scene results and tile sets, scene_ttl_s).
        "data": {
            "detections_len": int(r.xlen(keys.detections(FEED))),
            "scenes_len": int(r.xlen(keys.scenes(FEED))),
            "frames_len": int(r.xlen(keys.frames(FEED))),
            "streams_mb": round(
                sum(
                    int(r.memory_usage(k, samples=0) or 0)
                    for k in (keys.detections(FEED), keys.scenes(FEED), keys.frames(FEED))
                )
                / 2**20,
                2,
            ),
            "keys": int(space.get("keys", 0)),
            "keys_with_ttl": int(space.get("expires", 0)),
        },
    }
    m = enginestats.read(r)
    if m is not None:
        figures = m.as_dict()
        s["engine_mb"] = {k: round(figures[k] / 2**20, 2) for k in ENGINE_FIGURES}
        s["engine_mb"]["rss"] = round(m.rss / 2**20, 2)
        s["engine_models"] = m.models
    return s


def wait_drained(r: Any, timeout_s: float, observer: Observer) -> bool:
    """Wait until no frame is pending or unread, reading the results meanwhile (the result
    streams stay capped while the consumers drain)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        observer.poll()
        groups = r.xinfo_groups(keys.frames(FEED))
        if groups and all(int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0 for g in groups):
            return True
        time.sleep(1.0)
    return False


def check(r: Any, observer: Observer) -> dict[str, Any]:
    stats = {k.decode(): int(v) for k, v in r.hgetall(keys.stats(FEED)).items()}
    per_frame, per_scene = observer.per_frame, observer.per_scene
    problems = []
    seen = observer.complete()
    for stream, (n_read, n_added) in seen.items():
        if n_read != n_added:
            problems.append(
                f"{stream}: the observer read {n_read} of {n_added} entries added (the cap trimmed unread "
                "entries: raise --results-maxlen)"
            )
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
    pending = sum(int(g["pending"]) for g in r.xinfo_groups(keys.frames(FEED)))
    if pending:
        problems.append(f"{pending} frames still pending")
    if dead:
        problems.append(f"{dead} dead letters")
    # What Redis holds at the end: the results (capped streams) and the idempotency markers and
    # scene keys (TTL --ttl-s).
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
        "observed": {k: {"read": a, "added": b} for k, (a, b) in seen.items()},
        "pending_end": pending,
        "counters": stats,
        "problems": problems,
    }


MEMORY_TOLERANCE_PCT = 5.0


def _pct(a: float | None, b: float | None) -> float | None:
    return None if not a or b is None else round(100.0 * (b - a) / a, 1)


def growth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What changed from the end of warm-up (the first sample past a quarter of the run) to the
    last sample, and the memory verdict: the RSS of redis-server, and of each consumer that
    lives the whole run (1 and 2; consumer 0 is the one killed), within 5 % of its value at the
    end of warm-up. The run's retention (--results-maxlen, --ttl-s) bounds the data within the
    warm-up, so what Redis holds is steady by then; the growth of used_memory and the RSS growth
    beyond it are reported next to the verdict, to tell data from the rest."""
    if len(samples) < 2:
        return {}
    start = next(s for s in samples if s["t_min"] >= samples[-1]["t_min"] / 4)
    after = samples[samples.index(start) :]
    last = samples[-1]
    rss = [s["redis_rss_mb"] for s in after if s["redis_rss_mb"] is not None]
    out: dict[str, Any] = {"from_min": start["t_min"], "to_min": last["t_min"]}
    if rss:
        out["redis_rss_mb"] = {
            "first": rss[0],
            "last": rss[-1],
            "max": max(rss),
            "pct": _pct(rss[0], rss[-1]),
        }
    used = (start["used_memory_mb"], last["used_memory_mb"])
    out["used_memory_mb"] = {"first": used[0], "last": used[1], "growth": round(used[1] - used[0], 1)}
    out["data"] = {k: (start["data"][k], last["data"][k]) for k in start.get("data", {})}
    if rss:
        beyond = (rss[-1] - rss[0]) - (used[1] - used[0])
        out["redis_rss_beyond_data_mb"] = round(beyond, 1)
        out["redis_rss_beyond_data_pct"] = round(100.0 * beyond / rss[0], 1)
    if "engine_mb" in start and "engine_mb" in last:
        out["engine_mb"] = {
            k: {
                "first": start["engine_mb"][k],
                "last": last["engine_mb"][k],
                "max": max(s["engine_mb"][k] for s in after if "engine_mb" in s),
            }
            for k in start["engine_mb"]
        }
    out["consumers_rss"] = {}
    for i in (1, 2):
        series = [s["consumers_rss_mb"][i] for s in after if s["consumers_rss_mb"][i] is not None]
        if series:
            out["consumers_rss"][f"consumer_{i}"] = {
                "first": series[0],
                "last": series[-1],
                "max": max(series),
                "pct": _pct(series[0], series[-1]),
            }
    verdicts = []
    if "redis_rss_mb" in out:
        verdicts.append(abs(out["redis_rss_mb"]["pct"] or 0.0) <= MEMORY_TOLERANCE_PCT)
    verdicts += [abs(c["pct"] or 0.0) <= MEMORY_TOLERANCE_PCT for c in out["consumers_rss"].values()]
    out["memory_ok"] = bool(verdicts) and all(verdicts)
    return out


def render(rep: dict[str, Any]) -> str:
    c = rep["checks"]
    g = rep["growth"]
    lines = [
        f"# soak: {rep['minutes']} min, {rep['versions']} model versions, {rep['kills']} consumer kills",
        "",
        f"- frames published {c['frames_in']}, with exactly one result {c['frames_with_one_result']}; "
        f"scenes {c['scenes_in']}, scene results {c['scene_results']}; dead letters {c['dead_letters']}; "
        f"drained {c['drained']}; pending at the end {c.get('pending_end')}",
        f"- problems: {'; '.join(c['problems']) or 'none'}",
        f"- counters: {c['counters']}",
        f"- observer (result stream entries read / ever added): {c.get('observed')}",
        f"- retained in Redis at the end (results and idempotency markers): {c['retained']}",
        f"- load average at the start {rep.get('load_start')}, at the end {rep.get('load_end')}",
        "",
        *(f"- {e}" for e in rep["events"]),
        "",
        "| t (min) | redis RSS | used_memory | streams | keys (TTL) | detections | engine heap | weights | "
        "run tensors | cache | RSS not heaps | consumer 0 (killed) | consumer 1 | consumer 2 | frames done |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for s in rep["samples"]:
        d = s.get("data", {})
        e = s.get("engine_mb", {})
        cs = " | ".join(mb(v) for v in s["consumers_rss_mb"])
        lines.append(
            f"| {s['t_min']:.1f} | {mb(s['redis_rss_mb'])} | {s['used_memory_mb']:.1f} | {mb(d.get('streams_mb'))} | "
            f"{d.get('keys', '-')} ({d.get('keys_with_ttl', '-')}) | {d.get('detections_len', '-')} | "
            f"{mb(e.get('outside_redis'))} | {mb(e.get('model_weights'))} | {mb(e.get('run_tensors'))} | "
            f"{mb(e.get('cache'))} | {mb(e.get('unexplained'))} | {cs} | {s['frames_done']} |"
        )
    lines += ["", "(MB; engine figures from INFO MODULES ai_memory via groundwatch/enginestats.py)", ""]
    if g:
        lines.append(f"## After warm-up ({g['from_min']:.1f} min) to the end ({g['to_min']:.1f} min)")
        lines.append("")
        if "redis_rss_mb" in g:
            x = g["redis_rss_mb"]
            lines.append(
                f"- redis-server RSS: first {x['first']:.1f} MB, last {x['last']:.1f} MB, max {x['max']:.1f} MB, "
                f"{x['pct']:+.1f} % (criterion: within {MEMORY_TOLERANCE_PCT:.0f} %)"
            )
        u = g["used_memory_mb"]
        lines.append(
            f"- used_memory (Redis's data): {u['first']:.1f} -> {u['last']:.1f} MB ({u['growth']:+.1f} MB); "
            f"data first -> last: {g['data']}"
        )
        if "redis_rss_beyond_data_mb" in g:
            lines.append(
                f"- redis-server RSS growth beyond the growth of used_memory: {g['redis_rss_beyond_data_mb']:+.1f} MB "
                f"= {g['redis_rss_beyond_data_pct']:+.1f} % of the RSS at warm-up"
            )
        for k, x in g.get("engine_mb", {}).items():
            lines.append(
                f"- engine {k}: first {x['first']:.1f} MB, last {x['last']:.1f} MB, max {x['max']:.1f} MB"
            )
        for k, x in g["consumers_rss"].items():
            lines.append(
                f"- {k} RSS: first {x['first']:.1f} MB, last {x['last']:.1f} MB, max {x['max']:.1f} MB, "
                f"{x['pct']:+.1f} % (criterion: within {MEMORY_TOLERANCE_PCT:.0f} %)"
            )
        lines.append(f"- memory verdict: {'ok' if g['memory_ok'] else 'OVER the criterion'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["producer"]:
        url, index, stop_file, rate, ttl_s = argv[1:6]
        return produce(url, int(index), Path(stop_file), float(rate), int(ttl_s))
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--switch-min", type=float, default=10.0)
    p.add_argument("--kill-min", type=float, default=15.0)
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=1.0, help="scenes per second per producer (9 frames each)")
    p.add_argument(
        "--results-maxlen",
        type=int,
        default=2000,
        help="consumers' GROUNDWATCH_RESULTS_MAXLEN (default 2000)",
    )
    p.add_argument(
        "--ttl-s",
        type=int,
        default=300,
        help="markers' and scene keys' TTL, GROUNDWATCH_SCENE_TTL_S (default 300)",
    )
    p.add_argument("--out", default=None, help="folder for the report and logs (default: a temp folder)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
