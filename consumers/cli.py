"""`groundwatch consume`: run one consumer of a feed (imports stay light for `--help`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from groundwatch.settings import Settings

DAG_TIMEOUT_S = 300.0  # socket timeout of the consumer's connections when DAGs have no TIMEOUT


def socket_timeout_s(settings: Settings) -> float:
    """Long enough for a DAG's TIMEOUT (claim_idle_ms // 3) plus its run, short enough that a
    reply that never comes frees the batch before claim_idle_ms would let another reclaim it."""
    if settings.dag_timeout is None:
        return DAG_TIMEOUT_S
    return max(settings.dag_timeout * 2, settings.claim_idle_ms * 0.9) / 1000.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consume",
        help="read a feed's frames, detect inside Redis, publish georeferenced detections",
        description="Consume a feed: XREADGROUP frames, one AI.DAGEXECUTE per frame, publish per-tile "
        "detections and merged scene results, XACK. SIGTERM drains (finishes the batch in flight).",
    )
    p.add_argument(
        "--feed", dest="feed", default=None, help="feed name (default: GROUNDWATCH_FEED or 'default')"
    )
    p.add_argument("--group", dest="group", default=None, help="consumer group (default 'detectors')")
    p.add_argument(
        "--name",
        dest="consumer",
        default=None,
        help="consumer name (default: <host>-<slot>, the first free slot: stable across restarts)",
    )
    p.add_argument("--burst", action="store_true", help="process what is there now, then exit")
    p.add_argument("--read-count", dest="read_count", type=int, default=None, help="frames per batch (16)")
    p.add_argument(
        "--block-ms", dest="block_ms", type=int, default=None, help="XREADGROUP BLOCK in ms (1000)"
    )
    p.add_argument(
        "--claim-idle-ms",
        dest="claim_idle_ms",
        type=int,
        default=None,
        help="reclaim entries idle this long on other consumers (30000)",
    )
    p.add_argument(
        "--max-deliveries",
        dest="max_deliveries",
        type=int,
        default=None,
        help="deliveries before a failing frame goes to the dead letters (3)",
    )
    p.add_argument(
        "--score-threshold",
        dest="score_threshold",
        type=float,
        default=None,
        help="drop detections scoring below this (default: the model's score_threshold_hint, else 0.3)",
    )
    p.add_argument(
        "--simplify-px",
        dest="simplify_px",
        type=float,
        default=None,
        help="segmentation models: simplify published outlines at this tolerance in pixels (1; 0: exact)",
    )
    p.add_argument(
        "--min-region-px",
        dest="min_region_px",
        type=int,
        default=None,
        help="segmentation models: scene results drop regions of fewer pixels than this, every class "
        "(default: the model's min_region_px, else 0: keep all)",
    )
    p.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        default=None,
        help="serve Prometheus metrics of the feed on this port (/metrics)",
    )
    p.add_argument(
        "--metrics-bind",
        dest="metrics_bind",
        default="127.0.0.1",
        help="address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.set_defaults(handler=cmd_consume)


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    import redis

    from consumers import ConsumerError
    from consumers.worker import Consumer
    from groundwatch import connection

    # A DAG may wait in the engine's queue behind other consumers' batches: allow for it.
    client = connection.connect(settings, timeout_s=socket_timeout_s(settings))
    consumer = Consumer(client, settings, burst=args.burst)

    def drain(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("groundwatch.consumers").info("signal %d: draining", signum)
        consumer.stop()

    if args.metrics_port is not None:
        from consumers import metrics

        server = metrics.serve(
            connection.connect(settings), args.metrics_port, feed=consumer.feed, host=args.metrics_bind
        )
        logging.getLogger("groundwatch.consumers").info(
            "metrics on http://%s:%d/metrics", *server.server_address[:2]
        )
    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    try:
        stats = consumer.run()
    except redis.RedisError as e:
        raise ConsumerError(
            f"Redis refused a command, stopping (unacknowledged frames stay pending): {e}"
        ) from e
    print(
        f"consumer {consumer.name} on feed {consumer.feed}: {stats.frames_done} frames, "
        f"{stats.detections} detections, "
        + (f"{stats.regions} region pieces (before the scenes' merge), " if stats.regions else "")
        + f"{stats.scenes_done} scenes, {stats.dead} dead letters, "
        f"{stats.duplicates} duplicates skipped",
        file=sys.stderr,
    )
    return 0
