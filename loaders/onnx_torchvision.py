"""ONNX exports of torchvision-style detectors (`groundwatch load det.onnx --adapter torchvision`).

Such a graph takes one `[C, H, W]` float image and returns boxes `[n, 4]`, labels `[n]` and
scores `[n]`; it runs NMS in the middle (the proposals) and at the end, and computes the sizes of
what NMS keeps at run time. onnx2torch converts `NonMaxSuppression` into a Python loop that
builds the kept indices as a tensor from a Python list, which the trace the loader takes records as
a constant: the boxes of the one image it was traced on. Here, in the converted fx graph and
before tracing:

- every `NonMaxSuppression` module becomes `ScriptedNonMaxSuppression` (ONNX's semantics around
  `detops.nms`, the one TorchScript NMS of the adapters), and every `RoiAlign` module a scripted
  call of `detops.roi_align` (torchvision is not loadable beside this torch, see onnx_import);
  torch.jit.trace keeps calls into scripted modules as calls, so their data-dependent loops and
  output sizes stay dynamic;
- every `Shape` module becomes `TracedShape` (`torch._shape_as_tensor`, an operator on its input
  in the trace). onnx2torch's builds a tensor from a Python shape; torch 2.13's tracer records
  that one dynamically too (measured on the tests' graph), but that is the tracer's choice, not
  a contract.

Whether that is enough for a given graph (another converter may still read a value into Python)
is decided by behaviour, not by a list: ONNX Runtime and the converted module are run on images
other than the traced one, which must keep different numbers of detections than it did, and must
agree box for box; otherwise the file is refused, naming the operators that follow NMS.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from loaders import LoaderError, detops

# The outputs of torchvision's export, by the names it gives them or, failing that, by type.
OUTPUTS = ("boxes", "scores", "labels")
# The onnx2torch modules replaced before tracing, by ONNX operator.
REPLACED_OPS = ("NonMaxSuppression", "RoiAlign", "Shape")


class ScriptedNonMaxSuppression(nn.Module):
    """ONNX NonMaxSuppression (opsets 10, 11) in TorchScript: boxes [B, N, 4], scores [B, C, N],
    then the optional max_output_boxes_per_class (absent or 0: nothing kept), iou_threshold and
    score_threshold (strictly above it is kept) -> selected [M, 3] (batch, class, box), by batch,
    class and decreasing score. Boxes are any diagonal corner pair ([y1, x1, y2, x2] by the spec)
    or, with center_point_box 1, [x_center, y_center, width, height]; greedy suppression is
    detops.nms's (IoU above the threshold, ties in score kept in index order, as ONNX Runtime)."""

    def __init__(self, center_point_box: int = 0) -> None:
        super().__init__()
        self.center_point_box = center_point_box

    def forward(
        self,
        boxes: Tensor,
        scores: Tensor,
        max_output_boxes_per_class: Tensor | None = None,
        iou_threshold: Tensor | None = None,
        score_threshold: Tensor | None = None,
    ) -> Tensor:
        out = torch.zeros([0, 3], dtype=torch.long, device=boxes.device)
        if max_output_boxes_per_class is None:
            return out
        limit = int(max_output_boxes_per_class.reshape(-1)[0])
        iou = 0.0 if iou_threshold is None else float(iou_threshold.reshape(-1)[0])
        for b in range(boxes.size(0)):
            bx = boxes[b].to(torch.float32)
            if self.center_point_box == 1:
                xyxy = torch.cat([bx[:, :2] - bx[:, 2:] / 2, bx[:, :2] + bx[:, 2:] / 2], dim=1)
            else:  # the corners in either order; IoU is symmetric in x and y, so y-x order serves
                xyxy = torch.cat([torch.min(bx[:, :2], bx[:, 2:]), torch.max(bx[:, :2], bx[:, 2:])], dim=1)
            for c in range(scores.size(1)):
                s = scores[b, c].to(torch.float32)
                if score_threshold is None:
                    live = torch.arange(s.size(0), device=s.device)
                else:
                    live = torch.nonzero(s > float(score_threshold.reshape(-1)[0])).flatten()
                keep = live[detops.nms(xyxy[live], s[live], iou)][:limit]
                rows = torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1)
                out = torch.cat([out, rows])
        return out


