"""`groundwatch web`: the live view (web.app) served by uvicorn."""

from __future__ import annotations

import argparse
import sys

from groundwatch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="live view in the browser: figures, alerts, latest scenes, a map")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (127.0.0.1: this host only)")
    p.add_argument("--port", type=int, default=8765, help="port (8765)")
    p.set_defaults(handler=cmd_web)


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import create_app

    print(f"live view on http://{args.bind}:{args.port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(create_app(settings), host=args.bind, port=args.port, log_level="warning")
    return 0
