"""A compact anchor-free detector (CenterNet style) whose decoding is inside the model.

TorchScript contract 1 (see docs/models.md): ``forward(x: Tensor[B, C, H, W]) -> Tensor[B, K, 6]``.
The input is raw digital numbers (uint8, uint16 or float32; the values are what count, the dtype
only carries them); H and W must be multiples of 4. Each output row is
``x1, y1, x2, y2, score, class_id`` in tile pixels (pixel edges), rows sorted by score descending,
unused rows all zero (score 0). Normalisation (log1p, then a fixed affine) is inside the model.

Layout: stride-2 stem, stride-4 trunk, a stride-8 context branch upsampled back, and 1x1 heads
for a per-class centre heatmap, log box size (pixels) and sub-cell centre offset at stride 4.
Decoding: sigmoid, 3x3 max-pool peak selection, top-K over classes x cells.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STRIDE = 4
CONTRACT = 1


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CenterNet(nn.Module):
    """Training and serving module. `heads(x)` gives the raw maps, `forward(x)` the detections."""

    log_dn_mean: Tensor
    log_dn_std: Tensor

    def __init__(
        self,
        num_classes: int = 2,
        bands: int = 1,
        max_detections: int = 100,
        width: int = 32,
        log_dn_mean: float = 5.0,
        log_dn_std: float = 1.5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bands = bands
        self.max_detections = max_detections
        self.stride = STRIDE
        self.register_buffer("log_dn_mean", torch.tensor(float(log_dn_mean)))
        self.register_buffer("log_dn_std", torch.tensor(float(log_dn_std)))
        w = width
        self.stem = _conv(bands, w // 2, stride=2)  # /2
        self.down4 = _conv(w // 2, w, stride=2)  # /4
        self.block4 = _conv(w, w)
        self.down8 = _conv(w, 2 * w, stride=2)  # /8
        self.block8 = _conv(2 * w, 2 * w, dilation=2)
        self.lateral8 = nn.Conv2d(2 * w, w, 1)
        self.fuse = _conv(w, w)
        self.heat = nn.Conv2d(w, num_classes, 1)
        self.size = nn.Conv2d(w, 2, 1)
        self.offset = nn.Conv2d(w, 2, 1)
        with torch.no_grad():
            self.heat.bias.fill_(-2.19)  # type: ignore[union-attr]  # prior 0.1, as in CenterNet
            self.size.bias.fill_(2.3)  # type: ignore[union-attr]  # exp(2.3) ~ 10 px

    def normalise(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).clamp(min=0.0)
        return (torch.log1p(x) - self.log_dn_mean) / self.log_dn_std

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps at stride 4: heat logits [B, N, h, w], log size [B, 2, h, w], offset [B, 2, h, w]."""
        f = self.block4(self.down4(self.stem(self.normalise(x))))
        g = self.block8(self.down8(f))
        g = F.interpolate(self.lateral8(g), size=(f.shape[2], f.shape[3]), mode="nearest")
        f = self.fuse(f + g)
        return self.heat(f), self.size(f), self.offset(f)

    def decode(
        self, heat_logits: Tensor, log_size: Tensor, offset: Tensor, height: int, width: int
    ) -> Tensor:
        b, n, h, w = heat_logits.shape
        heat = torch.sigmoid(heat_logits)
        peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
        heat = heat * (peaks == heat).to(heat.dtype)
        flat = heat.reshape(b, n * h * w)
        k = min(self.max_detections, n * h * w)
        scores, index = torch.topk(flat, k, dim=1, largest=True, sorted=True)
        cls = torch.div(index, h * w, rounding_mode="floor")
        cell = index - cls * (h * w)
        ys = torch.div(cell, w, rounding_mode="floor")
        xs = cell - ys * w
        gather = cell.unsqueeze(1).expand(b, 2, k)
        size = log_size.reshape(b, 2, h * w).gather(2, gather).clamp(-2.0, 7.0).exp()
        off = offset.reshape(b, 2, h * w).gather(2, gather)
        cx = (xs.to(torch.float32) + off[:, 0]) * self.stride
        cy = (ys.to(torch.float32) + off[:, 1]) * self.stride
        bw, bh = size[:, 0], size[:, 1]
        out = torch.stack(
            [
                (cx - bw / 2).clamp(0.0, float(width)),
                (cy - bh / 2).clamp(0.0, float(height)),
                (cx + bw / 2).clamp(0.0, float(width)),
                (cy + bh / 2).clamp(0.0, float(height)),
                scores,
                cls.to(torch.float32),
            ],
            dim=2,
        )
        out = out * (scores > 0).to(out.dtype).unsqueeze(2)
        if k < self.max_detections:
            out = torch.cat([out, torch.zeros(b, self.max_detections - k, 6, dtype=out.dtype)], dim=1)
        return out

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError("expected input [B, C, H, W]")
        if x.shape[1] != self.bands:
            raise ValueError("wrong number of bands for this model")
        if x.shape[2] % self.stride != 0 or x.shape[3] % self.stride != 0:
            raise ValueError("H and W must be multiples of 4")
        heat, size, offset = self.heads(x)
        return self.decode(heat, size, offset, x.shape[2], x.shape[3])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
