"""Evaluate a detector as the service serves it: AP@0.5 per class on held-out synthetic scenes.

The scored detections go through the service's own functions, from the core's
:mod:`groundwatch.geometry`: the tile grid and nodata padding ingest publishes
(:func:`~groundwatch.geometry.tiles_of`), the consumers' decoding of each tile's rows and their
placement in the scene (:func:`~groundwatch.geometry.decode_rows`,
:func:`~groundwatch.geometry.place`), the consumers' overlap merge (cluster merge at IoU 0.45 /
containment 0.7, :func:`~groundwatch.geometry.merge_rows`) and the one matcher
(:func:`~groundwatch.geometry.match`). What runs the model is a :data:`TileRunner`: in-process
torch (:func:`in_process`), or the engine exactly as the consumers call it, one AI.DAGEXECUTE per
tile (``models.engine_eval.engine_runner``). ``groundwatch evaluate --feed`` scores the scene
results of a running stack instead (:func:`evaluate_feed`).

Each tile runs once. Its rows are decoded twice: at ``min_score`` for AP (AP needs the low-score
tail), and at the served threshold for the precision/recall columns (what the consumers
publish). AP is VOC-style all-point interpolated average precision; a detection is a true
positive when the matcher pairs it with a truth box of its class at IoU >= 0.5.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from groundwatch import geometry
from groundwatch.frames import PixelWindow
from groundwatch.settings import DEFAULT_SCORE_THRESHOLD
from models.errors import ModelsError
from models.scenes import CLASSES, Scene, SceneConfig, generate_scene

HELD_OUT_SEED_BASE = 1  # training uses seeds from models.train.TRAIN_SEED_BASE (1,000,000) up

# (C, H, W) tiles of the scene's dtype -> one contract-1 output ([K, 6] or [1, K, 6]) per tile
TileRunner = Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]]


@dataclass(frozen=True)
class EvalConfig:
    scenes: int = 4
    size_px: int = 2048
    bands: int = 1
    seed_base: int = HELD_OUT_SEED_BASE
    tile_px: int = 512
    overlap_px: int = 64
    batch_size: int = 8  # tiles per runner call
    iou_threshold: float = geometry.MATCH_IOU
    min_score: float = 0.05  # the rows AP sees
    score_threshold: float = DEFAULT_SCORE_THRESHOLD  # what the consumers publish: the P/R columns


def in_process(module: Callable[[Any], Any]) -> TileRunner:
    """A runner for a TorchScript module (or any callable on a float32 [B, C, H, W] tensor)."""
    import torch

    def run(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack(tiles).astype(np.float32))
        with torch.no_grad():
            out = module(batch)
        arr = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        return list(arr)

    return run


@dataclass(frozen=True)
class TileOutput:
    window: PixelWindow
    tile_h: int
    tile_w: int
    output: np.ndarray


def run_scene(
    run: TileRunner, image: np.ndarray, tile_px: int, overlap_px: int, nodata: float | None, batch_size: int
) -> list[TileOutput]:
    """The model's output for every tile ingest would publish of a (C, H, W) scene."""
    tiles, _skipped = geometry.tiles_of(image, tile_px, overlap_px, nodata)
    out: list[TileOutput] = []
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        outputs = run([t for _, t in chunk])
        for (w, t), o in zip(chunk, outputs, strict=True):
            out.append(TileOutput(w, int(t.shape[1]), int(t.shape[2]), np.asarray(o)))
    return out


def served_detections(outputs: Sequence[TileOutput], threshold: float) -> np.ndarray:
    """What the consumers make of the tiles' outputs: decode at `threshold`, place each tile's rows
    in the scene, merge the overlaps. [M, 6] rows x1, y1, x2, y2 (scene pixels), score, class."""
    rows, cut, tiles = [], [], []
    for index, t in enumerate(outputs):
        placed = geometry.place(geometry.decode_rows(t.output, threshold), t.window, t.tile_h, t.tile_w)
        rows.append(np.column_stack([placed.scene_boxes, placed.rows[:, 4:6]]))
        cut.append(placed.cut)
        tiles.append(np.full(len(placed.rows), index))
    if not rows:
        return np.zeros((0, 6))
    return geometry.merge_rows(np.concatenate(rows), np.concatenate(cut), np.concatenate(tiles))


