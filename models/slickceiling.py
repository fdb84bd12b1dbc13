"""How well the synthetic imagery lets a slick's outline be placed at all, against the half-maximum
truth (SEGMENTER_CARD.md, "How well can slicks be outlined"): with the sea under the slick known,
an optimistic ceiling for any segmenter.

For each slick the generator drew (:class:`models.scenes.SlickBlob`), its Gaussian damping (centre,
size, amplitude, aspect, angle) is fitted to the speckled pixels by maximum likelihood, and the
fit's own half-maximum contour is drawn. Speckle is Gamma with L looks around the mean
backscatter mu = background x (1 - damping), so the negative log-likelihood of a pixel of intensity
I is, up to constants, L (I / mu + log mu). The background is either

- ``known``: the noise-free backscatter without that slick, which no sensor gives: the limit that
  the slick's own shape and the speckle set;
- ``local``: the mean of the speckled pixels around the slick, the pixels any slick darkens and
  land left out, in a window of `window_px` that doubles where less than a fifth of it is usable:
  what an estimate from the image itself gives.

Both are optimistic: the fit is told which slicks exist, where they are, the family of their shape
(a Gaussian) and starts from the true parameters. A segmenter has to find all that out. So the
``known`` figure is an upper estimate of what a model can reach, not a bound proven for every
method; the ``local`` one is no bound at all (a model may estimate the sea better than a local
mean: the shipped segmenter scores 0.724 on the held-out scenes where this fit scores 0.668), only
a measure of how much an estimated background costs even an ideal fit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.scenes import (
    DN_PER_SIGMA0,
    SEG_CLASSES,
    SLICK_HALF_DAMPING,
    SPECKLE_LOOKS,
    SceneConfig,
    SceneLayers,
    SlickBlob,
    draw_scene_layers,
    paste,
)
from models.segeval import HELD_OUT_SEED_BASE, IouTally

BACKGROUNDS = ("known", "local")
SLICK = SEG_CLASSES.index("slick")
LAND = SEG_CLASSES.index("land")
# Pixels darkened by more than this fraction of the backscatter count as the slick's for the
# local background (they would bias it dark).
DARKENED = 0.02


def _box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum of `a` over the k x k window centred on each pixel (k odd), zero outside."""
    c = np.cumsum(np.cumsum(np.pad(a, ((k // 2 + 1, k // 2), (k // 2 + 1, k // 2))), 0), 1)
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def local_background(intensity: np.ndarray, usable: np.ndarray, window_px: int) -> np.ndarray:
    """The mean of the `usable` pixels of `intensity` in a window of `window_px` (odd) around each
    pixel; where fewer than a fifth of the window is usable, the window grows (2k + 1) until it is.
    Zero where no window up to the scene's size has enough."""
    if window_px < 1 or window_px % 2 == 0:
        raise ValueError(f"window_px must be odd and positive, got {window_px}")
    out = np.zeros(intensity.shape, dtype=np.float64)
    todo = np.ones(intensity.shape, dtype=bool)
    weight = usable.astype(np.float64)
    k = window_px
    while todo.any() and k <= 2 * max(intensity.shape) + 1:
        n = _box_sum(weight, k)
        mean = _box_sum(intensity * weight, k) / np.maximum(n, 1.0)
        ok = todo & (n >= 0.2 * k * k)
        out[ok] = mean[ok]
        todo &= ~ok
        k = 2 * k + 1
    return out


def fit_slick(
    intensity: np.ndarray, background: np.ndarray, slick: SlickBlob, looks: int = SPECKLE_LOOKS
) -> np.ndarray:
    """The maximum-likelihood Gaussian damping over the slick's patch (the shape of
    ``slick.damping()``), started from the slick's true parameters. `intensity` and `background`
    are that patch's pixels; pixels where either is not finite or the background is not positive
    (off the scene, land) are left out of the fit."""
    half = slick.damping().shape[0] // 2
    valid_np = np.isfinite(intensity) & np.isfinite(background) & (background > 0)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    valid = torch.from_numpy(valid_np)
    i_obs = torch.from_numpy(np.where(valid_np, intensity, 0.0).astype(np.float64))
    bg = torch.from_numpy(np.where(valid_np, background, 1.0).astype(np.float64))
    amp = min(max(slick.amplitude, 1e-3), 1 - 1e-3)
    theta = torch.tensor(
        [
            0.0,
            0.0,
            math.log(slick.size_px),
            math.log(amp / (1 - amp)),
            math.log(slick.aspect),
            slick.angle_rad,
        ],
        dtype=torch.float64,
        requires_grad=True,
    )

    def damping(t: torch.Tensor) -> torch.Tensor:
        # models.scenes.gaussian_blob's formula, in torch for its gradients, with the centre free
        # (dy, dx) and size, amplitude and aspect kept in range by their log and logit
        dy, dx, log_size, logit_amp, log_aspect, angle = t
        size, aspect = torch.exp(log_size), torch.exp(log_aspect)
        u = (xs - dx) * torch.cos(angle) + (ys - dy) * torch.sin(angle)
        v = -(xs - dx) * torch.sin(angle) + (ys - dy) * torch.cos(angle)
        return torch.sigmoid(logit_amp) * torch.exp(-0.5 * ((u / (size * aspect)) ** 2 + (v / size) ** 2))

    opt = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        mu = (bg * (1 - damping(theta))).clamp_min(1e-9)
        nll = looks * torch.where(valid, i_obs / mu + torch.log(mu), torch.zeros_like(mu)).sum()
        nll.backward()
        return nll

    if valid_np.any():
        opt.step(closure)
    with torch.no_grad():
        return damping(theta).numpy()


def _patch(array: np.ndarray, slick: SlickBlob, side: int, fill: float) -> np.ndarray:
    """The slick's patch of a scene array, `fill` where the patch leaves the scene."""
    out = np.full((side, side), fill, dtype=np.float64)
    h, w = array.shape
    cy0, cx0 = max(0, slick.y0), max(0, slick.x0)
    cy1, cx1 = min(h, slick.y0 + side), min(w, slick.x0 + side)
    if cy1 > cy0 and cx1 > cx0:
        out[cy0 - slick.y0 : cy1 - slick.y0, cx0 - slick.x0 : cx1 - slick.x0] = array[cy0:cy1, cx0:cx1]
    return out


def fitted_outlines(layers: SceneLayers, background: str, window_px: int = 33) -> np.ndarray:
    """[H, W] bool: the half-maximum contours of the scene's slicks as fitted, at sea."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    land = layers.mask == LAND
    intensity = layers.image[0].astype(np.float64) / DN_PER_SIGMA0
    estimate = None
    if background == "local":
        darkened = np.zeros(land.shape, dtype=bool)
        for s in layers.slicks:
            paste(darkened, s.y0, s.x0, s.damping() > DARKENED, "max")
        estimate = local_background(intensity, ~darkened & ~land, window_px)
    sea_intensity = np.where(land, np.nan, intensity)
    out = np.zeros(land.shape, dtype=bool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fits are small: more threads only spin (36 s against 0.2 s measured)
    try:
        for s in layers.slicks:
            damping = s.damping()
            side = damping.shape[0]
            if estimate is None:
                bg = _patch(layers.noise_free.astype(np.float64), s, side, np.nan) / np.maximum(
                    1.0 - damping, 1e-9
                )
            else:
                bg = _patch(estimate, s, side, np.nan)
            fit = fit_slick(_patch(sea_intensity, s, side, np.nan), bg, s)
            # drawn as the truth is drawn (models.scenes)
            paste(out, s.y0, s.x0, fit >= SLICK_HALF_DAMPING * float(fit.max()), "max")
    finally:
        torch.set_num_threads(threads)
    return out & ~land


def ceiling(seeds: Sequence[int], size_px: int, background: str, window_px: int = 33) -> dict[str, Any]:
    """The slick IoU of the fitted outlines against the truth, pooled over the scenes of `seeds`
    (size_px square, one band), with each scene's own figure."""
    t0 = time.monotonic()
    tally = IouTally(SEG_CLASSES, 0)
    scenes = []
    for seed in seeds:
        layers = draw_scene_layers(seed, SceneConfig(width_px=size_px, height_px=size_px))
        fitted = fitted_outlines(layers, background, window_px)
        predicted = np.where(layers.mask == LAND, LAND, np.where(fitted, SLICK, 0)).astype(np.uint8)
        tally.add(predicted, layers.mask, ())
        one = IouTally(SEG_CLASSES, 0)
        one.add(predicted, layers.mask, ())
        scenes.append({"seed": seed, "slicks": len(layers.slicks), **one.per_class()["slick"]})
    slick = tally.per_class()["slick"]
    return {
        "background": background,
        **({"window_px": window_px} if background == "local" else {}),
        "size_px": size_px,
        "slick_iou": slick["iou"],
        "truth_pixels": slick["truth_pixels"],
        "scenes": scenes,
        "seconds": round(time.monotonic() - t0, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.slickceiling",
        description="the slick IoU of a maximum-likelihood fit of each slick (an optimistic ceiling for segmenters)",
    )
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument(
        "--seed", type=int, default=HELD_OUT_SEED_BASE, help="first seed (default: the card's held-out 1)"
    )
    p.add_argument("--background", choices=BACKGROUNDS, default="local")
    p.add_argument("--window", type=int, default=33, help="local background window in pixels (odd)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = ceiling(range(args.seed, args.seed + args.scenes), args.size, args.background, args.window)
    if args.json:
        print(json.dumps(result))
    else:
        for s in result["scenes"]:
            print(f"seed {s['seed']}: {s['slicks']} slicks, {s['truth_pixels']} truth pixels, IoU {s['iou']}")
        print(f"slick IoU {result['slick_iou']} ({result['background']} background, {result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
