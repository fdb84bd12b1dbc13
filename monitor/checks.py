"""One check of one feed: drift of its profiles against the reference, and the health alerts.

Drift: the active model version's latest window with at least ``drift_min_tiles`` tiles (not
part of the reference) against its reference profile; each measure of groundwatch.profiles.drift
raises ``drift:<measure>`` above its threshold and clears it below half of it (hysteresis, so a
value hovering at the threshold does not raise and clear on every check). With no reference,
the first ``baseline_frames`` frames the version ran become it.

Health: ``quiet`` (no frame published on a feed that had frames for ``quiet_s``), ``dead-letters``
(dead letters over frames in the last window above ``dead_rate``), ``lag`` (the group's lag above
``max_lag`` and grown at each of the last three checks).
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from groundwatch import keys, profiles
from groundwatch.settings import Settings
from monitor import MonitorError, alerts

log = logging.getLogger(__name__)
CLEAR_FACTOR = 0.5
LAG_CHECKS = 3


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class Report:
    feed: str
    version: str | None
    reference_tiles: int = 0
    current_tiles: int = 0
    current_window: int | None = None
    measures: list[profiles.Measure] = field(default_factory=list)
    events: list[alerts.Event] = field(default_factory=list)
    active: dict[str, dict[str, Any]] = field(default_factory=dict)


def windows(client: redis.Redis, feed: str, version: str) -> list[int]:
    """The windows profiled for `version`, oldest first."""
    out = []
    for member in client.zrange(keys.profile_index(feed), 0, -1):
        window, _, v = _text(member).partition("|")
        if v == version:
            out.append(int(window))
    return out


def load(client: redis.Redis, feed: str, version: str, window: int) -> profiles.Profile:
    return profiles.from_fields(client.hgetall(keys.profile(feed, version, window)))


def set_reference(
    client: redis.Redis, feed: str, version: str, chosen: list[int], source: str
) -> profiles.Profile:
    """Merge the profiles of `chosen` windows into the version's reference (replacing it)."""
    ref = profiles.Profile()
    for w in chosen:
        ref.merge(load(client, feed, version, w))
    if ref.tiles == 0:
        raise MonitorError(
            f"feed {feed}: model {version} has no profiled frames in the windows asked for; run consumers "
            "first, or choose another --from/--to"
        )
    ints, floats = profiles.to_fields(ref)
    key = keys.profile_reference(feed, version)
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(
        key, mapping={**ints, **floats, "meta:windows": ",".join(map(str, chosen)), "meta:source": source}
    )
    pipe.execute()
    return ref


def reference(
    client: redis.Redis, feed: str, version: str, baseline_frames: int
) -> tuple[profiles.Profile, set[int]]:
    """The version's reference and its windows; the default (first `baseline_frames` frames)
    is made when there is none and enough frames have been profiled."""
    h = client.hgetall(keys.profile_reference(feed, version))
    if h:
        used = {int(w) for w in _text(h.get(b"meta:windows", b"")).split(",") if w}
        return profiles.from_fields(h), used
    chosen: list[int] = []
    tiles = 0
    for w in windows(client, feed, version):
        chosen.append(w)
        tiles += load(client, feed, version, w).tiles
        if tiles >= baseline_frames:
            return set_reference(client, feed, version, chosen, f"first {baseline_frames} frames"), set(
                chosen
            )
    return profiles.Profile(), set()


def check(client: redis.Redis, settings: Settings, feed: str, now_ms: int) -> Report:
    raw = client.get(keys.active_model(feed))
    version = None if raw is None else _text(raw)
    report = Report(feed, version)
    if version is not None:
        _drift(client, settings, report, now_ms)
    _quiet(client, settings, report, now_ms)
    _dead_letters(client, settings, report, now_ms)
    _lag(client, settings, report, now_ms)
    report.active = alerts.active(client, feed)
    return report


def _judge(
    client: redis.Redis,
    report: Report,
    alert: str,
    *,
    raise_it: bool,
    clear_it: bool,
    value: float,
    threshold: float,
    now_ms: int,
    detail: str,
    clear_detail: str | None = None,
) -> None:
    """Raise `alert` when raise_it, clear it when clear_it (neither: leave it as it is)."""
    if raise_it:
        e = alerts.raise_alert(
            client,
            report.feed,
            alert,
            value=value,
            threshold=threshold,
            version=report.version,
            now_ms=now_ms,
            detail=detail,
        )
    elif clear_it:
        e = alerts.clear_alert(
            client, report.feed, alert, value=value, now_ms=now_ms, detail=clear_detail or detail
        )
    else:
        e = None
    if e is not None:
        report.events.append(e)


