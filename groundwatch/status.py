"""Operational figures per feed, read from plain Redis keys (see the README's redis-cli cookbook).

collect() only reads; render() formats. Consumers write the counters (`keys.stats`) and the
recent latencies (`keys.latency`); everything else comes from the streams themselves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from groundwatch import connection, keys
from groundwatch.ai import Engine, EngineError
from groundwatch.registry import ModelRef, RegistryError


@dataclass
class GroupStatus:
    name: str
    consumers: int
    pending: int
    lag: int | None


@dataclass
class FeedStatus:
    feed: str
    frames: int
    dead_letters: int
    groups: list[GroupStatus] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    # completed scenes' results per class (class counters of keys.stats): class -> measure -> total,
    # measures "detections" (a detector's merged detections), "regions" and "area_m2" (a segmenter's)
    classes: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    model_stats: dict[str, Any] = field(default_factory=dict)
    throughput_fps: float | None = None  # frames/s completed over the last minute
    # what stops the feed now (keys.faults): consumer -> fault of the system it backs off on,
    # "model-fit" -> the last frame that did not fit the active model; values: (reason, at ms)
    faults: dict[str, tuple[str, int]] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)  # the monitor's latest figures (keys.drift)
    alerts: dict[str, str] = field(default_factory=dict)  # active alerts (keys.alert_state): name -> detail


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles; empty input gives an empty dict."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for p in points:
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        out[f"p{p}"] = ordered[rank]
    return out


THROUGHPUT_SAMPLES = 1000  # consumers keep this many recent completions in keys.throughput

# Per-class counters share the feed's stats hash as fields "class:<measure>:<class name>", written
# once per completed scene (consumers.commit): what its merged result holds of each class.
CLASS_COUNTER = "class:"
CLASS_MEASURES = ("detections", "regions", "area_m2")


def class_counter(measure: str, label: str) -> str:
    """The stats field of `measure` (one of CLASS_MEASURES) for the class named `label`."""
    if measure not in CLASS_MEASURES:
        raise ValueError(f"unknown per-class measure {measure!r}; known: {', '.join(CLASS_MEASURES)}")
    return f"{CLASS_COUNTER}{measure}:{label}"


def split_counters(raw: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The stats hash as (feed-wide counters, class -> measure -> total)."""
    flat: dict[str, float] = {}
    classes: dict[str, dict[str, float]] = {}
    for name, value in raw.items():
        measure, _, label = name.removeprefix(CLASS_COUNTER).partition(":")
        if name.startswith(CLASS_COUNTER) and measure in CLASS_MEASURES and label:
            classes.setdefault(label, {})[measure] = value
        else:
            flat[name] = value
    return flat, classes


def class_summary(classes: dict[str, dict[str, float]]) -> str:
    """One line of the per-class totals: "land 3 regions 1.23 km², ship 12 detections"."""
    parts = []
    for label, m in sorted(classes.items()):
        bits = []
        if "detections" in m:
            bits.append(f"{m['detections']:g} detections")
        if "regions" in m:
            bits.append(f"{m['regions']:g} regions")
        if "area_m2" in m:
            bits.append(f"{m['area_m2'] / 1e6:.3g} km²")
        parts.append(f"{label} {' '.join(bits)}")
    return ", ".join(parts)


