"""Detectors of the kinds people bring, built here with random weights (nothing downloaded).

`TwoStage` has torchvision's detection interface and operators: a list of [C, H, W] images in, a
list of dicts (boxes, scores, labels; labels from 1) out, with proposals pruned by
`torch.ops.torchvision.nms` and pooled by `torch.ops.torchvision.roi_align`, as Faster R-CNN does.
Scripted, its graphs call `torchvision::nms` / `torchvision::roi_align` like a scripted
torchvision detector's. (torchvision 0.28.0, the build for torch 2.13 on PyPI, links CUDA
libraries and does not load beside the CPU torch, so its own models cannot be built here.)

`YoloHead` is a YOLO-style single-stage net: [B, 4 + K, N] raw predictions (centre x, centre y,
width, height in input pixels, then per-class probabilities) over a stride-8 grid, no NMS.

Both weigh the input's local contrast (log DN minus its blurred self) heavily, so with random
weights their scores still follow the bright objects of a scene, and are distinct.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _contrast(x: Tensor) -> Tensor:
    v = torch.log1p(x.clamp(min=0.0))
    return v - nn.functional.avg_pool2d(v, 9, stride=1, padding=4, count_include_pad=False)


class TwoStage(nn.Module):
    """Region proposals at stride 4, NMS, RoIAlign, a box classifier, per-class NMS."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 3, proposals: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.objectness = nn.Conv2d(16, 1, 1)
        self.sizes = nn.Conv2d(16, 2, 1)
        self.classifier = nn.Linear(16 * 7 * 7, num_classes)
        self.deltas = nn.Linear(16 * 7 * 7, 4)
        self.proposals = proposals
        self.num_classes = num_classes

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        x = torch.stack(images)
        c = _contrast(x).mean(dim=1, keepdim=True)
        features = self.backbone(x * 0.001)
        cell = nn.functional.max_pool2d(c, 4)
        obj = torch.sigmoid(self.objectness(features) + 1.5 * cell - 1.0)
        size = 6.0 + 20.0 * torch.sigmoid(self.sizes(features))
        h, w = features.shape[2], features.shape[3]
        out: list[dict[str, Tensor]] = []
        for i in range(x.shape[0]):
            scores, idx = obj[i, 0].flatten().topk(min(self.proposals, h * w))
            cy = (torch.div(idx, w, rounding_mode="floor").to(torch.float32) + 0.5) * 4.0
            cx = (idx % w).to(torch.float32) * 4.0 + 2.0
            sw, sh = size[i, 0].flatten()[idx], size[i, 1].flatten()[idx]
            boxes = torch.stack([cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2], dim=1)
            keep = torch.ops.torchvision.nms(boxes, scores, 0.7)
            boxes, scores = boxes[keep], scores[keep]
            rois = torch.cat([torch.full_like(boxes[:, :1], float(i)), boxes], dim=1)
            pooled = torch.ops.torchvision.roi_align(features, rois, 0.25, 7, 7, 2, False)
            flat = pooled.flatten(1)
            probs = torch.softmax(self.classifier(flat), dim=1)
            delta = torch.tanh(self.deltas(flat)) * 2.0
            boxes = boxes + delta
            labels = probs[:, 1:].argmax(dim=1) + 1
            final = scores * probs[:, 1:].max(dim=1)[0]
            keep = self._per_class_nms(boxes, final, labels)
            out.append({"boxes": boxes[keep], "scores": final[keep], "labels": labels[keep]})
        return out

    def _per_class_nms(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        # torchvision.ops.batched_nms's coordinate trick: classes never overlap after the shift.
        shift = labels.to(boxes.dtype) * (boxes.max() + 1.0)
        return torch.ops.torchvision.nms(boxes + shift[:, None], scores, 0.5)


class YoloHead(nn.Module):
    """A YOLO-like anchor-free head: [B, 4 + K, N] over a stride-8 grid."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        self.box = nn.Conv2d(16, 4, 1)
        self.cls = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.body(x)
        c = nn.functional.max_pool2d(_contrast(x * 1000.0).mean(dim=1, keepdim=True), 8)
        b, _, h, w = f.shape
        gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
        d = self.box(f)
        cx = (gx + torch.sigmoid(d[:, 0])) * 8.0
        cy = (gy + torch.sigmoid(d[:, 1])) * 8.0
        bw = 8.0 + 16.0 * torch.sigmoid(d[:, 2])
        bh = 8.0 + 16.0 * torch.sigmoid(d[:, 3])
        cls = torch.sigmoid(self.cls(f) + 1.5 * c - 2.0)
        out = torch.cat([torch.stack([cx, cy, bw, bh], dim=1), cls], dim=1)
        return out.reshape(b, out.shape[1], h * w)


class ScriptedPair(nn.Module):
    """What torchvision's detectors return when scripted: `(losses, detections)`, with the
    optional `targets` argument of their forward."""

    def __init__(self, inner: TwoStage) -> None:
        super().__init__()
        self.inner = inner

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        losses: dict[str, Tensor] = {}
        return losses, self.inner(images)


class OneImage(nn.Module):
    """A torchvision-style detector as torch.onnx.export sees one: one [C, H, W] image in, its
    boxes, labels and scores out (torchvision's detectors export this way). With `batch` "input",
    the image comes as a batch of one [1, C, H, W]; with "both", the outputs also get a leading
    batch dimension of 1 ([1, n, 4], [1, n]), as wrappers that export a batch of one write them."""

    def __init__(self, model: nn.Module, batch: str = "none") -> None:
        super().__init__()
        self.model = model
        self.batch = batch

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = self.model([image[0] if self.batch != "none" else image])[0]
        if self.batch == "both":
            return d["boxes"][None], d["labels"][None], d["scores"][None]
        return d["boxes"], d["labels"], d["scores"]


def export_torchvision_onnx(
    model: nn.Module, path: str, channels: int, size: int, batch: str = "none"
) -> None:
    """`model` exported to ONNX in the form torchvision's detectors take (the legacy exporter,
    opset 17; NMS as one NonMaxSuppression node with no per-class limit, RoIAlign as RoiAlign
    with the batch index split off), or with a batch of one (`batch`, see OneImage). torchvision
    does not load here, so the symbolic functions that emit those nodes are registered for
    loaders.detops' operators instead."""
    import sys
    import warnings

    from torch.onnx import symbolic_opset11 as opset11
    from torch.onnx.symbolic_helper import parse_args

    from loaders import detops

    detops.ensure_schemas()

    def const(values: list[int]) -> object:
        return torch.tensor(values, dtype=torch.long)

    @parse_args("v", "v", "f")
    def nms(g, boxes, scores, iou_threshold):
        boxes = opset11.unsqueeze(g, boxes, 0)
        scores = opset11.unsqueeze(g, opset11.unsqueeze(g, scores, 0), 0)
        limit = g.op("Constant", value_t=const([sys.maxsize]))
        threshold = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float))
        out = g.op("NonMaxSuppression", boxes, scores, limit, threshold)
        return opset11.squeeze(g, opset11.select(g, out, 1, g.op("Constant", value_t=const([2]))), 1)

    @parse_args("v", "v", "f", "i", "i", "i", "i")
    def roi_align(g, features, rois, scale, height, width, sampling_ratio, aligned):
        index = opset11.squeeze(g, opset11.select(g, rois, 1, g.op("Constant", value_t=const([0]))), 1)
        index = g.op("Cast", index, to_i=torch.onnx.TensorProtoDataType.INT64)
        corners = opset11.select(g, rois, 1, g.op("Constant", value_t=const([1, 2, 3, 4])))
        return g.op(
            "RoiAlign",
            features,
            corners,
            index,
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
            spatial_scale_f=scale,
            output_height_i=height,
            output_width_i=width,
            sampling_ratio_i=max(0, sampling_ratio),
        )

    torch.onnx.register_custom_op_symbolic("torchvision::nms", nms, 11)
    torch.onnx.register_custom_op_symbolic("torchvision::roi_align", roi_align, 16)
    example = torch.rand(channels, size, size) * 3000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OneImage(model, batch).eval(),
            (example[None] if batch != "none" else example,),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["boxes", "labels", "scores"],
        )
