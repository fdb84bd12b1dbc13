"""The TorchScript NMS and RoIAlign against independent references (and torchvision's own, where
it loads), and the graph rewrite that puts them in place of torchvision's native operators."""

from __future__ import annotations

import io

import numpy as np
import pytest
import redis
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groundwatch import keys
from groundwatch.ai import Engine, EngineError
from loaders import LoaderError, detops
from tests.loaders.detectors import TwoStage

detops.ensure_schemas()
NATIVE = detops.native_available()
needs_torchvision = pytest.mark.skipif(
    not NATIVE, reason="torchvision's native operators do not load beside this torch (CUDA-only wheel)"
)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Greedy NMS written out box by box, in float32 like torchvision's CPU kernel."""
    b = boxes.astype(np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep: list[int] = []
    for i in sorted(range(len(b)), key=lambda i: -scores[i]):
        ok = True
        for j in keep:
            w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = w * h
            if inter / (area[i] + area[j] - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def reference_roi_align(
    f: np.ndarray, rois: np.ndarray, scale: float, ph: int, pw: int, ratio: int, aligned: bool
) -> np.ndarray:
    """RoIAlign sample by sample in float64, following torchvision's documented CPU rules."""
    _n, c, height, width = f.shape
    out = np.zeros((len(rois), c, ph, pw))
    for r, roi in enumerate(rois):
        off = 0.5 if aligned else 0.0
        x0, y0 = roi[1] * scale - off, roi[2] * scale - off
        rw, rh = roi[3] * scale - off - x0, roi[4] * scale - off - y0
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = ratio if ratio > 0 else int(np.ceil(rh / ph))
        gw = ratio if ratio > 0 else int(np.ceil(rw / pw))
        for p in range(ph):
            for q in range(pw):
                acc = np.zeros(c)
                for iy in range(gh):
                    y = y0 + p * rh / ph + (iy + 0.5) * rh / ph / gh
                    for ix in range(gw):
                        x = x0 + q * rw / pw + (ix + 0.5) * rw / pw / gw
                        if y < -1 or y > height or x < -1 or x > width:
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        yl, xl = int(y), int(x)
                        if yl >= height - 1:
                            yl = yh = height - 1
                            y = float(yl)
                        else:
                            yh = yl + 1
                        if xl >= width - 1:
                            xl = xh = width - 1
                            x = float(xl)
                        else:
                            xh = xl + 1
                        ly, lx = y - yl, x - xl
                        img = f[int(roi[0])]
                        acc += (1 - ly) * (1 - lx) * img[:, yl, xl] + (1 - ly) * lx * img[:, yl, xh]
                        acc += ly * (1 - lx) * img[:, yh, xl] + ly * lx * img[:, yh, xh]
                out[r, :, p, q] = acc / max(gh * gw, 1)
    return out


boxes_and_scores = st.integers(0, 60).flatmap(
    lambda n: st.tuples(
        st.lists(
            st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0.5, 40), st.floats(0.5, 40)),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True),  # no ties
        st.floats(0.05, 0.95),
    )
)


def as_tensors(
    case: tuple[list[tuple[float, ...]], list[int], float],
) -> tuple[torch.Tensor, torch.Tensor, float]:
    raw, ranks, thr = case
    xywh = np.array(raw, dtype=np.float32).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return torch.from_numpy(boxes), torch.tensor(ranks, dtype=torch.float32) / 1e6, thr


@settings(max_examples=60, deadline=None)
@given(boxes_and_scores)
def test_nms_keeps_what_greedy_nms_keeps(case: tuple[list[tuple[float, ...]], list[int], float]) -> None:
    boxes, scores, thr = as_tensors(case)
    assert detops.nms(boxes, scores, thr).tolist() == reference_nms(boxes.numpy(), scores.numpy(), thr)


@needs_torchvision
@settings(max_examples=60, deadline=None)
@given(boxes_and_scores)
def test_nms_equals_torchvision(case: tuple[list[tuple[float, ...]], list[int], float]) -> None:
    import torchvision

    boxes, scores, thr = as_tensors(case)
    assert detops.nms(boxes, scores, thr).tolist() == torchvision.ops.nms(boxes, scores, thr).tolist()


