"""A small segmentation network (U-Net shaped) for contract 2, its training and its export.

TorchScript contract 2 (docs/models.md): ``forward(x: Tensor[B, C, H, W]) -> Tensor[B, K, H, W]``,
per-pixel class probabilities (softmax over K inside the model), K = the metadata's classes
(``models.scenes.SEG_CLASSES``: sea, land, slick; class 0 is the background). The input is raw
digital numbers like the detector's (log1p, then a fixed affine, inside the model); H and W must be
multiples of :data:`STRIDE` (a stride-2 stem and three 2x poolings). The network works at half
resolution and its logits are upsampled bilinearly to the tile's pixels: on a CPU shared by many
jobs that is what keeps training within minutes, and the masks' boundaries are smooth anyway.

Trained on tiles of the synthetic scenes' segmentation truth (``draw_scene_with_mask``), seeds
``TRAIN_SEED_BASE + i`` (neither the detector's 1,000,000+ nor the held-out 1..), everything seeded;
then the offset of the slick logit is chosen on calibration scenes ``CALIBRATION_SEED_BASE + i``
(:func:`calibrate`) and kept in the model (``class_bias``, added before the softmax).
"""

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.scenes import SEG_CLASSES, SceneConfig, draw_scene_with_mask
from models.train import log_dn_moments

log = logging.getLogger(__name__)

STRIDE = 16
SMOOTHING_PX = (5, 11, 21)  # windows of the local means the network is given (odd: centred)
CONTRACT = 2
TRAIN_SEED_BASE = 2_000_000
CALIBRATION_SEED_BASE = 3_000_000  # scenes that choose the slick logit offset (neither training nor held out)
MIN_REGION_PX = {"land": 500}  # published in the metadata (docs/models.md, contract 2)
SHIPPED_SEGMENTER = Path(__file__).resolve().parent / "artifacts" / "segmenter.pt"


