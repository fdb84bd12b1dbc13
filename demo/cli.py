"""`groundwatch demo` and `groundwatch bench`."""

from __future__ import annotations

import argparse

from groundwatch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end demo: scenes in, georeferenced detections out, with a summary"
    )
    p.add_argument("--scenes", type=int, default=3, help="number of synthetic scenes (default 3)")
    p.add_argument("--size", type=int, default=2048, help="scene side in pixels (default 2048)")
    p.add_argument("--seed", type=int, default=9000, help="first scene seed (held out from training)")
    p.add_argument(
        "--web", action="store_true", help="serve the live view during the demo and keep it open until Ctrl-C"
    )
    p.add_argument("--web-port", type=int, default=8765, help="port of the live view (8765)")
    p.add_argument(
        "--cluster",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="N",
        help="on a local Redis Cluster of N masters (3 or more; 3 when N is left out) with a replica each, "
        "one feed per master",
    )
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks: raw torch, engine, pipeline and the usual alternatives")
    p.add_argument("--quick", action="store_true", help="shorter runs (figures are noisier)")
    p.add_argument("--out", default="bench/results", help="folder for results.md and results.json")
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of every row (at least 3 to read a spread)"
    )
    p.set_defaults(handler=cmd_bench)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from demo.run import main

    return main(
        settings,
        scenes=args.scenes,
        size_px=args.size,
        seed=args.seed,
        web_port=args.web_port if args.web else None,
        cluster_masters=args.cluster,
        consumers=1 if args.cluster else 2,
    )


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from demo.bench import main

    return main(settings, quick=args.quick, out=args.out, rounds=args.rounds)
