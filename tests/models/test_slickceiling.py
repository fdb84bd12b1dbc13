"""The slick ceiling: a maximum-likelihood fit of each slick the generator drew, and the truth
layers it is measured with (models.scenes.draw_scene_layers)."""

from __future__ import annotations

import numpy as np
import pytest

from models.scenes import (
    DN_PER_SIGMA0,
    SLICK_HALF_DAMPING,
    SceneConfig,
    SlickBlob,
    draw_scene_layers,
    draw_scene_with_mask,
    speckle,
)
from models.slickceiling import ceiling, fit_slick, local_background, main


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_the_layers_are_the_scene_and_its_truth() -> None:
    config = SceneConfig(width_px=1024, height_px=1024)
    layers = draw_scene_layers(4, config)
    image, objects, _land, mask = draw_scene_with_mask(4, config)
    assert (
        np.array_equal(layers.image, image)
        and layers.objects == objects
        and np.array_equal(layers.mask, mask)
    )
    assert len(layers.slicks) == 2
    # The truth's slicks are exactly the half-maximum contours of the recorded blobs, at sea.
    drawn = np.zeros(mask.shape, dtype=bool)
    for s in layers.slicks:
        d = s.damping()
        window = drawn[max(0, s.y0) : s.y0 + d.shape[0], max(0, s.x0) : s.x0 + d.shape[1]]
        region = (d >= SLICK_HALF_DAMPING * d.max())[max(0, -s.y0) :, max(0, -s.x0) :]
        window |= region[: window.shape[0], : window.shape[1]]
    assert np.array_equal(drawn & (mask != 1), mask == 2)
    # The image is the noise-free backscatter times unit-mean speckle.
    ratio = layers.image[0] / (layers.noise_free * DN_PER_SIGMA0)
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)


def test_a_fit_recovers_a_slick_from_speckled_pixels() -> None:
    slick = SlickBlob(0, 0, size_px=6.0, amplitude=0.6, aspect=4.0, angle_rad=0.7)
    damping = slick.damping()
    truth = damping >= 0.5 * damping.max()
    background = np.full(damping.shape, 0.1)
    clean = background * (1 - damping)
    assert _iou(fit_slick(clean, background, slick) >= 0.5 * damping.max(), truth) > 0.99
    rng = np.random.default_rng(0)
    noisy = clean * speckle(rng, damping.shape)
    started_wrong = SlickBlob(0, 0, size_px=8.0, amplitude=0.4, aspect=3.0, angle_rad=0.9)
    fit = fit_slick(noisy, background, started_wrong)
    assert fit.max() == pytest.approx(0.6, abs=0.08)
    assert _iou(fit >= 0.5 * fit.max(), truth) > 0.85
    # Pixels without a usable background (off the scene, land) are left out, not fitted as dark.
    holes = background.copy()
    holes[:, : damping.shape[1] // 3] = np.nan
    assert _iou(fit_slick(clean, holes, slick) >= 0.5 * damping.max(), truth) > 0.99


def test_the_local_background_is_the_mean_of_the_usable_pixels_around() -> None:
    field = np.full((64, 64), 0.2)
    usable = np.ones((64, 64), dtype=bool)
    usable[20:44, 20:44] = False  # a slick: its pixels are not background
    est = local_background(np.where(usable, field, 0.01), usable, 9)
    assert np.allclose(est, 0.2)  # the window grew where the slick left it too few pixels
    with pytest.raises(ValueError, match="odd"):
        local_background(field, usable, 8)


def test_the_background_is_what_limits_the_fit(capsys) -> None:
    known = ceiling([4], 1024, "known")
    local = ceiling([4], 1024, "local", 33)
    assert known["truth_pixels"] == local["truth_pixels"] > 1000
    assert known["slick_iou"] > 0.9 and local["slick_iou"] < known["slick_iou"]
    with pytest.raises(ValueError, match="background must be one of"):
        ceiling([4], 256, "median")
    assert main(["--scenes", "1", "--seed", "4", "--background", "known"]) == 0
    assert "slick IoU" in capsys.readouterr().out