def detect_scene(
    run: TileRunner,
    image: np.ndarray,
    tile_px: int = 512,
    overlap_px: int = 64,
    *,
    threshold: float = DEFAULT_SCORE_THRESHOLD,
    nodata: float | None = None,
    batch_size: int = 8,
) -> tuple[np.ndarray, int]:
    """A (C, H, W) scene through the served path; (merged detections [M, 6], tiles run)."""
    outputs = run_scene(run, image, tile_px, overlap_px, nodata, batch_size)
    return served_detections(outputs, threshold), len(outputs)


def true_positives(
    detections: np.ndarray, truth_boxes: np.ndarray, truth_ids: np.ndarray, iou: float
) -> np.ndarray:
    """Per detection row, whether the matcher pairs it with a truth box of its class."""
    tp = np.zeros(len(detections), dtype=bool)
    for i, _j in geometry.match(
        detections[:, :4], detections[:, 4], detections[:, 5], truth_boxes, truth_ids, iou
    ):
        tp[i] = True
    return tp


def average_precision(scores: np.ndarray, is_tp: np.ndarray, n_truth: int) -> float:
    """VOC all-point interpolated AP from every detection's score and TP flag; nan with no truth."""
    if n_truth == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(is_tp, dtype=np.float64)[order]
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = tp_cum / n_truth
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@dataclass(frozen=True)
class ImageResult:
    """One scene's detections and truth. `ranked` feeds AP; `served` the precision/recall."""

    ranked: np.ndarray  # [M, 6]
    served: np.ndarray  # [S, 6]
    truth_boxes: np.ndarray  # [N, 4]
    truth_ids: np.ndarray  # [N]


def score_detections(
    per_image: Sequence[ImageResult],
    classes: Sequence[str] = CLASSES,
    iou_threshold: float = geometry.MATCH_IOU,
) -> dict[str, dict[str, float]]:
    """Per class AP (of `ranked`), truth/detection counts, precision and recall (of `served`)."""
    flags = [true_positives(im.ranked, im.truth_boxes, im.truth_ids, iou_threshold) for im in per_image]
    served_flags = [
        true_positives(im.served, im.truth_boxes, im.truth_ids, iou_threshold) for im in per_image
    ]
    result: dict[str, dict[str, float]] = {}
    for c, name in enumerate(classes):
        n_truth = sum(int((im.truth_ids == c).sum()) for im in per_image)
        scores = np.concatenate([im.ranked[im.ranked[:, 5] == c, 4] for im in per_image] or [np.zeros(0)])
        tp = np.concatenate(
            [f[im.ranked[:, 5] == c] for im, f in zip(per_image, flags, strict=True)] or [np.zeros(0, bool)]
        )
        served = sum(int((im.served[:, 5] == c).sum()) for im in per_image)
        served_tp = sum(
            int(f[im.served[:, 5] == c].sum()) for im, f in zip(per_image, served_flags, strict=True)
        )
        result[name] = {
            "ap": average_precision(scores, tp, n_truth),
            "truth": n_truth,
            "detections": len(scores),
            "served": served,
            "precision": served_tp / served if served else float("nan"),
            "recall": served_tp / n_truth if n_truth else float("nan"),
        }
    return result


def held_out_scenes(config: EvalConfig) -> Iterable[Scene]:
    """Scenes never used in training (seeds seed_base..; training seeds start at 1,000,000)."""
    for i in range(config.scenes):
        yield generate_scene(
            config.seed_base + i,
            SceneConfig(width_px=config.size_px, height_px=config.size_px, bands=config.bands),
        )


def _summary(
    per_image: Sequence[ImageResult], classes: Sequence[str], iou: float, threshold: float
) -> dict[str, Any]:
    per_class = score_detections(per_image, classes, iou)
    aps = [v["ap"] for v in per_class.values() if not np.isnan(v["ap"])]
    return {
        "classes": per_class,
        "map": float(np.mean(aps)) if aps else float("nan"),
        "scenes": len(per_image),
        "iou_threshold": iou,
        "score_threshold": threshold,
    }


