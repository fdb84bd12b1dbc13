"""A Prometheus text endpoint (`groundwatch consume --metrics-port N`), stdlib only.

Every scrape reads the same plain Redis keys as `groundwatch status` (groundwatch.status.collect),
so any consumer of a feed reports the feed-wide figures; scrape one of them.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from groundwatch import status

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(feeds: list[status.FeedStatus]) -> str:
    """Prometheus text exposition format 0.0.4 of the feeds' figures."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        if not samples:
            return
        out.append(f"# HELP groundwatch_{name} {help_text}")
        out.append(f"# TYPE groundwatch_{name} {kind}")
        out.extend(f"groundwatch_{name}{{{labels}}} {value:g}" for labels, value in samples)

    def feed(st: status.FeedStatus, **extra: str) -> str:
        pairs = {"feed": st.feed, **extra}
        return ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items())

    metric(
        "frames_stream_entries",
        "gauge",
        "entries on the feed's frames stream",
        [(feed(st), st.frames) for st in feeds],
    )
    metric(
        "dead_letters",
        "gauge",
        "entries on the feed's dead-letter stream",
        [(feed(st), st.dead_letters) for st in feeds],
    )
    metric(
        "group_lag",
        "gauge",
        "frames not yet delivered to the consumer group",
        [(feed(st, group=g.name), g.lag) for st in feeds for g in st.groups if g.lag is not None],
    )
    metric(
        "group_pending",
        "gauge",
        "frames delivered but not acknowledged",
        [(feed(st, group=g.name), g.pending) for st in feeds for g in st.groups],
    )
    metric(
        "group_consumers",
        "gauge",
        "consumers in the group",
        [(feed(st, group=g.name), g.consumers) for st in feeds for g in st.groups],
    )
    names = sorted({k for st in feeds for k in st.counters})
    for name in names:
        metric(
            f"{_NAME.sub('_', name)}_total",
            "counter",
            f"counter {name} of the feed's stats hash",
            [(feed(st), st.counters[name]) for st in feeds if name in st.counters],
        )
    for measure in status.CLASS_MEASURES:
        metric(
            f"class_{measure}_total",
            "counter",
            f"{measure.replace('_', ' ')} per class in the feed's completed scenes",
            [
                (feed(st, **{"class": label}), m[measure])
                for st in feeds
                for label, m in sorted(st.classes.items())
                if measure in m
            ],
        )
    metric(
        "throughput_frames_per_second",
        "gauge",
        "frames completed per second over the last minute",
        [(feed(st), st.throughput_fps) for st in feeds if st.throughput_fps is not None],
    )
    metric(
        "latency_ms",
        "gauge",
        "recent end-to-end latency percentiles (frame published to result published)",
        [(feed(st, quantile=f"0.{q[1:]}"), v) for st in feeds for q, v in st.latency_ms.items()],
    )
    metric(
        "drift",
        "gauge",
        "the monitor's latest drift figure per measure (PSI, or relative change of detections per tile)",
        [(feed(st, measure=m), v) for st in feeds for m, v in sorted(st.drift.items())],
    )
    metric(
        "alert_active",
        "gauge",
        "1 for each alert active now (groundwatch monitor)",
        [(feed(st, alert=a), 1.0) for st in feeds for a in sorted(st.alerts)],
    )
    return "\n".join(out) + "\n"


def serve(
    client: redis.Redis, port: int, feed: str | None = None, host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """Serve /metrics on `host`:`port` (0: any free port, see server.server_address) in a daemon
    thread. Loopback by default: the figures name feeds and models, so exposing them is a choice."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            try:
                body = render(status.collect(client, feed=feed)).encode()
            except redis.RedisError as e:
                self.send_error(503, f"Redis: {e}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