def test_batched_nms_suppresses_only_within_a_class() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 0, 1, 0])
    assert detops.batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]


ROIS = torch.tensor(
    [[0, 1.0, 2, 10, 12], [1, -3, -2, 30, 25], [0, 5, 5, 5.2, 5.3], [1, 18, 15, 40, 40], [0, 0, 0, 23, 19]]
)


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("ratio", [2, 3, 0])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_equals_the_reference(scale: float, ratio: int, aligned: bool) -> None:
    f = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    got = detops.roi_align(f, ROIS, scale, 3, 4, ratio, aligned).numpy()
    want = reference_roi_align(f.double().numpy(), ROIS.double().numpy(), scale, 3, 4, ratio, aligned)
    assert np.abs(got - want).max() < 1e-5


@needs_torchvision
@pytest.mark.parametrize("ratio", [2, 0])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_equals_torchvision(ratio: int, aligned: bool) -> None:
    import torchvision

    f = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    want = torchvision.ops.roi_align(f, ROIS, (3, 4), 0.5, ratio, aligned)
    assert (detops.roi_align(f, ROIS, 0.5, 3, 4, ratio, aligned) - want).abs().max() < 1e-5


def scripted_two_stage() -> torch.jit.ScriptModule:
    return torch.jit.script(TwoStage(in_channels=1, num_classes=3).eval())


def tiles() -> list[torch.Tensor]:
    rng = np.random.default_rng(3)
    x = rng.integers(100, 2000, (2, 1, 64, 64)).astype(np.float32)
    x[0, 0, 20:26, 30:40] = 40000  # an object, so proposals are not all noise
    return list(torch.from_numpy(x))


def test_the_rewrite_removes_torchvisions_operators_and_computes_the_same() -> None:
    m = scripted_two_stage()
    with torch.no_grad():
        before = m(tiles())
    assert detops.foreign_ops(m) == ["torchvision::nms", "torchvision::roi_align"]
    fixed, replaced = detops.replace_native_ops(m)
    assert replaced == ["torchvision::nms", "torchvision::roi_align"]
    assert detops.foreign_ops(fixed) == [] and detops.foreign_ops(m) == replaced  # m is left alone
    buf = io.BytesIO()
    torch.jit.save(fixed, buf)
    assert b"torchvision::" not in buf.getvalue() and b"ops.torchvision" not in buf.getvalue()
    with torch.no_grad():
        after = torch.jit.load(io.BytesIO(buf.getvalue()))(tiles())
    for a, b in zip(before, after, strict=True):
        assert a["labels"].tolist() == b["labels"].tolist()
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-5) and torch.allclose(a["scores"], b["scores"])


def test_an_operator_with_no_replacement_is_named() -> None:
    lib = torch.library.Library("gwtest", "DEF")
    lib.define("frobnicate(Tensor x) -> Tensor")
    lib.impl("frobnicate", lambda x: x + 1, "CompositeExplicitAutograd")

    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.gwtest.frobnicate(x)

    with pytest.raises(LoaderError, match="gwtest::frobnicate"):
        detops.replace_native_ops(torch.jit.script(Odd()))


class ListIn(torch.nn.Module):
    """The engine runs one tensor in, one out: a thin tensor face on the list interface."""

    def __init__(self, inner: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.inner([x[i] for i in range(x.size(0))])[0]
        return torch.cat([d["boxes"], d["scores"][:, None]], dim=1)


def test_the_engine_refuses_torchvision_operators_and_runs_the_replacements(engine: redis.Redis) -> None:
    eng = Engine(engine)
    raw = torch.jit.script(ListIn(scripted_two_stage()))
    buf = io.BytesIO()
    torch.jit.save(raw, buf)
    with pytest.raises(EngineError, match="Unknown builtin op: torchvision::nms"):
        eng.model_store(keys.model("t", "raw", 1), buf.getvalue())
    fixed, _ops = detops.replace_native_ops(raw)
    buf = io.BytesIO()
    torch.jit.save(fixed, buf)
    eng.model_store(keys.model("t", "fixed", 1), buf.getvalue())
    batch = torch.stack(tiles()[:1])
    got = eng.run(keys.model("t", "fixed", 1), batch.numpy(), keys.model("t", "fixed", 1))
    with torch.no_grad():
        want = raw(batch).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
