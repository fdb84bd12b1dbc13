"""Exact toy models, scenes with known bright spots, and a tiler for the consumer tests."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import redis

from groundwatch import frames, keys
from groundwatch.ai import Engine
from groundwatch.frames import Frame

UTM31N = "EPSG:32631"
# 10 m pixels; the scene's left edge at easting 500000 (the zone's central meridian, 3 deg E).
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
CLASSES = ["ship", "platform"]
LEVEL = 50000  # pixels at or above this are "objects"
HALF = 3  # a spot's box: [x - 3, y - 3, x + 4, y + 4] (pixel edges)


def spots_model(k: int = 8, poison_value: int = -1, hint: float | None = None) -> bytes:
    """TorchScript archive: every pixel >= LEVEL of band 0 is an object (up to k per tile).

    Score = value / 65535; class = value % 2 (60000: ship, 60001: platform). Rows sorted by
    score, padded with zero rows. When a pixel equals `poison_value` the model raises.
    """
    import torch
    from torch import Tensor

    class Spots(torch.nn.Module):
        def __init__(self, k: int, level: float, half: float, poison: float) -> None:
            super().__init__()
            self.k = k
            self.level = level
            self.margin = half
            self.poison = poison

        def forward(self, x: Tensor) -> Tensor:
            b = x.shape[0]
            w = x.shape[3]
            v = x[:, 0].to(torch.float32).reshape(b, -1)
            if self.poison >= 0 and bool((v == self.poison).any()):
                raise RuntimeError("poison pixel")
            vals, idx = torch.topk(v, self.k, dim=1)
            xs = (idx % w).to(torch.float32)
            ys = torch.div(idx, w, rounding_mode="floor").to(torch.float32)
            live = (vals >= self.level).to(torch.float32)
            score = vals / 65535.0
            cls = torch.remainder(vals, 2.0)
            out = torch.stack(
                [xs - self.margin, ys - self.margin, xs + self.margin + 1, ys + self.margin + 1, score, cls],
                dim=2,
            )
            return out * live.unsqueeze(2)

    buf = io.BytesIO()
    meta = {
        "contract": 1,
        "classes": CLASSES,
        "bands": 1,
        "dtype": "uint16",
        "tile_size": 64,
        "max_detections": k,
    }
    if hint is not None:
        meta["score_threshold_hint"] = hint
    torch.jit.save(
        torch.jit.script(Spots(k, float(LEVEL), float(HALF), float(poison_value))),
        buf,
        _extra_files={"groundwatch.json": json.dumps(meta)},
    )
    return buf.getvalue()


_MODELS: dict[tuple[int, int, float | None], bytes] = {}


def install_model(
    client: redis.Redis,
    feed: str,
    version: int = 1,
    *,
    name: str = "m",
    batch: int | None = 16,
    poison_value: int = -1,
    activate: bool = True,
    hint: float | None = None,
) -> str:
    """Store the spots model as `name:version` of `feed` (and make it active)."""
    key = (8, poison_value, hint)
    if key not in _MODELS:
        _MODELS[key] = spots_model(8, poison_value, hint)
    Engine(client).model_store(keys.model(feed, name, version), _MODELS[key], tag=str(version), batch=batch)
    if activate:
        client.set(keys.active_model(feed), f"{name}:{version}")
    return f"{name}:{version}"


def scene_array(height: int, width: int, spots: dict[tuple[int, int], int], seed: int = 0) -> np.ndarray:
    """(1, H, W) uint16: low noise, and `spots` {(row, col): value} single bright pixels."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(50, 200, size=(1, height, width), dtype=np.uint16)
    for (row, col), value in spots.items():
        arr[0, row, col] = value
    return arr


def windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles as ingest makes them: step tile - overlap, last row/column shifted back to the edge."""

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        out = list(range(0, n - tile, tile - overlap))
        if out[-1] != n - tile:
            out.append(n - tile)
        return out

    return [(c, r, min(tile, width), min(tile, height)) for r in starts(height) for c in starts(width)]


@dataclass
class Published:
    frames: list[Frame]
    ids: list[str]


def scene_frames(
    scene: str,
    arr: np.ndarray,
    *,
    tile: int = 64,
    overlap: int = 16,
    transform: tuple[float, ...] = TRANSFORM,
    crs: str = UTM31N,
    published_ms: int = 0,
) -> list[Frame]:
    _c, h, w = arr.shape
    wins = windows(h, w, tile, overlap)
    out = []
    for i, (c, r, ww, hh) in enumerate(wins):
        data = np.zeros((arr.shape[0], tile, tile), dtype=arr.dtype)
        data[:, :hh, :ww] = arr[:, r : r + hh, c : c + ww]
        out.append(
            Frame.from_array(
                data,
                scene=scene,
                tile=i,
                tiles=len(wins),
                window=(c, r, ww, hh),
                transform=transform,
                crs=crs,
                acquired=datetime(2026, 11, 25, 10, 31, 7, tzinfo=UTC),
                published_ms=published_ms,
            )
        )
    return out


def publish(client: redis.Redis, feed: str, items: list[Frame]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for f in items:
        pipe.xadd(keys.frames(feed), frames.encode(f))
    return [i.decode() for i in pipe.execute()]


def detections(client: redis.Redis, feed: str) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in client.xrange(keys.detections(feed))]
