"""ONNX exports of torchvision-style detectors (`groundwatch load det.onnx --adapter torchvision`).

Such a graph takes one `[C, H, W]` float image (or a batch of one, `[1, C, H, W]`) and returns
boxes `[n, 4]`, labels `[n]` and scores `[n]` (after a batch of one, each may keep a leading batch
dimension of 1); it runs NMS in the middle (the proposals) and at the end, and computes the sizes of
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
from loaders.onnx_import import (
    TORCHVISION_ONNX_INSTEAD,
    TORCHVISION_ONNX_REFUSED,
    _dims,
    _import,
    _shape_text,
)

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


@dataclass(frozen=True)
class Interface:
    """How a torchvision-style graph takes its image and returns its detections: the positions of
    (boxes, scores, labels) among its outputs, whether its input is a batch of one [1, C, H, W]
    (else one image [C, H, W]) and whether each output has a leading batch dimension of 1."""

    order: tuple[int, int, int]
    batched_input: bool = False
    batched_outputs: bool = False

    def detections(self, outputs: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, ...]:
        """ONNX Runtime's outputs for one image as (boxes, scores, labels), the batch dim removed."""
        picked = tuple(outputs[i] for i in self.order)
        if not self.batched_outputs:
            return picked
        if any(p.ndim == 0 or p.shape[0] != 1 for p in picked):
            raise LoaderError(
                f"{what}: given a batch of one image, ONNX Runtime returns outputs of shapes "
                f"{[list(p.shape) for p in picked]}, not a batch of one; {TORCHVISION_ONNX_INSTEAD}"
            )
        return tuple(p[0] for p in picked)


class _Ordered(nn.Module):
    """The converted graph with one [C, H, W] image in (the batch dim added when the graph takes
    a batch of one) and (boxes, scores, labels) out (the batch dim removed when it returns one);
    used only to trace it."""

    def __init__(self, graph: nn.Module, interface: Interface) -> None:
        super().__init__()
        self.graph = graph
        self.order = interface.order
        self.batched_input = interface.batched_input
        self.batched_outputs = interface.batched_outputs

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.graph(image.unsqueeze(0) if self.batched_input else image)
        boxes, scores, labels = out[self.order[0]], out[self.order[1]], out[self.order[2]]
        if self.batched_outputs:
            return boxes[0], scores[0], labels[0]
        return boxes, scores, labels


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


def check_interface(proto: Any, channels: int, tile: int, what: str) -> Interface:
    """One float image in, [C, H, W] or a batch of one [1, C, H, W] (C the adapter's channels, H
    and W free or the tile size, the batch free or 1); boxes [n, 4], scores [n] and labels [n]
    out, or, after a batch of one in, all three with a leading batch dimension of 1 ([1, n, 4],
    [1, n]). The outputs are told apart by name when they are torchvision's, else by type and
    rank. LoaderError, saying what is accepted and what to load instead, for anything else."""
    onnx = _import("onnx")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    outputs = list(proto.graph.output)
    dims = _dims(inputs[0]) if len(inputs) == 1 else []
    elem = inputs[0].type.tensor_type.elem_type if len(inputs) == 1 else None
    batched = len(dims) == 4
    image = dims[1:] if batched else dims
    if (
        len(inputs) != 1
        or len(dims) not in (3, 4)
        or (batched and dims[0] not in (None, 1))
        or image[0] not in (None, channels)
        or any(d not in (None, tile) for d in image[1:])
        or elem != onnx.TensorProto.FLOAT
    ):
        raise LoaderError(
            f"{what}: a torchvision-style ONNX export takes one float image [{channels}, H, W] or a "
            f"batch of one [1, {channels}, H, W] (H and W free or {tile}, {channels} the --band-map's "
            f"channels); this graph takes {_inputs_text(inputs)}. Re-export it as torchvision's "
            f"detectors export, with one image as the example input (torch.onnx.export(model, "
            f"([torch.rand({channels}, {tile}, {tile})],), 'det.onnx', input_names=['image'], "
            f"output_names=['boxes', 'labels', 'scores'])), or {TORCHVISION_ONNX_INSTEAD}"
        )
    offsets = (0, 1) if batched else (0,)
    names = [o.name for o in outputs]
    if len(outputs) == 3 and sorted(names) == sorted(OUTPUTS):
        order = (names.index("boxes"), names.index("scores"), names.index("labels"))
        ranks = [_rank(outputs[i]) for i in order]
        fitting = [
            k
            for k in offsets
            if all(r is None or r == base + k for r, base in zip(ranks, (2, 1, 1), strict=True))
        ]
        if fitting:
            # one offset fits the declared ranks, or both when none is declared (then no batch dim)
            return _interface(order, batched, fitting[0] == 1, outputs, what)
    else:
        for k in offsets:
            kinds: dict[str, list[int]] = {}
            for i, o in enumerate(outputs):
                rank, t = _rank(o), o.type.tensor_type.elem_type
                kind = "boxes" if rank == 2 + k and t == onnx.TensorProto.FLOAT else None
                kind = "scores" if rank == 1 + k and t == onnx.TensorProto.FLOAT else kind
                kind = "labels" if rank == 1 + k and t == onnx.TensorProto.INT64 else kind
                if kind is not None:
                    kinds.setdefault(kind, []).append(i)
            if len(outputs) == 3 and all(len(kinds.get(n, [])) == 1 for n in OUTPUTS):
                order = (kinds["boxes"][0], kinds["scores"][0], kinds["labels"][0])
                return _interface(order, batched, k == 1, outputs, what)
    raise _outputs_refused(outputs, batched, what)


def _interface(
    order: tuple[int, int, int], batched: bool, batched_outputs: bool, outputs: list[Any], what: str
) -> Interface:
    """The Interface, once the leading dims of batched outputs and the width of the boxes are
    checked where the graph declares them."""
    boxes = _dims(outputs[order[0]])
    lead = [(_dims(outputs[i]) or [None])[0] for i in order] if batched_outputs else []
    if any(d not in (None, 1) for d in lead) or (boxes and boxes[-1] not in (None, 4)):
        raise _outputs_refused(outputs, batched, what)
    return Interface(order, batched, batched_outputs)


def _outputs_refused(outputs: list[Any], batched: bool, what: str) -> LoaderError:
    onnx = _import("onnx")
    listed = ", ".join(
        f"{o.name} {onnx.TensorProto.DataType.Name(o.type.tensor_type.elem_type)} {_shape_text(_dims(o))}"
        for o in outputs
    )
    also = " (after a batch of one in, each may have a leading batch dimension of 1)" if batched else ""
    return LoaderError(
        f"{what}: a torchvision-style ONNX export returns three outputs, boxes [n, 4] (float), "
        f"labels [n] (int64) and scores [n] (float){also}, named so or told apart by type and rank; "
        f"this graph returns {len(outputs)} output(s): {listed or 'none'}. Re-export it returning "
        "one image's boxes, labels and scores (output_names=['boxes', 'labels', 'scores']), or "
        f"{TORCHVISION_ONNX_INSTEAD}"
    )


def _rank(value_info: Any) -> int | None:
    """A graph value's rank; None when the graph does not declare its shape."""
    tensor_type = value_info.type.tensor_type
    return len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None


def _inputs_text(inputs: list[Any]) -> str:
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


def trace(graph_module: Any, interface: Interface, example: Tensor, what: str) -> torch.jit.ScriptModule:
    """The graph traced on one [C, H, W] image and wrapped in TorchvisionOnnx (scripted)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings: what they warn of, the parity check measures
            traced = torch.jit.trace(_Ordered(graph_module.eval(), interface), example, check_trace=False)
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