class ScriptedRoiAlign(nn.Module):
    """ONNX RoiAlign (mode avg) as detops.roi_align: X [N, C, H, W], rois [R, 4] (x1, y1, x2, y2),
    batch_indices [R] -> [R, C, output_height, output_width]; coordinate transformation mode
    half_pixel is torchvision's aligned=True, output_half_pixel its aligned=False."""

    def __init__(
        self, height: int, width: int, sampling_ratio: int, spatial_scale: float, aligned: bool
    ) -> None:
        super().__init__()
        self.height = height
        self.width = width
        self.sampling_ratio = sampling_ratio
        self.spatial_scale = spatial_scale
        self.aligned = aligned

    def forward(self, x: Tensor, rois: Tensor, batch_indices: Tensor) -> Tensor:
        r = torch.cat([batch_indices.unsqueeze(1).to(rois.dtype), rois], dim=1)
        return detops.roi_align(
            x, r, self.spatial_scale, self.height, self.width, self.sampling_ratio, self.aligned
        )


class TracedShape(nn.Module):
    """ONNX Shape(start, end) that a trace records as an operator on its input."""

    def __init__(self, start: int, end: int | None) -> None:
        super().__init__()
        self.start = start
        self.end = end

    def forward(self, x: Tensor) -> Tensor:
        return torch._shape_as_tensor(x)[self.start : self.end]


class _Ordered(nn.Module):
    """The converted graph with its outputs as (boxes, scores, labels); used only to trace it."""

    def __init__(self, graph: nn.Module, order: tuple[int, int, int]) -> None:
        super().__init__()
        self.graph = graph
        self.order = order

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.graph(image)
        return out[self.order[0]], out[self.order[1]], out[self.order[2]]


class TorchvisionOnnx(nn.Module):
    """torchvision's detection interface around the traced graph: a list of [C, H, W] float
    images in, one dict of boxes, scores and labels per image out (the torchvision adapter wraps
    this into contract 1)."""

    def __init__(self, traced: nn.Module) -> None:
        super().__init__()
        self.graph = traced

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = []
        for image in images:
            boxes, scores, labels = self.graph(image)
            out.append({"boxes": boxes, "scores": scores, "labels": labels})
        return out


def check_interface(proto: Any, channels: int, tile: int, what: str) -> tuple[int, int, int]:
    """One float image [C, H, W] in (C the adapter's channels, H and W free or the tile size);
    boxes [n, 4], scores [n] and labels [n] out. Returns the positions of (boxes, scores,
    labels) among the outputs: by name when they are torchvision's, else by type and rank."""
    onnx = _onnx()
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    outputs = list(proto.graph.output)
    dims = _dims(inputs[0]) if len(inputs) == 1 else []
    elem = inputs[0].type.tensor_type.elem_type if len(inputs) == 1 else None
    if (
        len(inputs) != 1
        or len(dims) != 3
        or dims[0] not in (None, channels)
        or any(d not in (None, tile) for d in dims[1:])
        or elem != onnx.TensorProto.FLOAT
    ):
        raise LoaderError(
            f"{what}: a torchvision-style ONNX export takes one float image [{channels}, H, W] "
            f"(H and W free or {tile}, {channels} the --band-map's channels), as torch.onnx.export of a "
            f"torchvision detector writes it; this graph takes {_inputs_text(inputs)}"
        )
    names = [o.name for o in outputs]
    if len(outputs) == 3 and sorted(names) == sorted(OUTPUTS):
        return names.index("boxes"), names.index("scores"), names.index("labels")
    kinds: dict[str, list[int]] = {}
    for i, o in enumerate(outputs):
        rank, t = len(_dims(o)), o.type.tensor_type.elem_type
        kind = "boxes" if rank == 2 and t == onnx.TensorProto.FLOAT else None
        kind = "scores" if rank == 1 and t == onnx.TensorProto.FLOAT else kind
        kind = "labels" if rank == 1 and t == onnx.TensorProto.INT64 else kind
        if kind is not None:
            kinds.setdefault(kind, []).append(i)
    if len(outputs) != 3 or any(len(kinds.get(k, [])) != 1 for k in OUTPUTS):
        raise LoaderError(
            f"{what}: a torchvision-style ONNX export returns boxes [n, 4] (float), labels [n] (int64) "
            f"and scores [n] (float); this graph returns {len(outputs)} output(s) named {names}"
        )
    return kinds["boxes"][0], kinds["scores"][0], kinds["labels"][0]


def _onnx() -> Any:
    from loaders.onnx_import import _import

    return _import("onnx")


def _dims(value_info: Any) -> list[int | None]:
    from loaders.onnx_import import _dims as dims

    return dims(value_info)


