"""The detector's TorchScript contract: shape, dtype, sorting, padding, input dtypes, batching."""

from __future__ import annotations

import pytest
import torch

from models.detector import CenterNet, count_parameters

K = 30


@pytest.fixture(scope="module")
def scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    model = CenterNet(max_detections=K)
    # make the untrained heads produce spread-out scores instead of a flat prior
    with torch.no_grad():
        bias = model.heat.bias
        assert bias is not None
        bias.zero_()
    return torch.jit.script(model.eval())


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(20, 400, (3, 1, 64, 96), generator=g)
    x[1, 0, 20:28, 30:34] = 30000  # a bright object in one tile
    return x.to(torch.uint16)


def check_contract(out: torch.Tensor, batch: int, height: int, width: int) -> None:
    assert out.shape == (batch, K, 6)
    assert out.dtype == torch.float32
    scores = out[..., 4]
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "rows must be sorted by score, descending"
    x1, y1, x2, y2, cls = out[..., 0], out[..., 1], out[..., 2], out[..., 3], out[..., 5]
    live = scores > 0
    assert bool((x1[live] <= x2[live]).all() and (y1[live] <= y2[live]).all())
    assert bool((x1 >= 0).all() and (x2 <= width).all() and (y1 >= 0).all() and (y2 <= height).all())
    assert set(cls[live].unique().tolist()) <= {0.0, 1.0}
    assert bool((out[~live] == 0).all()), "padding rows must be all zero"


def test_output_contract(scripted, tiles) -> None:
    out = scripted(tiles)
    check_contract(out, 3, 64, 96)
    assert bool((out[..., 4] > 0).any())


def test_small_input_is_padded_with_zero_rows(scripted) -> None:
    out = scripted(torch.full((2, 1, 8, 8), 100, dtype=torch.uint16))  # 2 classes x 2 x 2 cells < K
    check_contract(out, 2, 8, 8)
    assert bool((out[:, 8:] == 0).all())


def test_input_dtypes_give_the_same_result(scripted, tiles) -> None:
    small = (tiles.to(torch.int32) // 2).clamp(max=255)  # values that fit uint8
    ref = scripted(small.to(torch.float32))
    for dtype in (torch.uint8, torch.uint16, torch.int32):
        torch.testing.assert_close(scripted(small.to(dtype)), ref)


def test_batch_equals_per_sample(scripted, tiles) -> None:
    together = scripted(tiles)
    for i in range(tiles.shape[0]):
        alone = scripted(tiles[i : i + 1])
        torch.testing.assert_close(together[i : i + 1, :, 4], alone[..., 4], atol=1e-5, rtol=1e-4)
        top = alone[0, :, 4] > 1e-3
        torch.testing.assert_close(together[i][top], alone[0][top], atol=1e-3, rtol=1e-4)


def test_bad_shapes_raise(scripted) -> None:
    with pytest.raises(torch.jit.Error, match="multiples of 4"):
        scripted(torch.zeros(1, 1, 30, 32))
    with pytest.raises(torch.jit.Error, match="bands"):
        scripted(torch.zeros(1, 2, 32, 32))


def test_model_is_small() -> None:
    assert count_parameters(CenterNet()) < 300_000