def evaluate_model(
    run: TileRunner,
    scenes: Iterable[Scene] | None = None,
    config: EvalConfig | None = None,
    classes: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Evaluate a detector on scenes through the served path (see the module doc).

    With scenes=None, the held-out scenes of `config` are generated. The result has per class
    ``ap``, ``truth``, ``detections`` (rows AP saw), ``served``, ``precision`` and ``recall`` (of
    what the consumers publish at config.score_threshold), ``map`` (mean AP over classes that
    have truth), scene and tile counts and timing.
    """
    config = config or EvalConfig()
    scenes = held_out_scenes(config) if scenes is None else scenes
    per_image: list[ImageResult] = []
    tiles, infer_s = 0, 0.0
    seeds = []
    for scene in scenes:
        t0 = time.perf_counter()
        outputs = run_scene(run, scene.image, config.tile_px, config.overlap_px, None, config.batch_size)
        ranked = served_detections(outputs, config.min_score)
        served = served_detections(outputs, config.score_threshold)
        infer_s += time.perf_counter() - t0
        tiles += len(outputs)
        seeds.append(scene.seed)
        per_image.append(ImageResult(ranked, served, scene.boxes_px, scene.class_ids))
    result = _summary(per_image, classes, config.iou_threshold, config.score_threshold)
    result.update(
        seeds=seeds,
        tiles=tiles,
        seconds=round(infer_s, 2),
        ms_per_tile=round(1000 * infer_s / max(tiles, 1), 1),
    )
    return result


def truth_files(truth_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(scene id, truth document) of each ``<scene id>.geojson`` (or ``.truth.geojson``) in
    `truth_dir`, as ``groundwatch generate`` writes them beside the GeoTIFFs, by name."""
    for path in sorted(truth_dir.glob("*.geojson")):
        if path.name.endswith(".truth.geojson"):
            scene_id = path.name.removesuffix(".truth.geojson")
        else:
            scene_id = path.name.split(".", 1)[0]
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ModelsError(
                f"cannot read the truth file {path}: {e}; write it again with `groundwatch generate`"
            ) from e
        yield scene_id, doc


def no_results(truth_dir: Path, missing: Sequence[str]) -> ModelsError:
    return ModelsError(
        f"no scene result for any truth file in {truth_dir} ({len(missing)} scenes not complete): "
        "ingest the scenes generated there (`groundwatch ingest DIR/*.tif --feed FEED`) and let the "
        "consumers finish first"
    )


def evaluate_feed(
    scene_results: Callable[[str], Any], truth_dir: Path, iou: float = geometry.MATCH_IOU
) -> dict[str, Any]:
    """Score the scene results a running stack published against ground-truth files.

    `truth_dir` holds ``<scene id>.geojson`` files as ``groundwatch generate`` writes them next
    to the GeoTIFFs that were ingested; `scene_results(scene_id)` returns the scene's
    :class:`groundwatch.detections.SceneResult` (None while it is not complete). AP is then of
    what was served (the consumers' threshold already applied), so it is truncated at that
    threshold and not comparable to the offline AP; precision and recall are.
    """
    per_image: list[ImageResult] = []
    classes: list[str] = list(CLASSES)
    missing: list[str] = []
    names: list[str] = []
    for scene_id, doc in truth_files(truth_dir):
        classes = list(doc.get("groundwatch", {}).get("classes", classes))
        boxes = np.array([f["properties"]["pixel_box"] for f in doc["features"]], np.float64).reshape(-1, 4)
        ids = np.array([f["properties"]["class_id"] for f in doc["features"]], np.int64)
        result = scene_results(scene_id)
        if result is None:
            missing.append(scene_id)
            continue
        names.append(scene_id)
        rows = np.array(
            [[*d.scene_box_px, d.score, d.class_id] for d in result.detections], np.float64
        ).reshape(-1, 6)
        per_image.append(ImageResult(rows, rows, boxes, ids))
    if not per_image:
        raise no_results(truth_dir, missing)
    out = _summary(per_image, classes, iou, float("nan"))
    out.update(scene_ids=names, missing=missing)
    return out


def format_table(result: dict[str, Any]) -> str:
    thr = result["score_threshold"]
    served = "served" if np.isnan(thr) else f"@{thr:.2f}"
    lines = [
        f"{'class':<10} {'AP@' + format(result['iou_threshold'], '.2f'):>8} {'truth':>6} {'dets':>6} "
        f"{'P' + served:>9} {'R' + served:>9}"
    ]
    for name, v in result["classes"].items():
        lines.append(
            f"{name:<10} {v['ap']:>8.3f} {v['truth']:>6d} {v['detections']:>6d} "
            f"{v['precision']:>9.3f} {v['recall']:>9.3f}"
        )
    lines.append(f"{'mean':<10} {result['map']:>8.3f}")
    if "tiles" in result:
        lines.append(
            f"{result['scenes']} scenes (seeds {result['seeds']}), {result['tiles']} tiles, "
            f"{result['seconds']} s, {result['ms_per_tile']} ms per tile (tiling + inference + merge)"
        )
    else:
        lines.append(f"{result['scenes']} scene results ({len(result['missing'])} not complete)")
    return "\n".join(lines)