def _inputs_text(inputs: list[Any]) -> str:
    from loaders.onnx_import import _shape_text

    return ", ".join(f"{i.name} {_shape_text(_dims(i))}" for i in inputs) or "no input"


def replace_dynamic(graph_module: Any) -> list[str]:
    """Put the scripted and traceable modules of the module docstring in place of onnx2torch's
    NonMaxSuppression, RoiAlign and Shape modules in `graph_module` (in place); the names of the
    replaced modules."""
    from onnx2torch.node_converters.nms import OnnxNonMaxSuppression
    from onnx2torch.node_converters.roialign import OnnxRoiAlign
    from onnx2torch.node_converters.shape import OnnxShape

    replaced = []
    for name, module in list(graph_module.named_modules()):
        new: nn.Module | None = None
        if isinstance(module, OnnxNonMaxSuppression):
            new = torch.jit.script(ScriptedNonMaxSuppression(module._center_point_box))
        elif isinstance(module, OnnxRoiAlign):
            aligned = module._coordinate_transformation_mode.value == "half_pixel"
            new = torch.jit.script(
                ScriptedRoiAlign(
                    module._output_height,
                    module._output_width,
                    module._sampling_ratio,
                    module._spatial_scale,
                    aligned,
                )
            )
        elif isinstance(module, OnnxShape):
            new = TracedShape(module._start, module._end)
        if new is not None:
            graph_module.set_submodule(name, new)
            replaced.append(name)
    return replaced


def trace(
    graph_module: Any, order: tuple[int, int, int], example: Tensor, what: str
) -> torch.jit.ScriptModule:
    """The graph traced on one image and wrapped in TorchvisionOnnx (scripted)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings: what they warn of, the parity check measures
            traced = torch.jit.trace(_Ordered(graph_module.eval(), order), example, check_trace=False)
        return torch.jit.script(TorchvisionOnnx(traced))
    except Exception as e:
        raise LoaderError(
            f"{what}: the converted graph does not run on a {list(example.shape)} image in torch: {e}"
        ) from e


def after_nms(proto: Any) -> list[str]:
    """The operators of the graph computed from what a NonMaxSuppression keeps (sorted)."""
    tainted: set[str] = set()
    ops: set[str] = set()
    for node in proto.graph.node:  # ONNX nodes are in topological order
        if node.op_type == "NonMaxSuppression" or tainted.intersection(node.input):
            tainted.update(node.output)
            if node.op_type != "NonMaxSuppression":
                ops.add(node.op_type)
    return sorted(ops)


@dataclass(frozen=True)
class Compared:
    """ONNX Runtime's detections and the converted module's, image by image."""

    counts: list[int]  # ONNX Runtime's number of detections per image
    box: float
    score: float
    label_mismatches: int
    label: float  # largest |label difference|
    rows: int


def compare(
    want: Sequence[tuple[np.ndarray, ...]], got: Sequence[tuple[np.ndarray, ...]], what: str, proto: Any
) -> Compared:
    """Detections (boxes, scores, labels) per image, in the order each side returns them (both
    sort by score with ties in index order); a different number of detections on any image is a
    frozen trace and refuses the file."""
    from loaders.onnx_import import TORCHVISION_ONNX_REFUSED

    box = score = label = 0.0
    mismatches = rows = 0
    for i, ((wb, ws, wl), (gb, gs, gl)) in enumerate(zip(want, got, strict=True)):
        if len(wb) != len(gb) or len(ws) != len(gs) or len(wl) != len(gl):
            raise LoaderError(
                TORCHVISION_ONNX_REFUSED.format(
                    path=what,
                    why=(
                        f"on sample image {i} the converted graph returns {len(gb)} detections where "
                        f"ONNX Runtime returns {len(wb)}, so the trace froze a size NMS decides at run "
                        f"time (operators after NonMaxSuppression here: {', '.join(after_nms(proto)) or 'none'}; "
                        "onnx2torch converts some of them into Python)"
                    ),
                )
            )
        if len(wb):
            box = max(box, float(np.abs(wb.astype(np.float64) - gb).max()))
            score = max(score, float(np.abs(ws.astype(np.float64) - gs).max()))
            mismatches += int((wl != gl).sum())
            label = max(label, float(np.abs(wl.astype(np.float64) - gl).max()))
        rows += len(wb)
    return Compared([len(w[0]) for w in want], box, score, mismatches, label, rows)
