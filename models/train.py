"""Train the detector on synthetic tiles on CPU and export it as a self-describing TorchScript file.

Everything is seeded: the training tiles are scenes drawn with seeds ``TRAIN_SEED_BASE + i``
(held-out evaluation uses small seeds, see models.evaluate), and torch's generator is seeded too.
Targets follow CenterNet: a Gaussian per object on its class heatmap at stride 4 (peak 1 at the
centre cell), log box size and sub-cell offset regressed at the centre cell only.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.detector import STRIDE
from models.scenes import CLASSES, SceneConfig, draw_scene

log = logging.getLogger(__name__)

TRAIN_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class TrainConfig:
    tiles: int = 2000
    tile_px: int = 192
    bands: int = 1
    steps: int = 2000
    batch_size: int = 16
    lr: float = 4e-3
    weight_decay: float = 1e-4
    width: int = 32
    max_detections: int = 100
    seed: int = 0
    threads: int = 2
    max_ships: int = 5
    max_platforms: int = 3


@dataclass
class Sample:
    image: np.ndarray  # [C, H, W] uint16
    boxes_px: np.ndarray  # [N, 4] float32
    class_ids: np.ndarray  # [N] int64


def make_tiles(config: TrainConfig) -> list[Sample]:
    """The training tiles: small scenes with a few objects each, seeds TRAIN_SEED_BASE + i."""
    out = []
    for i in range(config.tiles):
        seed = TRAIN_SEED_BASE + i
        rng = np.random.default_rng([seed, 1])
        scene_config = SceneConfig(
            width_px=config.tile_px,
            height_px=config.tile_px,
            bands=config.bands,
            n_ships=int(rng.integers(0, config.max_ships + 1)),
            n_platforms=int(rng.integers(0, config.max_platforms + 1)),
        )
        image, objects, _ = draw_scene(seed, scene_config)
        boxes = np.array([o.box_px for o in objects], dtype=np.float32).reshape(-1, 4)
        ids = np.array([o.class_id for o in objects], dtype=np.int64)
        out.append(Sample(image, boxes, ids))
    return out


def augment(sample: Sample, rng: np.random.Generator) -> Sample:
    """Random horizontal/vertical flips and transposition (the 8 symmetries of the square)."""
    img, boxes = sample.image, sample.boxes_px.copy()
    _, h, w = img.shape
    if rng.random() < 0.5:
        img = img[:, :, ::-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        img = img[:, ::-1, :]
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    if rng.random() < 0.5 and h == w:
        img = img.transpose(0, 2, 1)
        boxes = boxes[:, [1, 0, 3, 2]]
    return Sample(np.ascontiguousarray(img), boxes, sample.class_ids)


def build_targets(
    boxes_px: np.ndarray, class_ids: np.ndarray, height_px: int, width_px: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet targets at stride 4: heat [N, h, w], log size [2, h, w], offset [2, h, w], mask [h, w]."""
    h, w = height_px // STRIDE, width_px // STRIDE
    heat = np.zeros((num_classes, h, w), dtype=np.float32)
    size = np.zeros((2, h, w), dtype=np.float32)
    offset = np.zeros((2, h, w), dtype=np.float32)
    mask = np.zeros((h, w), dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for (x1, y1, x2, y2), c in zip(boxes_px, class_ids, strict=True):
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sx = max(0.8, 0.16 * (x2 - x1) / STRIDE)
        sy = max(0.8, 0.16 * (y2 - y1) / STRIDE)
        g = np.exp(-0.5 * (((xs - ix) / sx) ** 2 + ((ys - iy) / sy) ** 2))
        heat[c] = np.maximum(heat[c], g)
        heat[c, iy, ix] = 1.0
        size[:, iy, ix] = (math.log(max(x2 - x1, 1.0)), math.log(max(y2 - y1, 1.0)))
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1.0
    return heat, size, offset, mask


def focal_loss(logits: Any, target: Any) -> Any:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    import torch

    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    n = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def log_dn_moments(images: list[np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation of log(1 + DN) over (a subsample of) the first 200 images:
    the input normalisation a network built here bakes into its first layer."""
    values = np.concatenate([np.log1p(img[:, ::4, ::4].astype(np.float32)).ravel() for img in images[:200]])
    return float(values.mean()), float(values.std())


def log_dn_stats(tiles: list[Sample]) -> tuple[float, float]:
    return log_dn_moments([t.image for t in tiles[:200]])


def train(config: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """Train a CenterNet; return the trained (eval-mode) module and a summary of the run."""
    import torch

    from models.detector import CenterNet, count_parameters

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.monotonic()
    tiles = make_tiles(config)
    t_data = time.monotonic() - t0
    mean, std = log_dn_stats(tiles)
    log.info(
        "generated %d tiles of %d px in %.1f s (log DN mean %.2f std %.2f)",
        len(tiles),
        config.tile_px,
        t_data,
        mean,
        std,
    )
    model = CenterNet(len(CLASSES), config.bands, config.max_detections, config.width, mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    model.train()
    t1 = time.monotonic()
    running = 0.0
    for step in range(config.steps):
        idx = rng.integers(0, len(tiles), size=config.batch_size)
        batch = [augment(tiles[i], rng) for i in idx]
        targets = [
            build_targets(s.boxes_px, s.class_ids, config.tile_px, config.tile_px, len(CLASSES))
            for s in batch
        ]
        x = torch.from_numpy(np.stack([s.image.astype(np.float32) for s in batch]))
        heat_t, size_t, off_t, mask_t = (torch.from_numpy(np.stack(t)) for t in zip(*targets, strict=True))
        heat, size, off = model.heads(x)
        m = mask_t.unsqueeze(1)
        n = mask_t.sum().clamp(min=1.0)
        l_heat = focal_loss(heat, heat_t)
        l_size = (torch.abs(size - size_t) * m).sum() / n
        l_off = (torch.abs(off - off_t) * m).sum() / n
        loss = l_heat + l_size + l_off
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == config.steps - 1:
            log.info(
                "step %d/%d loss %.3f (heat %.3f size %.3f offset %.3f) %.0f s",
                step,
                config.steps,
                running,
                l_heat.item(),
                l_size.item(),
                l_off.item(),
                time.monotonic() - t1,
            )
    model.eval()
    summary = {
        "config": asdict(config),
        "parameters": count_parameters(model),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(time.monotonic() - t1, 1),
        "final_loss": round(running, 4),
        "log_dn_mean": round(mean, 4),
        "log_dn_std": round(std, 4),
    }
    return model, summary


def metadata_for(
    config: TrainConfig, summary: dict[str, Any], score_threshold_hint: float = 0.5
) -> dict[str, Any]:
    from models.archive import CONTRACT_VERSION

    return {
        "contract": CONTRACT_VERSION,
        "classes": list(CLASSES),
        "bands": config.bands,
        "dtype": "uint16",
        "tile_size": 512,
        "stride": STRIDE,
        "max_detections": config.max_detections,
        "score_threshold_hint": score_threshold_hint,
        "trained_on": (
            f"synthetic SAR-like scenes (models.scenes), {config.tiles} tiles of {config.tile_px} px, "
            f"seeds {TRAIN_SEED_BASE}..{TRAIN_SEED_BASE + config.tiles - 1}, {config.steps} steps"
        ),
        "training": {k: summary[k] for k in ("parameters", "train_seconds", "final_loss")},
    }


def train_and_export(config: TrainConfig, out: Path) -> dict[str, Any]:
    """Train, script, save with metadata; return the summary (with the path and metadata)."""
    import torch

    from models.archive import save_model

    model, summary = train(config)
    scripted = torch.jit.script(model)
    meta = metadata_for(config, summary)
    save_model(scripted, out, meta)
    summary["path"] = str(out)
    summary["metadata"] = meta
    return summary