def _conv(c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """A stride-2 stem, an encoder at 1/2, 1/4, 1/8, a dilated bottleneck at 1/16, a decoder with
    skips back to 1/2, logits upsampled to the tile."""

    log_dn_mean: Tensor
    log_dn_std: Tensor
    class_bias: Tensor
    smoothing: list[int]

    def __init__(
        self,
        num_classes: int = len(SEG_CLASSES),
        bands: int = 1,
        width: int = 8,
        log_dn_mean: float = 5.0,
        log_dn_std: float = 1.5,
        smoothing: tuple[int, ...] = SMOOTHING_PX,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bands = bands
        self.stride = STRIDE
        self.smoothing = list(smoothing)
        self.register_buffer("log_dn_mean", torch.tensor(float(log_dn_mean)))
        self.register_buffer("log_dn_std", torch.tensor(float(log_dn_std)))
        # Added to the logits when serving (zero in training): the slick class's cross-entropy
        # weight makes the trained network over-claim slicks, calibrate() takes that back.
        self.register_buffer("class_bias", torch.zeros(num_classes))
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(bands * (1 + len(self.smoothing)), w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        )
        self.enc1 = _conv(w, w)
        self.enc2 = nn.Sequential(_conv(w, 2 * w), _conv(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_conv(2 * w, 4 * w), _conv(4 * w, 4 * w))
        self.mid = nn.Sequential(_conv(4 * w, 4 * w, dilation=2), _conv(4 * w, 4 * w, dilation=4))
        self.dec3 = _conv(8 * w, 4 * w)
        self.dec2 = _conv(6 * w, 2 * w)
        self.dec1 = _conv(3 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits [B, K, H, W] (training uses these; serving takes their softmax)."""
        if x.dim() != 4 or x.shape[1] != self.bands:
            raise ValueError(f"expected [B, {self.bands}, H, W], got {list(x.shape)}")
        if x.shape[2] % self.stride != 0 or x.shape[3] % self.stride != 0:
            raise ValueError(f"H and W must be multiples of {self.stride}, got {x.shape[2]} x {x.shape[3]}")
        x = (torch.log1p(x.to(torch.float32).clamp(min=0.0)) - self.log_dn_mean) / self.log_dn_std
        # Speckle averages out: local means of log DN over a few window sizes are what tells land,
        # sea and slick apart, so the network gets them instead of having to learn them.
        feats = [x]
        for k in self.smoothing:
            feats.append(F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False))
        e1 = self.enc1(self.stem(torch.cat(feats, 1)))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), e3], 1))
        d2 = self.dec2(torch.cat([F.interpolate(d3, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return F.interpolate(
            self.head(d1), size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.logits(x) + self.class_bias.view(1, -1, 1, 1), dim=1)


@dataclass(frozen=True)
class SegTrainConfig:
    tiles: int = 300  # scenes of scene_px drawn; each step crops tile_px windows out of them
    scene_px: int = 384
    tile_px: int = 128
    bands: int = 1
    steps: int = 1500
    batch_size: int = 8
    lr: float = 6e-3
    weight_decay: float = 1e-4
    width: int = 12  # 8 with the same weights and crops: slick IoU 0.57; 12: 0.66 (SEGMENTER_CARD.md)
    seed: int = 0
    slick_crops: float = 0.6  # share of training crops centred on a slick pixel (slicks: 0.1 % of a scene)
    # cross-entropy: sea, land, slick. A heavy slick weight teaches the network the faint slicks
    # (slick IoU, calibrated: 2 -> 0.59, 8 -> 0.68, 24 -> 0.71, 64 -> 0.66 on the calibration
    # scenes); the over-claiming it causes is taken back by calibrate().
    class_weights: tuple[float, float, float] = (1.0, 1.0, 24.0)
    threads: int = 1  # one thread: on a shared CPU two spin against other jobs (10x slower measured)
    smoothing: tuple[int, ...] = SMOOTHING_PX  # windows of the input's local means
    calib_scenes: int = 32  # scenes (seeds CALIBRATION_SEED_BASE + i) that choose the slick offset
    calib_px: int = 1024


def make_tiles(config: SegTrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image [C, S, S] uint16, mask [S, S] uint8) of scenes of `scene_px` with seeds
    TRAIN_SEED_BASE + i; land in every other one so both classes are well represented.

    Scenes larger than the training crops, because the generator's densities and contrasts
    depend on the scene's size (a rain cell or a coast fills a small scene): a model trained on
    128-pixel scenes reached a land IoU of 0.04 on 1024-pixel ones."""
    out = []
    for i in range(config.tiles):
        scene = SceneConfig(
            width_px=config.scene_px,
            height_px=config.scene_px,
            bands=config.bands,
            n_ships=i % 3,
            n_platforms=i % 2,
            land=i % 2 == 0,
        )
        image, _objects, _land, mask = draw_scene_with_mask(TRAIN_SEED_BASE + i, scene)
        out.append((image, mask))
    return out


def _augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop_px: int, slick_crops: float
) -> tuple[np.ndarray, np.ndarray]:
    """A random `crop_px` window, flipped and transposed at random (the 8 symmetries)."""
    _c, h, w = image.shape
    y0, x0 = int(rng.integers(0, h - crop_px + 1)), int(rng.integers(0, w - crop_px + 1))
    if rng.random() < slick_crops:
        ys, xs = np.nonzero(mask == 2)
        if len(ys):
            j = int(rng.integers(0, len(ys)))
            y0 = min(max(int(ys[j]) - crop_px // 2, 0), h - crop_px)
            x0 = min(max(int(xs[j]) - crop_px // 2, 0), w - crop_px)
    image, mask = image[:, y0 : y0 + crop_px, x0 : x0 + crop_px], mask[y0 : y0 + crop_px, x0 : x0 + crop_px]
    if rng.random() < 0.5:
        image, mask = image[:, :, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[:, ::-1, :], mask[::-1, :]
    if rng.random() < 0.5:
        image, mask = image.transpose(0, 2, 1), mask.T
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def soft_dice(logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """1 - mean Dice over the classes present in the batch (IoU is what the card reports)."""
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * onehot).sum((0, 2, 3))
    total = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - dice[present].mean()


def train(config: SegTrainConfig) -> tuple[TinyUNet, dict[str, Any]]:
    """Train the network; return it in eval mode and a summary of the run."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.monotonic()
    tiles = make_tiles(config)
    t_data = time.monotonic() - t0
    mean, std = log_dn_moments([img for img, _ in tiles[:200]])
    model = TinyUNet(len(SEG_CLASSES), config.bands, config.width, mean, std, tuple(config.smoothing))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    weights = torch.tensor(config.class_weights, dtype=torch.float32)
    model.train()
    t1 = time.monotonic()
    running = 0.0
    for step in range(config.steps):
        idx = rng.integers(0, len(tiles), size=config.batch_size)
        pairs = [_augment(tiles[i][0], tiles[i][1], rng, config.tile_px, config.slick_crops) for i in idx]
        x = torch.from_numpy(np.stack([p[0].astype(np.float32) for p in pairs]))
        y = torch.from_numpy(np.stack([p[1].astype(np.int64) for p in pairs]))
        logits = model.logits(x)
        loss = F.cross_entropy(logits, y, weight=weights) + soft_dice(logits, y, len(SEG_CLASSES))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == config.steps - 1:
            log.info("step %d/%d loss %.3f %.0f s", step, config.steps, running, time.monotonic() - t1)
    model.eval()
    summary = {
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(time.monotonic() - t1, 1),
        "final_loss": round(running, 4),
        "log_dn_mean": round(mean, 4),
        "log_dn_std": round(std, 4),
    }
    return model, summary


CALIBRATION_OFFSETS = tuple(round(0.25 * i, 2) for i in range(-4, 25))  # -1 .. 6, subtracted from slick


def calibrate(model: TinyUNet, config: SegTrainConfig) -> dict[str, Any]:
    """Choose the offset subtracted from the slick logit that maximises the slick IoU of the
    argmax on calibration scenes (seeds CALIBRATION_SEED_BASE + i, neither training nor held
    out), and set it in ``model.class_bias``. The slick class's cross-entropy weight shifts the
    trained network's decision towards slicks (slicks came out wider than their truth)."""
    slick = SEG_CLASSES.index("slick")
    inter = np.zeros(len(CALIBRATION_OFFSETS), dtype=np.int64)
    union = np.zeros(len(CALIBRATION_OFFSETS), dtype=np.int64)
    scene = SceneConfig(width_px=config.calib_px, height_px=config.calib_px, bands=config.bands)
    model.eval()
    for i in range(config.calib_scenes):
        image, _objects, _land, mask = draw_scene_with_mask(CALIBRATION_SEED_BASE + i, scene)
        with torch.no_grad():
            logits = model.logits(torch.from_numpy(image[None].astype(np.float32)))[0]
        truth = torch.from_numpy(mask == slick)
        for j, offset in enumerate(CALIBRATION_OFFSETS):
            shifted = logits.clone()
            shifted[slick] -= offset
            pred = shifted.argmax(0) == slick
            inter[j] += int((pred & truth).sum())
            union[j] += int((pred | truth).sum())
    iou = [float(a / b) if b else 0.0 for a, b in zip(inter, union, strict=True)]
    best = int(np.argmax(iou))
    model.class_bias.zero_()
    model.class_bias[slick] = -CALIBRATION_OFFSETS[best]
    return {
        "slick_offset": CALIBRATION_OFFSETS[best],
        "slick_iou_by_offset": {str(o): round(v, 4) for o, v in zip(CALIBRATION_OFFSETS, iou, strict=True)},
    }


def metadata_for(config: SegTrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "contract": CONTRACT,
        "classes": list(SEG_CLASSES),
        "background": 0,
        "output": "scores",
        "bands": config.bands,
        "dtype": "uint16",
        "tile_size": 512,
        "stride": STRIDE,
        # Land specks on bright sea (rain cells) are 1-92 px on the held-out scenes, a coast
        # hundreds of thousands: 500 drops the first and is far below the second. Slicks have no
        # minimum: they are what a feed looks for (SEGMENTER_CARD.md).
        "min_region_px": dict(MIN_REGION_PX),
        "trained_on": (
            f"synthetic SAR-like scenes' segmentation truth (models.scenes.draw_scene_with_mask), "
            f"{config.tiles} scenes of {config.scene_px} px, seeds {TRAIN_SEED_BASE}.."
            f"{TRAIN_SEED_BASE + config.tiles - 1}, random {config.tile_px}-px crops, {config.steps} steps"
        ),
        "training": {
            **{k: summary[k] for k in ("parameters", "train_seconds", "final_loss")},
            **(
                {"slick_logit_offset": summary["calibration"]["slick_offset"]}
                if "calibration" in summary
                else {}
            ),
        },
    }


def train_and_export(config: SegTrainConfig, out: Path) -> dict[str, Any]:
    """Train, script and save with its metadata; return the summary (with path and metadata)."""
    from models.archive import save_model

    model, summary = train(config)
    t0 = time.monotonic()
    summary["calibration"] = calibrate(model, config)
    summary["calibration_seconds"] = round(time.monotonic() - t0, 1)
    log.info("calibration %s", summary["calibration"])
    torch.save(model.state_dict(), out.with_suffix(".state.pt"))  # kept if scripting fails
    meta = metadata_for(config, summary)
    save_model(torch.jit.script(model), out, meta)
    summary["path"] = str(out)
    summary["metadata"] = meta
    return summary
