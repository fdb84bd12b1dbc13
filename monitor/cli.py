"""`groundwatch monitor` (figures and alerts, in a loop or --burst) and `monitor baseline`."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING

from groundwatch.settings import Settings

if TYPE_CHECKING:
    from monitor.checks import Report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor", help="drift of inputs and outputs against a reference; raise and clear alerts"
    )
    p.add_argument("--feed", dest="feed", default=None, help="only this feed (default: every feed)")
    p.add_argument("--interval-s", type=float, default=10.0, help="seconds between checks (10)")
    p.add_argument("--burst", action="store_true", help="check once and exit")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    b = actions.add_parser("baseline", help="take the reference profile of a feed's model from a time range")
    b.add_argument("--feed", dest="feed", required=True, help="the feed")
    b.add_argument(
        "--model", default=None, metavar="NAME:VERSION", help="the version (default: the active one)"
    )
    b.add_argument(
        "--from", dest="start", default=None, metavar="ISO-TIME", help="first moment (default: all)"
    )
    b.add_argument("--to", dest="end", default=None, metavar="ISO-TIME", help="last moment (default: now)")
    p.set_defaults(handler=cmd_monitor)


def _ms(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as e:
        raise SystemExit(
            f"groundwatch monitor: {text!r} is not an ISO time (e.g. 2026-12-01T10:00:00Z)"
        ) from e


def cmd_monitor(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch import connection, keys
    from monitor import MonitorError, checks

    client = connection.connect(settings)
    if args.action == "baseline":
        version = args.model or (client.get(keys.active_model(args.feed)) or b"").decode() or None
        if version is None:
            print(
                f"groundwatch monitor: feed {args.feed} has no active model; give --model NAME:VERSION",
                file=sys.stderr,
            )
            return 2
        start, end = _ms(args.start), _ms(args.end)
        w = settings.profile_window_s
        chosen = [
            x
            for x in checks.windows(client, args.feed, version)
            if (start is None or (x + 1) * w > start) and (end is None or x * w <= end)
        ]
        try:
            ref = checks.set_reference(
                client, args.feed, version, chosen, f"baseline {args.start}..{args.end}"
            )
        except MonitorError as e:
            print(f"groundwatch monitor: {e}", file=sys.stderr)
            return 1
        print(f"{args.feed}: reference of {version} from {len(chosen)} window(s), {ref.tiles} tiles")
        return 0
    feeds = (
        [args.feed]
        if args.feed
        else sorted(f.decode() for f in connection.on_slot(client, keys.feeds()).smembers(keys.feeds()))
    )
    while True:
        now_ms = int(time.time() * 1000)
        for feed in feeds:
            # on a cluster each feed's checks (transactions among them) run on its own master
            report = checks.check(connection.on_slot(client, keys.frames(feed)), settings, feed, now_ms)
            for ev in report.events:
                print(f"{feed}: {ev.event} {ev.alert}: {ev.detail}", flush=True)
            if args.burst:
                print(_describe(report))
        if args.burst:
            return 0
        time.sleep(args.interval_s)


def _describe(r: Report) -> str:
    lines = [
        f"{r.feed}: model {r.version or '-'}; reference {r.reference_tiles} tiles; "
        f"current window {r.current_window} ({r.current_tiles} tiles)"
    ]
    for m in r.measures:
        flag = "DRIFT" if m.drifted else "ok"
        lines.append(f"  {m.name:22} {m.value:8.3f}  (threshold {m.threshold:g})  {flag}  {m.detail}")
    for name, a in r.active.items():
        lines.append(f"  ALERT {name}: {a.get('detail', '')}")
    return "\n".join(lines)
