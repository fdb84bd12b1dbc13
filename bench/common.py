"""Shared benchmark helpers: the stand-in model, tiles, CPU accounting from /proc, process-group
handling and the engine server the bench starts, a markdown table for in-process row lists.

How rows are measured (fresh processes, warm-up, interleaved rounds, medians) is bench/harness.py;
this module holds what the rows are made of.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from groundwatch.settings import REPO_ROOT

DETECTOR_PATH = REPO_ROOT / "models" / "artifacts" / "detector.pt"
TILE = 512
ROW_KEYS = (
    "name",
    "throughput",
    "p50_ms",
    "p99_ms",
    "ratio",
    "requests",
    "tiles",
    "errors",
    "note",
    "cpu_ms_per_tile",
)

# Wire format of a tile over HTTP: raw little-endian bytes, with these headers.
DTYPE_HEADER = "X-Dtype"
SHAPE_HEADER = "X-Shape"


# --------------------------------------------------------------------------- the stand-in model


class StandIn(torch.nn.Module):
    """A small conv net with the detector's contract: uint16 [B, C, H, W] -> float32 [B, K, 6].

    log1p normalisation, three stride-2 convs to stride 8, a per-class heat head, a box-size head
    and top-K decoding; rows are x1, y1, x2, y2, score, class_id sorted by score. Its weights are
    random (seeded): it costs roughly what a compact detector costs, and that is all it is for.
    """

    def __init__(self, bands: int = 1, classes: int = 2, k: int = 100, width: int = 32) -> None:
        super().__init__()
        self.k = k
        self.classes = classes
        self.trunk = torch.nn.Sequential(
            torch.nn.Conv2d(bands, width // 2, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.heat = torch.nn.Conv2d(width, classes, 1)
        self.size = torch.nn.Conv2d(width, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        f = self.trunk((torch.log1p(x.to(torch.float32).clamp(min=0.0)) - 5.0) / 1.5)
        heat = torch.sigmoid(self.heat(f))  # [B, N, h, w]
        size = torch.exp(self.size(f).clamp(-4.0, 4.0)) * 8.0  # [B, 2, h, w]
        h, w = heat.shape[2], heat.shape[3]
        scores, idx = heat.reshape(b, -1).topk(self.k, dim=1)
        cls = torch.div(idx, h * w, rounding_mode="floor")
        cell = idx % (h * w)
        cy = (torch.div(cell, w, rounding_mode="floor").to(torch.float32) + 0.5) * 8.0
        cx = ((cell % w).to(torch.float32) + 0.5) * 8.0
        sizes = size.reshape(b, 2, -1)
        bw = torch.gather(sizes[:, 0], 1, cell)
        bh = torch.gather(sizes[:, 1], 1, cell)
        return torch.stack(
            [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, scores, cls.to(torch.float32)], dim=2
        )


def save_standin(path: str | Path, bands: int = 1, k: int = 100, width: int = 32, seed: int = 0) -> Path:
    """Script the stand-in model with seeded weights and save it with torch.jit.save."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what the engine loads
        module = torch.jit.script(StandIn(bands=bands, k=k, width=width).eval())
        torch.jit.save(module, str(path))
    return path


@contextlib.contextmanager
def model_file(model_path: str | Path | None, bands: int = 1) -> Iterator[tuple[Path, str]]:
    """Yield (path, description): `model_path`, else the bundled detector, else a temp stand-in."""
    if model_path is not None:
        yield Path(model_path), str(model_path)
        return
    if DETECTOR_PATH.exists():
        yield DETECTOR_PATH, str(DETECTOR_PATH.relative_to(REPO_ROOT))
        return
    with tempfile.TemporaryDirectory(prefix="gw-bench-model-") as tmp:
        yield save_standin(Path(tmp) / "standin.pt", bands=bands), "stand-in conv net (bench/common.py)"


def load_model(path: str | Path, threads: int | None = None) -> torch.jit.ScriptModule:
    if threads is not None:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module


def infer(module: Any, batch: np.ndarray) -> np.ndarray:
    """Run one batch [B, C, H, W] through the model; returns float32 [B, K, 6]."""
    with torch.inference_mode():
        out = module(torch.from_numpy(np.ascontiguousarray(batch)))
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def make_tiles(n: int = 16, bands: int = 1, size: int = TILE, seed: int = 0) -> np.ndarray:
    """Synthetic uint16 tiles [n, bands, size, size]: dim noisy ground with a few bright targets."""
    rng = np.random.default_rng(seed)
    tiles = rng.gamma(4.0, 60.0, size=(n, bands, size, size)).astype(np.float32)
    for i in range(n):
        for _ in range(rng.integers(2, 8)):
            y, x = rng.integers(8, size - 24, size=2)
            h, w = rng.integers(4, 16, size=2)
            tiles[i, :, y : y + h, x : x + w] += rng.uniform(2000, 20000)
    return np.clip(tiles, 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- detections on the wire


def live_rows(out: np.ndarray) -> np.ndarray:
    """The rows of one tile's [K, 6] output with a positive score (unused rows are all zero)."""
    return out[out[:, 4] > 0]


def detections_json(out: np.ndarray) -> list[list[float]]:
    """One tile's [K, 6] output as the JSON list a REST service returns (live rows only)."""
    return [[float(v) for v in row] for row in live_rows(out)]


def detections_array(rows: Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 6)


def tile_headers(tile: np.ndarray) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        DTYPE_HEADER: tile.dtype.str,
        SHAPE_HEADER: ",".join(str(d) for d in tile.shape),
    }


