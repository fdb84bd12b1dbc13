"""Adapters: a detector people already have, wrapped into a contract-1 model (docs/models.md).

The wrapper is a TorchScript module that takes the sensor's `[B, C, H, W]` digital numbers, picks
and scales the bands the user's model wants, runs it, and turns what it returns into the
contract's `[B, K, 6]` rows (tile pixels, sorted by score, zero-padded), so the engine, the
consumers and auto-batching see an ordinary groundwatch model.

- `torchvision`: models with torchvision's detection interface (Faster R-CNN, RetinaNet, FCOS,
  SSD): a list of `[C, H, W]` float images in, a list of dicts with `boxes` (x1, y1, x2, y2 in the
  image's pixels), `scores` and `labels` out (scripted, such a model returns `(losses,
  detections)`; both forms are taken). Labels count from `label_offset` (1: torchvision's
  background is 0).
- `yolo`: a raw head `[B, N, 4 + K]` or `[B, 4 + K, N]` (centre x, centre y, width, height in
  input pixels, then one score per class), decoded, thresholded and NMS'd per class inside the
  wrapper.
- `contract1`: the file already is a groundwatch model; nothing is wrapped.

Native operators the engine lacks (torchvision's NMS and RoIAlign) are replaced by TorchScript
equivalents (loaders/detops.py); when torchvision's own operators load here, the adapted model is
run against the original on sample tiles first and refused beyond OP_TOLERANCE.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from groundwatch import modelmeta
from loaders import LoaderError, detops
from loaders.adapterspec import AdapterSpec
from loaders.archive import ModelFile
from loaders.loader import warmup_input

__all__ = ["AdapterSpec", "adapt", "adapt_file", "to_model_file"]

# Largest |difference| of any output value between the adapted model and the original run with
# torchvision's native operators on the sample tiles (same float32 formulas; what is left is the
# order of summation in RoIAlign).
OP_TOLERANCE = 1e-3


def _per_channel(values: tuple[float, ...], n: int) -> Tensor:
    v = torch.tensor(values, dtype=torch.float32)
    return (v if v.numel() == n else v.expand(n)).reshape(1, n, 1, 1).clone()


class _Input(torch.nn.Module):
    """Checks the contract's input and makes the model's: bands picked, float32, scaled."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        ch = spec.channels()
        self.bands = spec.bands
        self.band_map: Tensor
        self.scale: Tensor
        self.offset: Tensor
        self.register_buffer("band_map", torch.tensor(ch, dtype=torch.long))
        self.register_buffer("scale", _per_channel(spec.scale, len(ch)))
        self.register_buffer("offset", _per_channel(spec.offset, len(ch)))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a [B, C, H, W] tile batch, got {x.dim()} dimensions")
        if x.size(1) != self.bands:
            raise ValueError(f"expected {self.bands} band(s), got {x.size(1)}")
        return x.to(torch.float32).index_select(1, self.band_map) * self.scale + self.offset


@torch.jit.script
def rows_of(
    boxes: Tensor, scores: Tensor, classes: Tensor, k: int, n_classes: int, height: int, width: int
) -> Tensor:
    """One tile's contract rows [k, 6]: boxes clipped to the tile, classes in range, scores in
    (0, 1], sorted by score (ties keep the model's order), zero rows after."""
    live = (scores > 0) & (classes >= 0) & (classes < n_classes)
    boxes, scores, classes = boxes[live], scores[live], classes[live]
    order = torch.sort(scores, descending=True, stable=True)[1][:k]
    b = boxes[order].to(torch.float32)
    x1 = b[:, 0].clamp(0.0, float(width))
    y1 = b[:, 1].clamp(0.0, float(height))
    x2 = torch.max(b[:, 2].clamp(0.0, float(width)), x1)
    y2 = torch.max(b[:, 3].clamp(0.0, float(height)), y1)
    s = scores[order].to(torch.float32).clamp(0.0, 1.0)
    c = classes[order].to(torch.float32)
    out = torch.zeros([k, 6], dtype=torch.float32, device=boxes.device)
    out[: order.size(0)] = torch.stack([x1, y1, x2, y2, s, c], dim=1)
    return out


class _Adapted(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, spec: AdapterSpec) -> None:
        super().__init__()
        self.prepare = _Input(spec)
        self.model = model
        self.k = spec.max_detections
        self.n_classes = len(spec.classes)


