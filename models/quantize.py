"""`groundwatch quantize`: an int8 variant of a contract-1 detector (post-training static quantisation).

Eager-mode PTQ for the x86 (fbgemm) backend: the TorchScript detector's weights are loaded into a
:class:`QuantizableCenterNet` (same layers as :class:`models.detector.CenterNet`, plus Quant/DeQuant
stubs and a quantised add), conv + batch-norm (+ ReLU) are fused, observers are calibrated on
training-distribution tiles (``models.train.make_tiles``, seeds from ``TRAIN_SEED_BASE``, never the
held-out evaluation seeds), then converted to int8. Normalisation (``log1p``) and the decoding
(sigmoid, max-pool peaks, top-K) stay float inside the model, so the file keeps contract 1: uint16
``[B, C, H, W]`` in, ``[B, K, 6]`` float32 out. The result is scripted and saved with the source's
``groundwatch.json`` plus ``provenance`` (source sha256, method, calibration) and runs in the
engine unchanged (libtorch carries the quantized CPU kernels).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import ModelsError

METHOD = "ptq-static-int8-fbgemm"
QUANT_ENGINE = "fbgemm"  # the x86 backend (what libtorch's CPU build uses for quantized conv)


@dataclass(frozen=True)
class QuantizeConfig:
    calibration_tiles: int = 64
    tile_px: int = 192
    batch_size: int = 16


def _quantizable_class() -> Any:
    """Defined lazily so that importing this module does not import torch."""
    import torch
    from torch import Tensor, nn
    from torch.ao.quantization import DeQuantStub, QuantStub

    from models.detector import CenterNet

    class QuantizableCenterNet(CenterNet):
        """CenterNet whose backbone and heads run quantised; normalise and decode stay float."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.quant = QuantStub()
            self.dequant = DeQuantStub()
            self.skip_add = nn.quantized.FloatFunctional()

        def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            q = self.quant(self.normalise(x))
            f = self.block4(self.down4(self.stem(q)))
            g = self.block8(self.down8(f))
            g = torch.nn.functional.interpolate(
                self.lateral8(g), size=(f.shape[2], f.shape[3]), mode="nearest"
            )
            f = self.fuse(self.skip_add.add(f, g))
            return self.dequant(self.heat(f)), self.dequant(self.size(f)), self.dequant(self.offset(f))

    return QuantizableCenterNet


def float_model_from_script(scripted: Any, meta: dict[str, Any]) -> Any:
    """A QuantizableCenterNet (float, eval) holding the weights of a scripted CenterNet."""
    state = {k: v for k, v in scripted.state_dict().items()}
    if "stem.0.weight" not in state or "heat.weight" not in state:
        raise ModelsError("cannot quantize: the model is not a groundwatch CenterNet (no stem/heat layers)")
    width = int(state["down4.0.weight"].shape[0])
    cls = _quantizable_class()
    model = cls(
        num_classes=len(meta["classes"]),
        bands=int(meta["bands"]),
        max_detections=int(meta["max_detections"]),
        width=width,
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith(("quant", "dequant", "skip_add"))]:
        raise ModelsError(
            f"cannot quantize: weights do not fit the detector layout (missing {missing}, "
            f"unexpected {unexpected})"
        )
    model.eval()
    return model


def calibration_batches(config: QuantizeConfig, bands: int) -> list[Any]:
    """uint16 tiles of the training distribution, as int32 batches (torch has no uint16 math)."""
    import numpy as np
    import torch

    from models.train import TrainConfig, make_tiles

    samples = make_tiles(TrainConfig(tiles=config.calibration_tiles, tile_px=config.tile_px, bands=bands))
    batches = []
    for i in range(0, len(samples), config.batch_size):
        chunk = np.stack([s.image for s in samples[i : i + config.batch_size]]).astype(np.int32)
        batches.append(torch.from_numpy(chunk))
    return batches


def quantize_model(scripted: Any, meta: dict[str, Any], config: QuantizeConfig | None = None) -> Any:
    """Fuse, calibrate and convert; returns the scripted int8 module."""
    import torch
    from torch.ao.quantization import convert, fuse_modules, get_default_qconfig, prepare

    config = config or QuantizeConfig()
    if QUANT_ENGINE not in torch.backends.quantized.supported_engines:
        raise ModelsError(
            f"cannot quantize: this torch has no {QUANT_ENGINE} engine "
            f"({torch.backends.quantized.supported_engines})"
        )
    torch.backends.quantized.engine = QUANT_ENGINE
    model = float_model_from_script(scripted, meta)
    for name in ("stem", "down4", "block4", "down8", "block8", "fuse"):
        fuse_modules(model, [[f"{name}.0", f"{name}.1", f"{name}.2"]], inplace=True)
    with warnings.catch_warnings():
        # torch.ao's eager-mode quantisation warns that it is deprecated (for torchao) and that
        # quantized tensors are; both still work in torch 2.13 and its libtorch, which the engine runs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.qconfig = get_default_qconfig(QUANT_ENGINE)
        prepare(model, inplace=True)
        with torch.no_grad():
            for batch in calibration_batches(config, int(meta["bands"])):
                model(batch)
        convert(model, inplace=True)
        return torch.jit.script(model)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def quantize_file(source: Path, out: Path, config: QuantizeConfig | None = None) -> dict[str, Any]:
    """Quantize a contract-1 TorchScript file into ``out``; returns the metadata written."""
    from models.archive import load_model, save_model

    config = config or QuantizeConfig()
    scripted, meta = load_model(source)
    started = time.monotonic()
    quantized = quantize_model(scripted, meta, config)
    meta = dict(meta)
    meta["provenance"] = {
        "source_sha256": sha256_of(source),
        "source_file": Path(source).name,
        "method": METHOD,
        "calibration": (
            f"{config.calibration_tiles} training tiles of {config.tile_px} px "
            "(models.train.make_tiles, seeds from TRAIN_SEED_BASE)"
        ),
        "seconds": round(time.monotonic() - started, 1),
    }
    save_model(quantized, out, meta)
    return meta
