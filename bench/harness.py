"""The one method every benchmark row is measured by.

A row is a `Spec`: a function ("module:function", called with the spec's params) that sets up
what it measures, warms it up, measures it once and returns a `sample(...)`. The harness runs
every row in a FRESH Python process (so no row inherits another's TorchScript state, allocator
heap or threads), in interleaved rounds (A B C ... A B C ..., `rounds` of them), and reports each
row's median over the rounds and its spread (min-max). While it runs it samples the machine's
load average, which the table's header states. A `Ratio` divides one row's figure by another's
(the reference, for most), round by round, so both sides of a ratio were measured a few seconds
apart under the same load; the table shows the median of those per-round ratios and their range.

The reference is the best the model can do in process on this machine: the better (by median) of
the rows marked `reference=True`. When its spread passes `REFERENCE_SPREAD_WARN`, the header says
the run is not steady enough to read small differences from.

Timing helpers for the row functions (`settle`, `timed_loop`, `sample`) live here too, so the
rows of bench/engine.py, bench/pipeline.py, bench/alternatives.py and bench/ingest.py all warm up,
time and summarise the same way.

    python -m bench.harness row '<spec as JSON>'    # what the harness runs in each child
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from groundwatch.server import ENGINE_ENV
from groundwatch.settings import REPO_ROOT

RESULT_MARK = "GW-BENCH-SAMPLE "
REFERENCE = "reference"  # a Ratio's `den` naming the run's reference row
REFERENCE_SPREAD_WARN = 0.15

# --------------------------------------------------------------------------- in the row's process


def settle(
    call: Callable[[], object],
    *,
    min_calls: int = 3,
    max_calls: int = 40,
    max_s: float = 60.0,
    tol: float = 0.15,
) -> int:
    """Call `call` until its time has settled; returns how many calls that took.

    TorchScript's profiling executor profiles the first run(s) of a graph and optimises it on the
    next, and re-specialises on new shapes, so the first calls of a fresh process are slower.
    Settled: at least `min_calls` calls, and the median of the last three within `tol` of the
    median of the three before them (bounded by `max_calls` and `max_s`)."""
    times: list[float] = []
    t_end = time.perf_counter() + max_s
    while len(times) < max_calls and time.perf_counter() < t_end:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if len(times) >= max(min_calls, 6):
            last, before = statistics.median(times[-3:]), statistics.median(times[-6:-3])
            if abs(last - before) <= tol * before:
                break
    return len(times)


def timed_loop(
    call: Callable[[int], object], seconds: float, *, min_calls: int = 3, max_calls: int | None = None
) -> tuple[list[float], float]:
    """call(i) back to back for `seconds` (at least `min_calls` times, at most `max_calls`);
    returns the latency of each call and the wall time of all of them, in seconds."""
    latencies: list[float] = []
    start = time.perf_counter()
    i = 0
    while True:
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
        i += 1
        if max_calls is not None and i >= max_calls:
            break
        if i >= min_calls and time.perf_counter() - start >= seconds:
            break
    return latencies, time.perf_counter() - start


@dataclass
class LoopResult:
    latencies_s: list[float] = field(default_factory=list)
    tiles: int = 0
    errors: int = 0
    first_error: str = ""
    wall_s: float = 0.0


def closed_loop(
    make_client: Callable[[], Callable[[Any], Any]],
    tiles: Sequence[Any] | np.ndarray,
    *,
    clients: int,
    seconds: float,
    max_requests: int | None = None,
    check: Callable[[int, Any], None] | None = None,
    max_errors: int = 20,
) -> LoopResult:
    """`clients` threads, each sending one tile at a time and waiting for its answer, until
    `seconds` have passed or `max_requests` have been sent in all. `make_client()` runs once
    in each thread and returns the call for one item of `tiles`. `check(tile_index, answer)`
    may raise to count an error. Latencies are per request, throughput counts answered tiles.
    """
    result = LoopResult()
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    sent = [0]
    stop = threading.Event()

    def worker(c: int) -> None:
        try:
            call = make_client()
        except Exception as exc:
            with lock:
                result.errors += 1
                result.first_error = result.first_error or f"client setup: {exc!r}"
            start_gate.wait()
            return
        start_gate.wait()
        j = 0
        while not stop.is_set():
            with lock:
                if max_requests is not None and sent[0] >= max_requests:
                    return
                sent[0] += 1
            i = (c + j * clients) % len(tiles)
            j += 1
            t0 = time.perf_counter()
            try:
                answer = call(tiles[i])
                if check is not None:
                    check(i, answer)
            except Exception as exc:
                with lock:
                    result.errors += 1
                    result.first_error = result.first_error or repr(exc)
                    if result.errors >= max_errors:
                        stop.set()
                continue
            dt = time.perf_counter() - t0
            with lock:
                result.latencies_s.append(dt)
                result.tiles += 1

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while any(t.is_alive() for t in threads) and time.perf_counter() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(timeout=60.0)
    result.wall_s = time.perf_counter() - t0
    return result


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation); None for no values."""
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def sample(
    *,
    tiles: int,
    wall_s: float,
    latencies_s: Sequence[float] = (),
    cpu_s: float | None = None,
    warmup_calls: int | None = None,
    errors: int = 0,
    note: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One measurement of one row: tiles done in `wall_s`, the latency of each request (seconds),
    the CPU seconds every process of the row used in that window, and any further figures."""
    p50, p99 = percentile(latencies_s, 50), percentile(latencies_s, 99)
    return {
        "tiles": int(tiles),
        "wall_s": float(wall_s),
        "throughput": tiles / wall_s if wall_s > 0 else None,
        "p50_ms": None if p50 is None else p50 * 1000.0,
        "p99_ms": None if p99 is None else p99 * 1000.0,
        "requests": len(latencies_s),
        "cpu_ms_per_tile": cpu_s * 1000.0 / tiles if cpu_s is not None and tiles else None,
        "warmup_calls": warmup_calls,
        "errors": int(errors),
        "note": note,
        "extra": extra,
    }


def jit_state() -> dict[str, Any]:
    """The TorchScript executor settings of this process (the engine changes none of libtorch's
    defaults; a row that runs the model in Python reports these to show it runs the same)."""
    import torch

    c = torch._C
    profiling = c._jit_set_profiling_executor(True)  # returns the previous value: put it back
    c._jit_set_profiling_executor(profiling)
    return {
        "profiling_executor": bool(profiling),
        "profiled_runs": int(c._jit_get_num_profiled_runs()),  # type: ignore[attr-defined]
        "graph_optimize": bool(c._get_graph_executor_optimize()),
        "cpu_fuser": bool(c._jit_can_fuse_on_cpu()),
        "intra_op_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class Spec:
    """One row. `target` "module:function" is called as function(**params) in a fresh process and
    returns a `sample(...)`. `env`: extra environment of that process. `derive`: params taken from
    rows measured earlier in the same round, {param: (row name, figure, factor)}."""

    name: str
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    reference: bool = False
    timeout_s: float = 300.0
    derive: Mapping[str, tuple[str, str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Ratio:
    """`num`'s figure over `den`'s (REFERENCE: the run's reference row), each round's own pair,
    with den's figure taken as `den_scale` x figure + `den_offset` (for goals like "p99 <= 2x the
    batch-1 time + 10 ms"). `goal`: (">=" or "<=", bound) or None."""

    name: str
    num: str
    den: str
    metric: str = "throughput"
    den_metric: str | None = None
    den_scale: float = 1.0
    den_offset: float = 0.0
    goal: tuple[str, float] | None = None
    meaning: str = ""
    den_max_of: tuple[str, ...] = ()  # if given, den is the best of these rows in each round


def run_row(spec: Spec, params: Mapping[str, Any], log: Path | None = None) -> dict[str, Any]:
    """Run one row once in a fresh process; returns its sample, or a sample with `failed`."""
    env = dict(os.environ)
    env.update(spec.env)
    # Every row with the engine's libgomp wait policy (groundwatch.server.ENGINE_ENV): the
    # in-process rows, the alternatives' servers and every redis-server alike. A policy set in
    # the caller's environment (OMP_WAIT_POLICY=ACTIVE, to compare) applies to every row too.
    for name, value in ENGINE_ENV.items():
        env.setdefault(name, value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    payload = json.dumps({"target": spec.target, "params": dict(params)})
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.harness", "row", payload],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=spec.timeout_s,
        )
    except subprocess.TimeoutExpired as e:
        return {"failed": f"timed out after {spec.timeout_s:.0f}s", "process_s": time.monotonic() - started,
                "log": _text(e.stderr)[-2000:]}  # fmt: skip
    if log is not None:
        with open(log, "a") as f:
            f.write(f"=== {spec.name}\n{proc.stdout}\n{proc.stderr}\n")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            out = dict(json.loads(line[len(RESULT_MARK) :]))
            out["process_s"] = time.monotonic() - started
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {
        "failed": f"exit {proc.returncode}: " + " / ".join(tail)[-400:],
        "process_s": time.monotonic() - started,
    }


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")


class LoadSampler:
    """The 1-minute load average, sampled every `interval_s` in a thread while a run goes on."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.start = _loadavg()
        self.end: tuple[float, float, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.end = _loadavg()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(_loadavg()[0])

    def summary(self) -> dict[str, Any]:
        s = self.samples or [self.start[0]]
        return {"mean_1min": statistics.fmean(s), "max_1min": max(s), "start": self.start, "end": self.end}


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def run(
    specs: Sequence[Spec],
    ratios: Sequence[Ratio] = (),
    *,
    rounds: int = 3,
    title: str = "groundwatch bench",
    context: Mapping[str, Any] | None = None,
    log: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every spec once per round, in order, for `rounds` rounds; returns rows, ratios, the load
    average and the markdown table (see `table`)."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique: {names}")
    samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
    started = time.monotonic()
    when = datetime.now(UTC)
    with LoadSampler() as load:
        for rnd in range(rounds):
            this_round: dict[str, dict[str, Any]] = {}
            for spec in specs:
                params = dict(spec.params)
                missing = ""
                for param, (row_name, figure, factor) in spec.derive.items():
                    value = this_round.get(row_name, {}).get(figure)
                    if value is None:
                        missing = f"needs {figure} of '{row_name}' in this round, which failed"
                        break
                    params[param] = value * factor
                s: dict[str, Any] = {"failed": missing} if missing else run_row(spec, params, log)
                s["round"] = rnd
                s["params"] = {k: params.get(k) for k in spec.derive}
                this_round[spec.name] = s
                samples[spec.name].append(s)
                if progress is not None:
                    fig = (
                        "failed: " + s["failed"]
                        if "failed" in s
                        else f"{s.get('throughput') or 0:.1f} tiles/s"
                    )
                    progress(f"round {rnd + 1}/{rounds}  {spec.name}: {fig}  ({s.get('process_s', 0):.0f}s)")
    rows = [aggregate(spec, samples[spec.name]) for spec in specs]
    ref = best_reference(rows)
    out_ratios = [ratio(r, samples, ref) for r in ratios]
    result = {
        "title": title,
        "date": when.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "rounds": rounds,
        "load": load.summary(),
        "wall_s": time.monotonic() - started,
        "reference": ref["name"] if ref else None,
        "context": dict(context or {}),
        "rows": rows,
        "ratios": out_ratios,
        "samples": samples,
    }
    result["table"] = table(result)
    return result


def _median(values: Sequence[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


def aggregate(spec: Spec, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A row's figures over its rounds: medians, the throughput's min-max and relative spread."""
    ok = [s for s in samples if "failed" not in s]
    tput = [s["throughput"] for s in ok if s.get("throughput") is not None]
    med = _median(tput)
    row: dict[str, Any] = {
        "name": spec.name,
        "reference": spec.reference,
        "rounds_ok": len(ok),
        "rounds": len(samples),
        "throughput": med,
        "throughput_min": min(tput) if tput else None,
        "throughput_max": max(tput) if tput else None,
        "spread": (max(tput) - min(tput)) / med if tput and med else None,
        "p50_ms": _median([s.get("p50_ms") for s in ok]),
        "p99_ms": _median([s.get("p99_ms") for s in ok]),
        "cpu_ms_per_tile": _median([s.get("cpu_ms_per_tile") for s in ok]),
        "tiles": _median([s.get("tiles") for s in ok]),
        "warmup_calls": _median([s.get("warmup_calls") for s in ok]),
        "errors": sum(int(s.get("errors") or 0) for s in ok),
        "failed": [s["failed"] for s in samples if "failed" in s],
        "note": "; ".join(p for p in (spec.note, ok[-1]["note"] if ok else "") if p),
        "extra": _merge_extra([s.get("extra") or {} for s in ok]),
    }
    return row


def _merge_extra(extras: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers: their median over the rounds; anything else: the last round's."""
    out: dict[str, Any] = {}
    for k in {k for e in extras for k in e}:
        vals = [e[k] for e in extras if k in e]
        nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
        out[k] = statistics.median(nums) if len(nums) == len(vals) else vals[-1]
    return out


def best_reference(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    refs = [r for r in rows if r["reference"] and r["throughput"]]
    return max(refs, key=lambda r: r["throughput"]) if refs else None


def ratio(
    spec: Ratio, samples: Mapping[str, Sequence[dict[str, Any]]], ref: dict[str, Any] | None
) -> dict[str, Any]:
    """The per-round ratios of `spec` and their median; `met` when a goal is given."""
    den_name = ref["name"] if spec.den == REFERENCE and ref else spec.den
    den_metric = spec.den_metric or spec.metric
    per_round = []
    for i, a in enumerate(samples.get(spec.num, ())):
        x = a.get(spec.metric)
        ys: list[float] = [
            float(b[den_metric])
            for b in (samples[n][i] for n in (spec.den_max_of or (den_name,)) if i < len(samples.get(n, ())))
            if "failed" not in b and b.get(den_metric) is not None
        ]
        if "failed" in a or x is None or not ys:
            continue
        y = spec.den_scale * max(ys) + spec.den_offset
        if y:
            per_round.append(x / y)
    med = _median(per_round)
    met = None
    if spec.goal is not None and med is not None:
        op, bound = spec.goal
        met = med >= bound if op == ">=" else med <= bound
    return {**asdict(spec), "den_row": den_name, "per_round": per_round, "median": med, "met": met}


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+changes" if dirty else "")


# --------------------------------------------------------------------------- the table


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _metric_label(metric: str) -> str:
    return {"throughput": "tiles/s", "p50_ms": "p50", "p99_ms": "p99", "cpu_ms_per_tile": "CPU ms/tile"}.get(
        metric, metric
    )


def table(result: Mapping[str, Any]) -> str:
    """The run as markdown: a header (date, commit, load average, rounds, the reference and its
    spread, a warning when that spread is over REFERENCE_SPREAD_WARN), the rows (median tiles/s,
    min-max over the rounds, spread, median p50/p99 and CPU ms per tile), then the ratios."""
    load = result["load"]
    ref = next((r for r in result["rows"] if r["name"] == result["reference"]), None)
    ctx = result.get("context") or {}
    lines = [f"## {result['title']}", ""]
    lines.append(
        f"{result['date']}, commit {result['commit']}; {result['rounds']} interleaved rounds, every row in a "
        f"fresh process; load average (1 min) during the run: mean {load['mean_1min']:.2f}, max "
        f"{load['max_1min']:.2f}" + (f"; {ctx['machine']}" if ctx.get("machine") else "")
        + f"; {result['wall_s'] / 60:.1f} min."
    )  # fmt: skip
    for k, v in ctx.items():
        if k != "machine":
            lines.append(f"{k}: {v}.")
    if ref is not None:
        spread = ref["spread"] or 0.0
        lines.append(
            f"Reference: **{ref['name']}**, {_f(ref['throughput'])} tiles/s (spread {100 * spread:.0f}%)."
        )
        if spread > REFERENCE_SPREAD_WARN:
            lines.append(
                f"**Warning: the reference's spread is {100 * spread:.0f}%, over "
                f"{100 * REFERENCE_SPREAD_WARN:.0f}%: this run was not steady; read only large differences.**"
            )
    else:
        lines.append("**No reference row succeeded: no ratio to the reference.**")
    lines += [
        "",
        "| row | tiles/s | min-max | spread | p50 ms | p99 ms | CPU ms/tile | warm-up | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        note = r["note"]
        if r["failed"]:
            note = f"{len(r['failed'])}/{r['rounds']} rounds failed: {r['failed'][0]}; " + note
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["name"] + (" (ref)" if ref is r else ""),
                _f(r["throughput"]),
                f"{_f(r['throughput_min'])}-{_f(r['throughput_max'])}" if r["throughput"] else "-",
                f"{100 * r['spread']:.0f}%" if r["spread"] is not None else "-",
                _f(r["p50_ms"]),
                _f(r["p99_ms"]),
                _f(r["cpu_ms_per_tile"]),
                _f(r["warmup_calls"], 0),
                note.replace("|", "/").replace("\n", " "),
            )
        )
    if result["ratios"]:
        lines += [
            "",
            "| ratio | of | median | per round | goal | met |",
            "| --- | --- | ---: | --- | --- | --- |",
        ]
        for q in result["ratios"]:
            den = q["den_row"] if not q["den_max_of"] else "the fastest model row"
            den_txt = f"{_metric_label(q['den_metric'] or q['metric'])} of '{den}'"
            if q["den_scale"] != 1.0 or q["den_offset"]:
                den_txt = f"({_f(q['den_scale'], 0)} x {den_txt} + {_f(q['den_offset'], 0)} ms)"
            of = f"{_metric_label(q['metric'])} of '{q['num']}' / {den_txt}"
            goal = f"{q['goal'][0]} {q['goal'][1]:g}" if q["goal"] else "-"
            met = "-" if q["met"] is None else ("yes" if q["met"] else "**no**")
            lines.append(
                f"| {q['name']} | {of} | {_f(q['median'], 2)} | "
                f"{', '.join(_f(v, 2) for v in q['per_round']) or '-'} | {goal} | {met} |"
            )
    return "\n".join(lines) + "\n"


def write(result: Mapping[str, Any], folder: Path, stem: str = "results") -> tuple[Path, Path]:
    """results.md (the table) and results.json (everything, per-round samples included)."""
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{stem}.md", folder / f"{stem}.json"
    md.write_text(result["table"])
    js.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return md, js


def _json_default(o: Any) -> Any:
    """numpy scalars and arrays, paths: as plain JSON values."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- the child


def _child(payload: str) -> int:
    spec = json.loads(payload)
    module_name, func_name = spec["target"].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    out = func(**spec["params"])
    sys.stdout.write(RESULT_MARK + json.dumps(out, default=_json_default) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["row"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.harness row '<spec as JSON>'")
    raise SystemExit(_child(sys.argv[2]))
