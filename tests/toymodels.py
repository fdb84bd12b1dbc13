"""Small TorchScript models that honour (or deliberately break) the detector contract.

They are exact: a toy detector reports one box around the brightest pixel of the tile, so a
test knows where every detection must land.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from torch import Tensor


class BrightestPixel(torch.nn.Module):
    """[B, C, H, W] -> [B, K, 6]: one box of `half` pixels around the brightest pixel of band 0.

    Score is 0.9 when that pixel is above `threshold`, else no detection; class is `cls`.
    """

    def __init__(self, k: int = 4, half: int = 4, threshold: float = 1000.0, cls: int = 0) -> None:
        super().__init__()
        self.k = k
        self.margin = half
        self.threshold = threshold
        self.cls = cls

    def forward(self, x: Tensor) -> Tensor:
        b, _, _, w = x.shape
        band = x[:, 0].to(torch.float32).reshape(b, -1)
        peak, idx = band.max(dim=1)
        row = torch.div(idx, w, rounding_mode="floor").to(torch.float32)
        col = (idx % w).to(torch.float32)
        out = torch.zeros(b, self.k, 6)
        live = peak > self.threshold
        out[:, 0, 0] = col - self.margin
        out[:, 0, 1] = row - self.margin
        out[:, 0, 2] = col + self.margin
        out[:, 0, 3] = row + self.margin
        out[:, 0, 4] = torch.where(live, torch.full_like(peak, 0.9), torch.zeros_like(peak))
        out[:, 0, 5] = float(self.cls)
        out[:, 0, :4] = out[:, 0, :4] * live.to(torch.float32).unsqueeze(1)
        return out


class WrongShape(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], 5)


class FloatOnly(torch.nn.Module):
    """Runs only on float input: a uint16 tile makes conv2d fail inside the engine."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return torch.zeros(x.shape[0], 4, 6) + y.mean() * 0


def metadata(**overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "contract": 1,
        "classes": ["ship", "platform"],
        "bands": 1,
        "dtype": "uint16",
        "tile_size": 64,
        "max_detections": 4,
    }
    meta.update(overrides)
    return meta


def archive(module: torch.nn.Module, meta: dict[str, Any] | None = None) -> bytes:
    """A TorchScript archive of `module` carrying groundwatch.json (None: no metadata file)."""
    buf = io.BytesIO()
    extra = {} if meta is None else {"groundwatch.json": json.dumps(meta)}
    torch.jit.save(torch.jit.script(module), buf, _extra_files=extra)
    return buf.getvalue()