class TorchvisionList(_Adapted):
    """Contract 1 around a model with torchvision's detection interface returning the list of
    dicts (an eager model, or one scripted from a class that returns only detections)."""

    def __init__(self, model: torch.nn.Module, spec: AdapterSpec) -> None:
        super().__init__(model, spec)
        self.label_offset = spec.label_offset

    def forward(self, x: Tensor) -> Tensor:
        images = self.prepare(x)
        detections = self.detect([images[i] for i in range(images.size(0))])
        return _pack(detections, self.k, self.n_classes, self.label_offset, x.size(2), x.size(3))

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)


class TorchvisionScripted(TorchvisionList):
    """The same, around torchvision's scripted detectors, which return (losses, detections)."""

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)[1]


@torch.jit.script
def _pack(
    detections: list[dict[str, Tensor]], k: int, n_classes: int, label_offset: int, height: int, width: int
) -> Tensor:
    rows: list[Tensor] = []
    for d in detections:
        rows.append(rows_of(d["boxes"], d["scores"], d["labels"] - label_offset, k, n_classes, height, width))
    return torch.stack(rows)


class Yolo(_Adapted):
    """Contract 1 around a YOLO-style raw head: decode, threshold, per-class NMS, top K."""

    def __init__(self, model: torch.nn.Module, spec: AdapterSpec) -> None:
        super().__init__(model, spec)
        self.iou = spec.iou_threshold
        self.min_score = spec.min_score
        self.pre_nms_top = spec.pre_nms_top
        self.logits = spec.scores_are_logits

    def forward(self, x: Tensor) -> Tensor:
        raw = self.model(self.prepare(x))
        width = 4 + self.n_classes
        if raw.dim() != 3:
            raise ValueError(
                f"the YOLO head returned {raw.dim()} dimensions; expected [B, N, 4 + K] or [B, 4 + K, N]"
            )
        if raw.size(2) != width:
            if raw.size(1) != width:
                raise ValueError(
                    f"the YOLO head's rows are neither {width} wide nor {width} tall (4 box values + "
                    f"{self.n_classes} classes); got {list(raw.shape)}"
                )
            raw = raw.transpose(1, 2)
        out: list[Tensor] = []
        for i in range(raw.size(0)):
            out.append(self.decode(raw[i].to(torch.float32), x.size(2), x.size(3)))
        return torch.stack(out)

    def decode(self, rows: Tensor, height: int, width: int) -> Tensor:
        scores = rows[:, 4:]
        if self.logits:
            scores = torch.sigmoid(scores)
        best, cls = scores.max(dim=1)
        live = torch.nonzero(best >= self.min_score).flatten()
        live = live[torch.sort(best[live], descending=True, stable=True)[1][: self.pre_nms_top]]
        r = rows[live]
        half_w, half_h = r[:, 2] / 2, r[:, 3] / 2
        boxes = torch.stack([r[:, 0] - half_w, r[:, 1] - half_h, r[:, 0] + half_w, r[:, 1] + half_h], dim=1)
        keep = detops.batched_nms(boxes, best[live], cls[live], self.iou)
        return rows_of(boxes[keep], best[live][keep], cls[live][keep], self.k, self.n_classes, height, width)


class _First(torch.nn.Module):
    """The first output of a model returning a tuple (ultralytics' eager DetectionModel returns
    (predictions, feature maps)); used only to trace it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple | list) else out


def _sample_batch(spec: AdapterSpec, batch: int = 2) -> Tensor:
    """The loader's deterministic warm-up tiles for the declared shape, as float32."""
    meta = modelmeta.ModelMetadata.from_dict(spec.metadata())
    return torch.from_numpy(warmup_input(meta, batch).astype(np.float32))


def _scripted(model: torch.nn.Module | torch.jit.ScriptModule, spec: AdapterSpec) -> torch.jit.ScriptModule:
    if isinstance(model, torch.jit.ScriptModule):
        return model
    if spec.adapter == "yolo":
        # YOLO exports are traced (their decode is shape-dependent Python); trace at the tile size.
        sample = _Input(spec)(_sample_batch(spec, 1))
        with torch.no_grad():
            return torch.jit.trace(_First(model).eval(), sample, check_trace=False)
    try:
        return torch.jit.script(model.eval())
    except Exception as e:  # TorchScript's frontend raises many types
        raise LoaderError(f"the torchvision-style model cannot be scripted (torch.jit.script): {e}") from e


def _returns_pair(model: torch.jit.ScriptModule) -> bool:
    ret = model.forward.schema.returns[0].type  # type: ignore[attr-defined]
    return isinstance(ret, torch._C.TupleType)


def _wrap(inner: torch.jit.ScriptModule, spec: AdapterSpec) -> torch.nn.Module:
    if spec.adapter == "yolo":
        return Yolo(inner, spec)
    return (TorchvisionScripted if _returns_pair(inner) else TorchvisionList)(inner, spec)