def tile_from_bytes(body: bytes, dtype: str, shape: str) -> np.ndarray:
    dims = tuple(int(d) for d in shape.split(",") if d)
    return np.frombuffer(body, dtype=np.dtype(dtype)).reshape(dims)


# --------------------------------------------------------------------------- rows of the in-process tables


def row(
    name: str,
    *,
    tiles: int = 0,
    wall_s: float = 0.0,
    latencies_s: Sequence[float] = (),
    requests: int | None = None,
    errors: int = 0,
    note: str = "",
    cpu_s: float | None = None,
) -> dict[str, Any]:
    """A named result row: `harness.sample`'s figures (tiles/s, latency percentiles in ms per
    request, CPU ms per tile when `cpu_s` is given) with a `name` and a `ratio` to fill in."""
    from bench import harness

    r: dict[str, Any] = {"name": name, "ratio": None}
    r.update(
        harness.sample(
            tiles=tiles, wall_s=wall_s, latencies_s=latencies_s, cpu_s=cpu_s, errors=errors, note=note
        )
    )
    if requests is not None:
        r["requests"] = requests
    if not tiles:
        r["throughput"] = 0.0
    return r


def skipped(name: str, reason: str) -> dict[str, Any]:
    r = row(name, note=f"skipped: {reason}")
    r["throughput"] = None
    return r


def add_ratios(rows: Sequence[dict[str, Any]], reference: float | None) -> None:
    """Set each row's `ratio` to its throughput over `reference`."""
    for r in rows:
        tput = r.get("throughput")
        r["ratio"] = tput / reference if reference and tput else None


# --------------------------------------------------------------------------- CPU accounting

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds) for every live process, from /proc: its own user + system time
    and that of its children it has waited for (cutime + cstime). The latter keeps what a child
    that ended in between cost: redis-server forks for an AOF rewrite or a BGSAVE, and once the
    child has exited and been reaped its CPU time is only in the parent's cutime/cstime."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "pid (comm)": state ppid ... utime(12th) stime(13th) cutime(14th) cstime(15th)
        used = sum(int(f) for f in fields[11:15])
        stats[int(entry.name)] = (int(fields[1]), used / _CLK_TCK)
    return stats


def cpu_seconds(roots: Sequence[int] = (), *, this_process: bool = True) -> float:
    """CPU seconds (user + system) used so far by `roots` and all their live descendants, plus
    this process (all its threads, e.g. the bench's clients) unless `this_process` is False.
    The difference of two readings is what a row cost in CPU, whatever else the machine runs,
    children that started and ended in between included: a descendant alive at the first
    reading and reaped before the second counts there with its time so far and here in its
    parent's cutime/cstime with all of it."""
    total = 0.0
    if this_process:
        total += time.process_time()  # all threads, nanosecond clock
    if roots:
        stats = _proc_stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        seen: set[int] = set()
        todo = [pid for pid in roots if pid in stats]
        while todo:
            pid = todo.pop()
            if pid in seen or pid == os.getpid():
                continue
            seen.add(pid)
            total += stats[pid][1]
            todo.extend(children.get(pid, ()))
    return total


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment that holds a server's torch to `threads` intra-op threads."""
    env = dict(os.environ if base is None else base)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["GW_BENCH_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def spawn(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own session (its own process group), output to `log` or nowhere."""
    out: Any = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            list(args), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log is not None:
            out.close()


def kill_group(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, wait, then SIGKILL it. Safe to call twice."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children that ignored SIGTERM may still hold the group.
        if sig == signal.SIGTERM:
            time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


def wait_http(
    url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Poll `url` until it answers 200; raise RuntimeError (with the log tail) on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout_s:.0f}s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- log tail ---\n" + "\n".join(tail)


def engine_server(data_dir: Path, threads: int, **settings: Any) -> Any:
    """A redis-server with the engine loaded as `groundwatch up` loads it (the same load-time
    arguments, from Settings), with `threads` intra-op threads and one thread per queue; not
    started. `settings` replace further Settings fields (e.g. torch_cpu_cache_mb)."""
    from groundwatch.commands import engine_args
    from groundwatch.server import RedisServer
    from groundwatch.settings import Settings

    s = Settings().replace(intra_op_threads=threads, threads_per_queue=1, **settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    return RedisServer(data_dir=data_dir, engine_module=s.engine_module, module_args=engine_args(s))


# --------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a markdown table: what, tiles/s, p50, p99, ratio to raw torch batch 8, CPU ms a tile,
    requests, errors, note. Missing values print as "-"."""
    lines = [
        "| what | tiles/s | p50 ms | p99 ms | x raw torch b8 | CPU ms/tile | requests | errors | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ratio = r.get("ratio")
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["name"],
                _fmt(r.get("throughput")),
                _fmt(r.get("p50_ms")),
                _fmt(r.get("p99_ms")),
                f"{ratio:.2f}" if ratio is not None else "-",
                _fmt(r.get("cpu_ms_per_tile")),
                _fmt(r.get("requests")),
                _fmt(r.get("errors")),
                str(r.get("note", "")).replace("|", "/").replace("\n", " "),
            )
        )
    return "\n".join(lines) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as JSON; NaN becomes null, numpy scalars and paths become plain values."""

    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            o = o.item()
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, Path):
            return str(o)
        return o

    Path(path).write_text(json.dumps(clean(data), indent=2) + "\n")
