"""PNG quick-looks of a scene with boxes drawn, written with rasterio's PNG driver (no GUI stack)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

Box = Sequence[float]
RED = (255, 40, 40)
GREEN = (40, 220, 90)


def stretch(band: np.ndarray, low_pct: float = 2.0, high_pct: float = 99.5) -> np.ndarray:
    """A uint8 rendering of one band between two percentiles (robust to bright targets)."""
    lo, hi = np.percentile(band, [low_pct, high_pct])
    scaled = (band.astype(np.float32) - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def draw_boxes(
    rgb: np.ndarray, boxes_px: Iterable[Box], colour: tuple[int, int, int], width: int = 2
) -> None:
    """Rectangles (x1, y1, x2, y2 in image pixels) drawn into a [3, H, W] uint8 array in place."""
    _, h, w = rgb.shape
    for x1, y1, x2, y2 in boxes_px:
        c1, r1 = max(0, int(x1) - width), max(0, int(y1) - width)
        c2, r2 = min(w, int(np.ceil(x2)) + width), min(h, int(np.ceil(y2)) + width)
        if c1 >= c2 or r1 >= r2:
            continue
        for ch, value in enumerate(colour):
            rgb[ch, r1 : r1 + width, c1:c2] = value
            rgb[ch, max(r1, r2 - width) : r2, c1:c2] = value
            rgb[ch, r1:r2, c1 : c1 + width] = value
            rgb[ch, r1:r2, max(c1, c2 - width) : c2] = value


def quicklook(
    image: np.ndarray,
    detections_px: Iterable[Box],
    truth_px: Iterable[Box],
    out: Path,
    max_side_px: int = 1024,
) -> Path:
    """Band 1 of `image` ([C, H, W]) in grey, truth boxes green, detections red, downsampled to fit."""
    import rasterio
    import rasterio.errors

    band = stretch(image[0])
    step = max(1, int(np.ceil(max(band.shape) / max_side_px)))
    rgb = np.repeat(band[np.newaxis, ::step, ::step], 3, axis=0).copy()
    draw_boxes(rgb, [tuple(v / step for v in b) for b in truth_px], GREEN, width=2)
    draw_boxes(rgb, [tuple(v / step for v in b) for b in detections_px], RED, width=1)
    _, h, w = rgb.shape
    with warnings.catch_warnings():
        # A quick-look is a picture, not a map: it has no geotransform on purpose.
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        dst = rasterio.open(out, "w", driver="PNG", width=w, height=h, count=3, dtype="uint8")
        with dst:
            dst.write(rgb)
    for sidecar in out.parent.glob(out.name + ".aux.xml"):
        sidecar.unlink()
    return out