def adapt(
    model: torch.nn.Module | torch.jit.ScriptModule, spec: AdapterSpec, original: bytes | None = None
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The contract-1 module wrapping `model` (eager or TorchScript) and what was done, for the
    registry: adapter, replaced operators, and the check of the replacements against the native
    operators (`op_check`). `original` is the model's file, to load it a second time for that."""
    spec.check()
    if spec.adapter == "contract1":
        raise LoaderError("contract1 takes a groundwatch model file as it is; nothing to adapt")
    inner, replaced = detops.replace_native_ops(_scripted(model, spec))
    if original is None:
        buf = io.BytesIO()
        torch.jit.save(_scripted(model, spec), buf)
        original = buf.getvalue()
    try:
        wrapped = torch.jit.script(_wrap(inner, spec).eval())
    except Exception as e:
        raise LoaderError(
            f"the {spec.adapter} adapter cannot script its wrapper around this model: {e}"
        ) from e
    for p in wrapped.parameters():
        p.requires_grad_(False)  # served for inference only; no autograd graph per call
    report: dict[str, Any] = {"adapter": spec.adapter, "replaced_ops": replaced}
    report["op_check"] = _check_ops(wrapped, original, spec, replaced)
    return wrapped, report


def _check_ops(
    adapted: torch.jit.ScriptModule, original: bytes, spec: AdapterSpec, replaced: list[str]
) -> dict[str, Any]:
    """Adapted vs the original with torchvision's native operators, on sample tiles."""
    if not replaced:
        return {"status": "nothing replaced"}
    if not detops.native_available():
        return {
            "status": "skipped: torchvision's native operators cannot be loaded in this process, so "
            "the replacements were not compared with them here (they are tested against torchvision "
            "where it loads, and against a reference implementation)"
        }
    native = torch.jit.script(_wrap(torch.jit.load(io.BytesIO(original)), spec).eval())
    sample = _sample_batch(spec)
    with torch.no_grad():
        want, got = native(sample), adapted(sample)
    diff = float((want - got).abs().max()) if want.numel() else 0.0
    if want.shape != got.shape or diff > OP_TOLERANCE:
        raise LoaderError(
            f"the TorchScript replacements of {', '.join(replaced)} change this model's output: max abs "
            f"difference {diff:.3g} on the sample tiles (tolerance {OP_TOLERANCE:g}); please report it"
        )
    return {"status": "ok", "max_abs_diff": diff, "tolerance": OP_TOLERANCE, "tiles": int(sample.shape[0])}


def read_model(path: str | Path) -> tuple[torch.jit.ScriptModule, bytes]:
    """A user's TorchScript file (a scripted torchvision detector or a traced YOLO export)."""
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise LoaderError(f"cannot read model file {path}: {e}") from e
    detops.ensure_schemas()
    try:
        return torch.jit.load(io.BytesIO(blob), map_location="cpu"), blob
    except Exception as e:  # torch.jit.load raises RuntimeError and others for a bad archive
        raise LoaderError(
            f"{path} is not a TorchScript file torch can load ({e}); an adapter takes a model saved with "
            "torch.jit.save (torch.jit.script for torchvision detectors, torch.jit.trace / "
            "ultralytics' export format=torchscript for YOLO heads)"
        ) from e


def adapt_file(path: str | Path, spec: AdapterSpec) -> ModelFile:
    """`path` adapted into a contract-1 model file, as the loader stores it; the original's hash
    and the adapter's report go into the metadata's `adapter` entry (and so the registry)."""
    module, blob = read_model(path)
    return to_model_file(module, spec, str(path), blob)


def to_model_file(
    module: torch.nn.Module | torch.jit.ScriptModule,
    spec: AdapterSpec,
    name: str,
    original: bytes | None = None,
) -> ModelFile:
    wrapped, report = adapt(module, spec, original)
    meta = spec.metadata()
    meta["adapter"] = {
        **report,
        "original_file": name,
        "original_sha256": hashlib.sha256(original).hexdigest() if original is not None else None,
        "spec": {k: v for k, v in asdict(spec).items() if k != "classes"},
    }
    buf = io.BytesIO()
    torch.jit.save(wrapped, buf, _extra_files={modelmeta.METADATA_FILE: json.dumps(meta)})
    blob = buf.getvalue()
    try:
        parsed = modelmeta.read(blob, name)
    except modelmeta.MetadataError as e:
        raise LoaderError(str(e)) from e
    return ModelFile(name, blob, hashlib.sha256(blob).hexdigest(), parsed)
