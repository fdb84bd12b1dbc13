"""The `groundwatch` command line.

The core defines the global flags, builds the one Settings object and dispatches. Subcommands
come from the entry-point group ``groundwatch.commands``: each entry point names a function
``register(subparsers)`` that adds its parsers and sets ``handler=fn`` with
``fn(settings, args) -> int``. That is how the roles (ingest, loaders, consumers, models)
plug in without the core importing any of them. Role modules named there must import lightly
(heavy imports such as torch belong inside the handlers) so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import redis

from groundwatch import __version__
from groundwatch.errors import GroundwatchError
from groundwatch.settings import Settings

Handler = Callable[[Settings, argparse.Namespace], int]
ENTRY_POINT_GROUP = "groundwatch.commands"

# Settings fields that have a global flag. Subcommands may add flags with the same dest.
_GLOBAL_FLAGS: dict[str, tuple[str, type, str]] = {
    "redis_url": ("--redis-url", str, "Redis URL (default: REDIS_URL, else the embedded server)"),
    "data_dir": ("--data-dir", str, "embedded server and demo files (default .groundwatch)"),
    "log_level": ("--log-level", str, "DEBUG, INFO, WARNING or ERROR"),
}


def build_parser(extra: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groundwatch",
        description="Streaming detection for satellite imagery, with inference inside Redis.",
    )
    parser.add_argument("--version", action="version", version=f"groundwatch {__version__}")
    for dest, (flag, _type, help_text) in _GLOBAL_FLAGS.items():
        parser.add_argument(flag, dest=dest, default=None, help=help_text)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    from groundwatch import commands  # the core's own subcommands (up, down, status)

    commands.register(sub)
    for register in extra:
        register(sub)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Every Settings field that a parser defined as a dest becomes a flag override."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(Settings)}
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "data_dir" in flags:
        from pathlib import Path

        flags["data_dir"] = Path(flags["data_dir"])
    return Settings.load(**flags)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        handler: Handler = args.handler
        return handler(settings, args)
    except GroundwatchError as e:
        print(f"groundwatch {args.command}: {e}", file=sys.stderr)
        return 1
    except redis.exceptions.NoPermissionError as e:
        print(
            f"groundwatch {args.command}: Redis refused: {e}. The ACL user this runs as may not do that "
            "(roles: docs/security.md); run it as a user whose role may (REDIS_URL, or "
            "GROUNDWATCH_REDIS_USER on the embedded server)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
