"""What an adapter needs to know to wrap a model (`groundwatch load --adapter ...`), and its flags.

No torch here, so the CLI parses these without loading it; the wrappers are loaders/adapters.py.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from groundwatch import modelmeta
from loaders import LoaderError

ADAPTERS = ("contract1", "torchvision", "yolo")
DEFAULT_ADAPTER = "contract1"


@dataclass(frozen=True)
class AdapterSpec:
    """How to wrap a model: what the sensor delivers, what the model wants, what it returns.

    `band_map[i]` is the sensor band (0-based) fed to the model's input channel i (repeat one
    band for an RGB model on single-band SAR); the model sees `DN * scale[i] + offset[i]` as
    float32 (one value applies to every channel)."""

    adapter: str
    classes: tuple[str, ...]
    bands: int = 1
    dtype: str = "uint16"
    tile_size: int = 512
    band_map: tuple[int, ...] | None = None  # default: sensor bands 0..bands-1 in order
    scale: tuple[float, ...] = (1.0,)
    offset: tuple[float, ...] = (0.0,)
    max_detections: int = 100
    score_threshold_hint: float | None = None
    label_offset: int = 1  # torchvision: labels start at 1 (0 is background)
    iou_threshold: float = 0.5  # yolo: per-class NMS
    min_score: float = 0.001  # yolo: rows below are dropped before NMS
    pre_nms_top: int = 1000  # yolo: at most this many rows (by score) enter NMS
    scores_are_logits: bool = False  # yolo: apply a sigmoid to the class scores

    def channels(self) -> tuple[int, ...]:
        return self.band_map if self.band_map is not None else tuple(range(self.bands))

    def check(self) -> None:
        if self.adapter not in ADAPTERS:
            raise LoaderError(f"unknown adapter {self.adapter!r}; choose one of {', '.join(ADAPTERS)}")
        if not self.classes:
            raise LoaderError("an adapted model needs its class names: --classes ship,platform")
        bad = [b for b in self.channels() if not 0 <= b < self.bands]
        if bad:
            raise LoaderError(
                f"--band-map names sensor bands {bad}, but the sensor has {self.bands} (0..{self.bands - 1})"
            )
        for name, values in (("scale", self.scale), ("offset", self.offset)):
            if len(values) not in (1, len(self.channels())):
                raise LoaderError(
                    f"--{name} takes one value or one per model input channel ({len(self.channels())}), "
                    f"got {len(values)}"
                )
        if self.max_detections < 1 or self.pre_nms_top < 1:
            raise LoaderError("--max-detections and the pre-NMS limit must be at least 1")
        if not 0 <= self.min_score <= 1:
            raise LoaderError(f"--min-score must be in [0, 1], got {self.min_score}")
        if not 0 <= self.iou_threshold <= 1:
            raise LoaderError(f"--iou must be in [0, 1], got {self.iou_threshold}")

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "contract": modelmeta.CONTRACT_VERSION,
            "classes": list(self.classes),
            "bands": self.bands,
            "dtype": self.dtype,
            "tile_size": self.tile_size,
            "max_detections": self.max_detections,
        }
        if self.score_threshold_hint is not None:
            meta["score_threshold_hint"] = self.score_threshold_hint
        return meta


def _numbers(text: str | None, kind: type, flag: str) -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise LoaderError(f"{flag} takes comma-separated numbers, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `groundwatch load` flags of the adapters (docs/models.md, "Adapters")."""
    g = p.add_argument_group("adapters (a detector that is not a groundwatch model yet)")
    g.add_argument(
        "--adapter",
        choices=ADAPTERS,
        default=DEFAULT_ADAPTER,
        help="wrap FILE into a contract-1 model: torchvision (list of images in, list of dicts out), "
        "yolo (raw [B, N, 4+K] or [B, 4+K, N] head), contract1 (FILE already is one; the default)",
    )
    g.add_argument("--classes", default=None, help="class names in the model's order, e.g. ship,platform")
    g.add_argument("--bands", type=int, default=1, help="bands of the sensor's tiles (default 1)")
    g.add_argument(
        "--dtype", default="uint16", choices=modelmeta.DTYPES, help="the tiles' dtype (default uint16)"
    )
    # dest tile_size is the Settings field: the tile size the feed is cut to (GROUNDWATCH_TILE_SIZE).
    g.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="tile edge in pixels (default: the tile_size setting, 512)",
    )
    g.add_argument(
        "--band-map",
        default=None,
        help="sensor band for each model input channel, e.g. 0,0,0 (default: all in order)",
    )
    g.add_argument(
        "--scale", default="1", help="the model sees DN * scale + offset; one value or one per channel"
    )
    g.add_argument("--offset", default="0", help="see --scale (default 0)")
    g.add_argument("--max-detections", type=int, default=100, help="K of the [B, K, 6] output (default 100)")
    g.add_argument("--score-hint", type=float, default=None, help="score_threshold_hint for the consumers")
    g.add_argument(
        "--label-offset",
        type=int,
        default=1,
        help="torchvision: the label of the first class (default 1; 0 is background)",
    )
    g.add_argument(
        "--iou", type=float, default=0.5, help="yolo: IoU above which NMS drops a box (default 0.5)"
    )
    g.add_argument(
        "--min-score",
        type=float,
        default=0.001,
        help="yolo: rows scoring below are dropped before NMS (default 0.001)",
    )
    g.add_argument(
        "--pre-nms-top",
        type=int,
        default=1000,
        help="yolo: at most this many rows, by score, enter NMS (default 1000)",
    )
    g.add_argument(
        "--logits", action="store_true", help="yolo: the head's class scores are logits (sigmoid them)"
    )


def from_args(args: argparse.Namespace, tile_size: int) -> AdapterSpec | None:
    """The spec the flags describe (`tile_size` unless --tile-size); None for contract1."""
    if args.adapter == DEFAULT_ADAPTER:
        given = [
            flag for flag, value in (("--classes", args.classes), ("--band-map", args.band_map)) if value
        ]
        if given:
            raise LoaderError(
                f"{' and '.join(given)} describe a model to adapt; add --adapter torchvision or --adapter "
                "yolo (a contract-1 file declares its classes and bands in its groundwatch.json)"
            )
        return None
    classes = tuple(c.strip() for c in (args.classes or "").split(",") if c.strip())
    band_map = _numbers(args.band_map, int, "--band-map")
    spec = AdapterSpec(
        adapter=args.adapter,
        classes=classes,
        bands=args.bands,
        dtype=args.dtype,
        tile_size=args.tile_size or tile_size,
        band_map=band_map,
        scale=_numbers(args.scale, float, "--scale") or (1.0,),
        offset=_numbers(args.offset, float, "--offset") or (0.0,),
        max_detections=args.max_detections,
        score_threshold_hint=args.score_hint,
        label_offset=args.label_offset,
        iou_threshold=args.iou,
        min_score=args.min_score,
        pre_nms_top=args.pre_nms_top,
        scores_are_logits=args.logits,
    )
    spec.check()
    return spec
