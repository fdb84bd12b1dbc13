"""Detection operators in TorchScript, and the graph rewrite that puts them in place of native ones.

Detectors scripted with torchvision call its C++ operators (`torchvision::nms`,
`torchvision::roi_align`), which live in torchvision's own shared library, not in libtorch. The
engine runs libtorch only, so such a model fails to store there (`Unknown builtin op:
torchvision::nms`). Rather than load a native library named by a model into Redis, the adapters
replace every call to these operators in the model's TorchScript graphs by the graph of the
equivalent function here (same inputs, same outputs, built from aten operators only), so the saved
file needs nothing but libtorch.

`nms` and `roi_align` follow torchvision's CPU kernels step for step (the same float32 formulas,
so equal results, up to the order of boxes with equal scores); the adapters measure that on
sample tiles when torchvision's native operators are loadable in the loader's process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from loaders import LoaderError

# Namespaces whose operators are part of libtorch, which is all the engine has.
LIBTORCH_NAMESPACES = frozenset({"aten", "prim", "quantized", "_quantized", "profiler", "onnx"})

# torchvision's schemas (its public operator interface), for loading files that call them when
# torchvision's own library cannot be loaded here.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": (
        "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
}


@torch.jit.script
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes ([N, 4] x1, y1, x2, y2) greedy NMS keeps, by decreasing score.

    A box is dropped when its IoU with a kept, higher-scored box is > iou_threshold
    (torchvision.ops.nms's rule and arithmetic)."""
    if boxes.size(0) == 0:
        return torch.zeros([0], dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True)[1]
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(b[:, None, :2], b[None, :, :2])
    rb = torch.min(b[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0.0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    # Only a higher-ranked box suppresses a lower one: a triangular system, keep[j] = no kept i < j
    # suppresses j. Iterating it for all j at once settles one more rank each pass at worst (usually
    # all within a few passes, as suppression chains are short), and its only fixed point is the
    # greedy answer; a matrix-vector product per pass beats a loop over every box in TorchScript.
    suppress = torch.triu(iou > iou_threshold, diagonal=1).to(torch.float32)
    keep = torch.ones(b.size(0), dtype=torch.bool, device=boxes.device)
    for _ in range(b.size(0)):
        settled = torch.mv(suppress.t(), keep.to(torch.float32)) == 0
        if bool(torch.equal(settled, keep)):
            break
        keep = settled
    return order[keep]


@torch.jit.script
def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each class separately; kept indices by decreasing score."""
    keep = torch.zeros([0], dtype=torch.long, device=boxes.device)
    present = torch.unique(classes)
    for j in range(present.size(0)):
        idx = torch.nonzero(classes == present[j]).flatten()
        keep = torch.cat([keep, idx[nms(boxes[idx], scores[idx], iou_threshold)]])
    return keep[torch.sort(scores[keep], descending=True, stable=True)[1]]


@torch.jit.script
def _sample_coords(start: Tensor, bin_size: Tensor, pooled: int, grid: int, limit: int) -> list[Tensor]:
    """Per roi, the bilinear taps of pooled x grid sample points along one axis:
    (low index, high index, low weight, high weight), each [R, pooled * grid]; torchvision's
    bilinear_interpolate rules (outside [-1, limit] gives 0, clamped to the last pixel)."""
    steps = torch.arange(pooled, dtype=start.dtype, device=start.device)
    sub = (torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5) / grid
    pos = (steps[:, None] + sub[None, :]).reshape(-1)
    y = start[:, None] + pos[None, :] * bin_size[:, None]
    inside = (y >= -1.0) & (y <= float(limit))
    y = y.clamp(min=0.0)
    low = torch.floor(y).to(torch.long)
    at_end = low >= limit - 1
    low = torch.where(at_end, torch.full_like(low, limit - 1), low)
    high = torch.where(at_end, low, low + 1)
    y = torch.where(at_end, low.to(y.dtype), y)
    frac = y - low.to(y.dtype)
    inside_f = inside.to(y.dtype)
    return [low, high, (1.0 - frac) * inside_f, frac * inside_f]


@torch.jit.script
def _roi_align_grid(
    features: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_h: int,
    pooled_w: int,
    grid_h: int,
    grid_w: int,
    aligned: bool,
) -> Tensor:
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    height, width = features.size(2), features.size(3)
    ty = _sample_coords(y1, roi_h / pooled_h, pooled_h, grid_h, height)
    tx = _sample_coords(x1, roi_w / pooled_w, pooled_w, grid_w, width)
    batch = rois[:, 0].to(torch.long)
    r = rois.size(0)
    out = torch.zeros(
        [r, features.size(1), pooled_h * grid_h, pooled_w * grid_w],
        dtype=features.dtype,
        device=features.device,
    )
    for iy in range(2):
        for ix in range(2):
            # features[b, :, y, x] for every (roi, y tap, x tap): [R, PHg, PWg, C]
            v = features[batch[:, None, None], :, ty[iy][:, :, None], tx[ix][:, None, :]]
            w = ty[iy + 2][:, :, None] * tx[ix + 2][:, None, :]
            out = out + (v * w[:, :, :, None]).permute(0, 3, 1, 2)
    out = out.reshape(r, features.size(1), pooled_h, grid_h, pooled_w, grid_w)
    return out.sum(dim=(3, 5)) / float(max(grid_h * grid_w, 1))


@torch.jit.script
def roi_align(
    features: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of `features` [N, C, H, W] over `rois` [R, 5] (batch index, x1, y1, x2, y2):
    [R, C, pooled_height, pooled_width], as torchvision.ops.roi_align computes it."""
    r = rois.size(0)
    if r == 0:
        return torch.zeros(
            [0, features.size(1), pooled_height, pooled_width], dtype=features.dtype, device=features.device
        )
    rois = rois.to(features.dtype)
    # Loops carry their result (no list appends): the graph rewriter re-parses this function's IR,
    # and its parser does not read loops without outputs.
    out = torch.zeros(
        [0, features.size(1), pooled_height, pooled_width], dtype=features.dtype, device=features.device
    )
    if sampling_ratio > 0:
        step = 256  # rois gathered at once: bounds the [R, C, PH*g, PW*g] intermediate
        for s in range(0, r, step):
            part = _roi_align_grid(
                features,
                rois[s : s + step],
                spatial_scale,
                pooled_height,
                pooled_width,
                sampling_ratio,
                sampling_ratio,
                aligned,
            )
            out = torch.cat([out, part])
        return out
    # Adaptive sampling: each roi has its own grid, ceil(roi size / pooled size) points per bin.
    offset = 0.5 if aligned else 0.0
    for i in range(r):
        roi = rois[i : i + 1]
        roi_w = float(roi[0, 3] * spatial_scale - offset - (roi[0, 1] * spatial_scale - offset))
        roi_h = float(roi[0, 4] * spatial_scale - offset - (roi[0, 2] * spatial_scale - offset))
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        gh = math.ceil(roi_h / pooled_height)
        gw = math.ceil(roi_w / pooled_width)
        if gh <= 0 or gw <= 0:
            part = torch.zeros(
                [1, features.size(1), pooled_height, pooled_width],
                dtype=features.dtype,
                device=features.device,
            )
        else:
            part = _roi_align_grid(features, roi, spatial_scale, pooled_height, pooled_width, gh, gw, aligned)
        out = torch.cat([out, part])
    return out


# The replacements, by native operator: the TorchScript function whose inlined graph replaces it.
REPLACEMENTS = {"torchvision::nms": nms, "torchvision::roi_align": roi_align}

_shim_library: Any = None  # keeps the schemas registered for the life of the process
_native: bool | None = None


def native_available() -> bool:
    """Whether torchvision's own operators are loaded in this process (so the replacements can
    be checked against them). Imports torchvision once; a build that cannot load beside this
    torch (e.g. a CUDA wheel beside the CPU torch) counts as absent."""
    global _native
    if _native is None:
        try:
            import torchvision  # noqa: F401

            torch.ops.torchvision.nms  # noqa: B018 (the lookup raises when the library is absent)
            _native = True
        except Exception:  # any failure of a broken install (RuntimeError, OSError, ImportError)
            _native = False
    return _native


def ensure_schemas() -> None:
    """Make files that call torchvision's operators loadable here (torch.jit.load resolves every
    operator): torchvision's own library when it loads, otherwise its schemas implemented by the
    functions above, registered once in this process (never in the engine)."""
    global _shim_library
    if native_available() or _shim_library is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        lib.define(schema)
    lib.impl("nms", lambda d, s, t: nms(d, s, t), "CompositeExplicitAutograd")
    lib.impl(
        "roi_align",
        lambda f, r, sc, ph, pw, sr, al: roi_align(f, r, sc, int(ph), int(pw), sr, al),
        "CompositeExplicitAutograd",
    )
    _shim_library = lib


def _graphs(module: torch.jit.ScriptModule) -> Iterator[torch.Graph]:
    seen: set[str] = set()
    for sub in module.modules():
        c: Any = sub._c
        qual = c._type().qualified_name()
        if qual in seen:
            continue  # methods belong to the type; one rewrite serves every instance
        seen.add(qual)
        for name in c._method_names():
            yield c._get_method(name).graph


def _kinds(block: Any) -> Iterator[str]:
    for node in block.nodes():
        yield node.kind()
        for sub in node.blocks():
            yield from _kinds(sub)


def foreign_ops(module: torch.jit.ScriptModule) -> list[str]:
    """Operators in the module's graphs (inlined) that are not libtorch's, sorted."""
    found: set[str] = set()
    for g in _graphs(module):
        inlined = g.copy()
        torch._C._jit_pass_inline(inlined)
        found.update(k for k in _kinds(inlined) if k.split("::")[0] not in LIBTORCH_NAMESPACES)
    return sorted(found)


def _inlined(fn: Any) -> str:
    """The function's graph with its own calls inlined, as IR text (the rewriter's input)."""
    g = fn.graph.copy()
    torch._C._jit_pass_inline(g)
    torch._C._jit_pass_dce(g)  # the inlined functions' constants would not parse back
    return str(g)


def _pattern(op: str, arity: int) -> str:
    args = ", ".join(f"%a{i}" for i in range(arity))
    return f"graph({args}):\n  %r = {op}({args})\n  return (%r)"


def replace_native_ops(module: torch.jit.ScriptModule) -> tuple[torch.jit.ScriptModule, list[str]]:
    """A copy of `module` in which every call to an operator of REPLACEMENTS, in every method of
    it and its submodules, is the replacement's graph instead; and the operators replaced.

    Methods are inlined first (function calls such as torchvision.ops.batched_nms then sit in the
    method's own graph), so the saved copy no longer refers to the native operators anywhere. The
    copy is a save/load round trip: the compiled types of a scripted class are shared by every
    module scripted from it in this process, and rewriting them would change those too.
    LoaderError names the operators that remain outside libtorch."""
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    module = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
    before = foreign_ops(module)
    for g in _graphs(module):
        torch._C._jit_pass_inline(g)
        for op, fn in REPLACEMENTS.items():
            arity = len(fn.schema.arguments)  # type: ignore[attr-defined]
            torch._C._jit_pass_custom_pattern_based_rewrite_graph(_pattern(op, arity), _inlined(fn), g)
    left = foreign_ops(module)
    if left:
        raise LoaderError(
            f"the model calls operators the engine does not have: {', '.join(left)} (libtorch has only "
            f"aten/prim operators; groundwatch replaces {', '.join(REPLACEMENTS)}). Replace them in the "
            "model with plain torch code, or export it without them"
        )
    return module, [op for op in before if op in REPLACEMENTS]