def throughput(samples: list[str], now_ms: int, window_ms: int = 60_000) -> float | None:
    """Frames/s from "<epoch ms> <frames>" completions: the frames of the last `window_ms`,
    divided by the span they cover (the window, or less when the list holds less); None when idle."""
    recent = []
    for s in samples:
        try:
            at, n = s.split()
            recent.append((int(at), int(n)))
        except ValueError:
            continue
    recent = [(at, n) for at, n in recent if now_ms - at <= window_ms]
    if not recent:
        return None
    oldest = min(at for at, _ in recent)
    # A full list may have dropped completions of the window: then count only the span it covers.
    span_ms = max(now_ms - oldest, 1) if len(samples) >= THROUGHPUT_SAMPLES else window_ms
    return sum(n for _, n in recent) * 1000.0 / span_ms


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def collect(client: redis.Redis, feed: str | None = None) -> list[FeedStatus]:
    """Every feed in keys.feeds() (or `feed`). On a cluster each feed is read on its own shard."""
    everyone = connection.on_slot(client, keys.feeds())
    names = [feed] if feed else sorted(_text(f) for f in everyone.smembers(keys.feeds()))
    out = []
    for name in names:
        client = connection.on_slot(everyone, keys.frames(name))
        st = FeedStatus(
            feed=name,
            frames=int(client.xlen(keys.frames(name))),
            dead_letters=int(client.xlen(keys.dead_letters(name))),
        )
        try:
            groups = client.xinfo_groups(keys.frames(name))
        except redis.ResponseError:
            groups = []
        for g in groups:
            st.groups.append(
                GroupStatus(
                    name=_text(g["name"]),
                    consumers=int(g["consumers"]),
                    pending=int(g["pending"]),
                    lag=None if g.get("lag") is None else int(g["lag"]),
                )
            )
        st.counters, st.classes = split_counters(
            {_text(k): float(v) for k, v in client.hgetall(keys.stats(name)).items()}
        )
        st.latency_ms = percentiles([float(v) for v in client.lrange(keys.latency(name), 0, -1)])
        seconds, micros = client.time()
        st.throughput_fps = throughput(
            [_text(v) for v in client.lrange(keys.throughput(name), 0, -1)],
            int(seconds) * 1000 + int(micros) // 1000,
        )
        for who, raw in client.hgetall(keys.faults(name)).items():
            try:
                doc = json.loads(raw)
                st.faults[_text(who)] = (str(doc["reason"]), int(doc["at"]))
            except (ValueError, KeyError, TypeError):
                st.faults[_text(who)] = (_text(raw), 0)
        for measure, raw in client.hgetall(keys.drift(name)).items():
            try:
                doc = json.loads(raw)
                st.drift[_text(measure)] = float(doc["value"])
            except (ValueError, KeyError, TypeError):
                continue  # the version/window/history fields, or not ours
        for alert, raw in client.hgetall(keys.alert_state(name)).items():
            try:
                st.alerts[_text(alert)] = str(json.loads(raw).get("detail", ""))
            except (ValueError, AttributeError):
                st.alerts[_text(alert)] = _text(raw)
        active = client.get(keys.active_model(name))
        if active:
            st.model = _text(active)
            try:
                info = Engine(client).model_info(ModelRef.parse(st.model).key(name))
                st.model_stats = {
                    "calls": info.calls,
                    "samples": info.samples,
                    "errors": info.errors,
                    "mean_ms": round(info.mean_ms, 2),
                }
            except (EngineError, RegistryError):
                st.model_stats = {}
        out.append(st)
    return out


def render(feeds: list[FeedStatus]) -> str:
    if not feeds:
        return "no feeds yet: publish with `groundwatch ingest FILE --feed NAME`"
    lines = []
    for st in feeds:
        lines.append(f"feed {st.feed}")
        lines.append(f"  frames stream    {st.frames} entries, dead letters {st.dead_letters}")
        for g in st.groups:
            lag = "?" if g.lag is None else str(g.lag)
            lines.append(f"  group {g.name:<10} consumers {g.consumers}, lag {lag}, pending {g.pending}")
        if st.counters:
            shown = ", ".join(f"{k} {v:g}" for k, v in sorted(st.counters.items()))
            lines.append(f"  counters         {shown}")
        if st.classes:
            lines.append(f"  per class        {class_summary(st.classes)} (completed scenes)")
        if st.throughput_fps is not None:
            lines.append(f"  throughput       {st.throughput_fps:.1f} frames/s (last minute)")
        if st.latency_ms:
            shown = ", ".join(f"{k} {v:.0f} ms" for k, v in st.latency_ms.items())
            lines.append(f"  latency          {shown}")
        if st.model:
            stats = ", ".join(f"{k} {v}" for k, v in st.model_stats.items())
            lines.append(f"  model            {st.model} {stats}")
        for who, (reason, at) in sorted(st.faults.items()):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at / 1000)) + "Z" if at else "?"
            if who == keys.MODEL_FIT:
                lines.append(f"  FAULT model fit: {reason} (last at {when})")
            else:
                lines.append(f"  FAULT consumer {who}: {reason} (since {when})")
        for alert, detail in sorted(st.alerts.items()):
            lines.append(f"  ALERT {alert}: {detail}")
    return "\n".join(lines)