def _drift(client: redis.Redis, settings: Settings, report: Report, now_ms: int) -> None:
    feed, version = report.feed, report.version
    assert version is not None
    ref, used = reference(client, feed, version, settings.baseline_frames)
    report.reference_tiles = ref.tiles
    if not ref.tiles:
        return
    current = None
    for w in reversed(windows(client, feed, version)):
        if w in used:
            break
        p = load(client, feed, version, w)
        if p.tiles >= settings.drift_min_tiles:
            current, report.current_window = p, w
            break
    if current is None:
        return
    report.current_tiles = current.tiles
    report.measures = profiles.drift(
        ref,
        current,
        psi_threshold=settings.drift_psi,
        mean_threshold=settings.drift_mean,
        rate_threshold=settings.drift_rate,
        min_tiles=settings.drift_min_tiles,
    )
    figures = {m.name: profiles.measure_json(m) for m in report.measures}
    if figures:
        client.hset(
            keys.drift(feed), mapping={**figures, "version": version, "window": str(report.current_window)}
        )
    for m in report.measures:
        _judge(
            client,
            report,
            f"drift:{m.name}",
            raise_it=m.drifted,
            clear_it=m.value < m.threshold * CLEAR_FACTOR,
            value=m.value,
            threshold=m.threshold,
            now_ms=now_ms,
            detail=f"{m.detail}: PSI/change {m.value:.3f} (threshold {m.threshold:g}), window {report.current_window}",
        )


def _stream_last_ms(client: redis.Redis, stream: str) -> int | None:
    last = client.xrevrange(stream, count=1)
    if not last:
        return None
    return int(_text(last[0][0]).split("-")[0])


def _quiet(client: redis.Redis, settings: Settings, report: Report, now_ms: int) -> None:
    last = _stream_last_ms(client, keys.frames(report.feed))
    if last is None:
        return
    silent_s = (now_ms - last) / 1000
    _judge(
        client,
        report,
        "quiet",
        raise_it=silent_s > settings.quiet_s,
        clear_it=True,
        value=silent_s,
        threshold=settings.quiet_s,
        now_ms=now_ms,
        detail=f"no frame published for {silent_s:.0f} s; is the ground station or ingest running?",
        clear_detail="frames arrive again",
    )


def _count_since(client: redis.Redis, stream: str, since_ms: int, cap: int = 100_000) -> int:
    return len(client.xrange(stream, min=f"{since_ms}-0", count=cap))


def _dead_letters(client: redis.Redis, settings: Settings, report: Report, now_ms: int) -> None:
    since = now_ms - settings.profile_window_s * 1000
    frames = _count_since(client, keys.frames(report.feed), since)
    dead = _count_since(client, keys.dead_letters(report.feed), since)
    if frames < settings.drift_min_tiles:
        return
    rate = dead / frames
    detail = f"{dead} dead letters for {frames} frames in the last {settings.profile_window_s} s"
    _judge(
        client,
        report,
        "dead-letters",
        raise_it=rate > settings.dead_rate,
        clear_it=rate < settings.dead_rate * CLEAR_FACTOR,
        value=rate,
        threshold=settings.dead_rate,
        now_ms=now_ms,
        detail=detail + "; see `groundwatch status` and the dead-letter reasons",
        clear_detail=detail,
    )


def _lag(client: redis.Redis, settings: Settings, report: Report, now_ms: int) -> None:
    try:
        groups = client.xinfo_groups(keys.frames(report.feed))
    except redis.ResponseError:
        return
    lag = max((int(g["lag"]) for g in groups if g.get("lag") is not None), default=None)
    if lag is None:
        return
    raw = client.hget(keys.drift(report.feed), "lag:history")
    history = json.loads(raw) if raw else []
    history = [*history, lag][-(LAG_CHECKS + 1) :]
    client.hset(keys.drift(report.feed), "lag:history", json.dumps(history))
    growing = len(history) > LAG_CHECKS and all(b > a for a, b in itertools.pairwise(history))
    detail = f"consumer group lag {' -> '.join(map(str, history))} frames"
    _judge(
        client,
        report,
        "lag",
        raise_it=growing and lag > settings.max_lag,
        clear_it=lag <= settings.max_lag or (len(history) > 1 and history[-1] < history[-2]),
        value=lag,
        threshold=settings.max_lag,
        now_ms=now_ms,
        detail=detail + "; add consumers or check the engine",
        clear_detail=detail,
    )
