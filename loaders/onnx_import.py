"""ONNX import: an ONNX model file becomes a contract-1 TorchScript version at load time.

The engine runs TorchScript only (its ONNX backend is absent, as RedisAI's is without ONNX
Runtime; docs/models.md says why). So `groundwatch load model.onnx`:

1. reads the ONNX bytes and their sha256, checks the graph (onnx.checker) and its interface: one
   input ``[B, C, H, W]`` (B free or 1, C the metadata's bands, H and W free or the tile size), one
   float output;
2. takes the metadata from the file's ``metadata_props["groundwatch.json"]`` (the same JSON a
   TorchScript file carries) or from ``--metadata FILE.json``;
3. lists every node whose operator onnx2torch cannot convert at the file's opset and refuses the
   file naming them all, before converting anything;
4. converts with onnx2torch, traces the result on one tile ``[1, C, T, T]`` and wraps it in a scripted
   module that casts the input to the ONNX input's type and runs the batch tile by tile (a trace
   freezes the shapes the ONNX graph computes, so it is only valid for the shape it was traced
   at; per-tile keeps any batch the engine forms correct);
5. saves that with ``groundwatch.json`` (the metadata plus ``provenance``) and runs the saved bytes,
   reloaded, against ONNX Runtime on the same sample tiles (a deterministic warm-up batch, plus
   ``--compare-samples`` tiles when given). The output rows are paired as the contract defines
   them (sorted by score; rows whose scores tie within the tolerance may come in either order, and
   a near-tie at the K-th row may pick either candidate) and the maximum absolute difference of
   any paired value must be within the tolerance, else the file is refused with the figures.

The loader stores the converted blob like any TorchScript version and keeps the original ONNX
bytes beside its registry record (keys.registry_originals).

A raw head that is not contract 1 (a YOLO export) goes through steps 1, 3 and 4 with the
adapter's channels and tile size, is compared with ONNX Runtime value by value on what the
adapter feeds it, and is then wrapped by the adapter (`adapt_onnx_file`, loaders/adapters.py).
An export of a torchvision-style detector (one image, or a batch of one, in; boxes, scores, labels
out) has NMS and sizes decided at run time; it takes its own path (loaders/onnx_torchvision.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
import json
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from groundwatch import modelmeta
from groundwatch.modelmeta import ModelMetadata
from loaders import LoaderError
from loaders.archive import ModelFile, read_metadata

# Absolute, in the output's own units: tile pixels for the box columns, probability for scores.
# ONNX Runtime and libtorch differ by ~6e-5 px on the shipped detector's 512 px boxes (float32
# rounding of different convolution kernels); a wrong conversion is off by whole pixels.
DEFAULT_PARITY_TOLERANCE = 1e-3
METADATA_PROP = modelmeta.METADATA_FILE
IMPORT_METHOD = "onnx2torch"
PARITY_BATCH = 2
# What to load instead of an ONNX export of a torchvision-style detector that is refused: the
# refusals for its interface, its operators and the behavioural checks end with it.
TORCHVISION_ONNX_INSTEAD = (
    "load the TorchScript model instead (torch.jit.script(model).save('det.pt'), then `groundwatch "
    "load det.pt --adapter torchvision ...`), or export the raw head without NMS and load it with --adapter yolo"
)
# Why an ONNX export of a torchvision-style detector is refused, when it is (docs/models.md, "With
# `--adapter torchvision`"): {why} names the operator or the failed check.
TORCHVISION_ONNX_REFUSED = (
    "{path}: this ONNX export of a torchvision-style detector cannot be served soundly: {why}. To "
    "serve the detector, " + TORCHVISION_ONNX_INSTEAD
)
# Detections compared per image between ONNX Runtime and the converted torchvision-style graph.
TORCHVISION_COMPARED = "detections"
# Operators onnx2torch converts into torchvision calls: with no loadable torchvision (no CPU build
# for torch 2.13) they are reported as unsupported instead of failing at run time.
_TORCHVISION_OPS = frozenset({"NonMaxSuppression", "RoiAlign"})


@dataclass(frozen=True)
class Parity:
    """How closely the converted TorchScript reproduces ONNX Runtime on the sample tiles.

    `compared` is "contract-1 rows" (paired rows, module docstring; the box, score and class
    figures are set) or "output values" (a raw head under an adapter, compared value by value)."""

    tiles: int
    compared: str
    count: int  # rows paired, or values compared
    max_abs_diff: float
    tolerance: float
    max_box_diff: float | None = None
    max_score_diff: float | None = None
    class_mismatches: int | None = None

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if v is not None}, "passed": self.passed}

    def describe(self) -> str:
        detail = ""
        if self.max_box_diff is not None:
            detail = (
                f" (boxes {self.max_box_diff:.3g} px, scores {self.max_score_diff:.3g}, "
                f"{self.class_mismatches} class mismatches)"
            )
        return (
            f"max abs difference {self.max_abs_diff:.3g}{detail} over {self.count} {self.compared} of "
            f"{self.tiles} tiles, tolerance {self.tolerance:g}"
        )


@dataclass(frozen=True)
class Converted:
    """An ONNX graph as a scripted module (traced per tile), with the file it came from."""

    module: torch.jit.ScriptModule
    onnx_blob: bytes
    onnx_sha256: str
    opset: int

    def provenance(self, parity: Parity) -> dict[str, Any]:
        """The version record's account of the import (the bytes themselves are kept beside it)."""
        return {
            "format": "onnx",
            "method": f"{IMPORT_METHOD} {_version('onnx2torch')} import, traced per tile",
            "onnx_sha256": self.onnx_sha256,
            "onnx_bytes": len(self.onnx_blob),
            "onnx_opset": self.opset,
            "onnxruntime": _version("onnxruntime"),
            "parity": parity.as_dict(),
        }


def read_onnx_file(
    path: str | Path,
    *,
    tolerance: float = DEFAULT_PARITY_TOLERANCE,
    samples: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
) -> ModelFile:
    """A contract-1 ONNX file converted, checked against ONNX Runtime and packaged as the loader
    stores it (module docstring); `original` and `conversion` of the result are the ONNX bytes and
    the record's provenance.

    LoaderError names what is wrong: an unreadable or invalid graph, missing metadata, an
    interface that is not contract 1, the unconvertible operators, or the parity figures."""
    _check_tolerance(tolerance)
    blob, proto = _read(path)
    meta = _metadata(proto, metadata, str(path))
    converted = _convert_proto(blob, proto, meta.bands, meta.tile_size, str(path))
    # The blob says where it came from, so a copy fetched with AI.MODELGET BLOB still does.
    stamp = {"format": "onnx", "onnx_sha256": converted.onnx_sha256}
    scripted_blob = _save(converted.module, {**meta.as_dict(), "provenance": stamp})
    tiles = _sample_tiles(meta, samples)
    parity = _refuse_unless(check_parity(scripted_blob, blob, tiles, tolerance), path)
    return ModelFile(
        str(path),
        scripted_blob,
        hashlib.sha256(scripted_blob).hexdigest(),
        read_metadata(scripted_blob),
        original=blob,
        conversion=converted.provenance(parity),
    )


def adapt_onnx_file(
    path: str | Path,
    spec: Any,
    *,
    tolerance: float = DEFAULT_PARITY_TOLERANCE,
    samples: np.ndarray | None = None,
) -> ModelFile:
    """An ONNX export of a detector that is not contract 1 (a raw YOLO head): converted, its raw
    output checked against ONNX Runtime value by value on what the adapter feeds it (the sample
    tiles' bands picked and scaled), then wrapped by the adapter of `spec` (loaders/adapters.py)."""
    from loaders import adapters

    _check_tolerance(tolerance)
    spec.check()
    if spec.adapter == "torchvision":
        return _adapt_torchvision(path, spec, tolerance, samples)
    blob, proto = _read(path)
    converted = _convert_proto(blob, proto, len(spec.channels()), spec.tile_size, str(path))
    meta = ModelMetadata.from_dict(spec.metadata())
    with torch.no_grad():
        model_input = adapters._Input(spec)(torch.from_numpy(_sample_tiles(meta, samples)))
    want = _run_onnx(blob, model_input.numpy())
    with torch.no_grad():
        got = converted.module(model_input).numpy()
    if got.shape != want.shape:
        raise LoaderError(
            f"{path}: the converted model returns {list(got.shape)} where ONNX Runtime returns {list(want.shape)}"
        )
    diff = float(np.abs(want.astype(np.float64) - got).max()) if want.size else 0.0
    parity = _refuse_unless(Parity(len(model_input), "output values", int(want.size), diff, tolerance), path)
    adapted = adapters.to_model_file(converted.module, spec, str(path), original=blob)
    return replace(adapted, original=blob, conversion=converted.provenance(parity))


def _adapt_torchvision(
    path: str | Path, spec: Any, tolerance: float, samples: np.ndarray | None
) -> ModelFile:
    """An ONNX export of a torchvision-style detector (loaders/onnx_torchvision.py): converted with
    NMS, RoIAlign and Shape replaced, traced on one image, compared with ONNX Runtime detection by
    detection on other images (which must keep numbers of detections the traced one did not), then
    wrapped by the torchvision adapter."""
    from loaders import adapters
    from loaders import onnx_torchvision as tv

    blob, proto = _read(path)
    channels = len(spec.channels())
    interface = tv.check_interface(proto, channels, spec.tile_size, str(path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    _normalise(proto)
    unsupported = unsupported_ops(proto, replaced=_TORCHVISION_OPS)
    if unsupported:
        raise LoaderError(
            TORCHVISION_ONNX_REFUSED.format(
                path=path,
                why=f"onnx2torch {_version('onnx2torch')} has no converter for {'; '.join(unsupported)}",
            )
        )
    graph_module = _onnx2torch_convert(proto, str(path))
    tv.replace_dynamic(graph_module)
    meta = ModelMetadata.from_dict(spec.metadata())
    prepare = adapters._Input(spec)
    with torch.no_grad():
        example = prepare(torch.from_numpy(_trace_tile(meta)))[0]
        images = prepare(torch.from_numpy(_torchvision_tiles(meta, samples)))
    # Compared and wrapped as saved and loaded back, the form the adapter and the engine get.
    buf = io.BytesIO()
    torch.jit.save(tv.trace(graph_module, interface, example, str(path)), buf)
    module = torch.jit.load(io.BytesIO(buf.getvalue()))
    want = [
        interface.detections(out, str(path))
        for out in _run_onnx_images(blob, torch.cat([example[None], images]), interface.batched_input)
    ]
    with torch.no_grad():
        detections = module([images[i] for i in range(len(images))])
    got = [(d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy()) for d in detections]
    compared = tv.compare(want[1:], got, str(path), proto)
    traced_count = len(want[0][0])
    if all(n == traced_count for n in compared.counts):
        raise LoaderError(
            TORCHVISION_ONNX_REFUSED.format(
                path=path,
                why=(
                    f"every sample image keeps {traced_count} detection(s), as the image it was traced "
                    "on does, so a trace that froze that number could not be told from a sound one. Give "
                    "--compare-samples tiles on which the model finds different numbers of objects"
                ),
            )
        )
    parity = Parity(
        tiles=len(images),
        compared=TORCHVISION_COMPARED,
        count=compared.rows,
        max_abs_diff=max(compared.box, compared.score, compared.label),
        tolerance=tolerance,
        max_box_diff=compared.box,
        max_score_diff=compared.score,
        class_mismatches=compared.label_mismatches,
    )
    if not parity.passed:
        raise LoaderError(
            TORCHVISION_ONNX_REFUSED.format(
                path=path,
                why=(
                    f"the converted graph does not reproduce ONNX Runtime's detections ({parity.describe()}; "
                    f"operators after NonMaxSuppression here: {', '.join(tv.after_nms(proto)) or 'none'}). "
                    "Raise --parity-tolerance if the difference is acceptable"
                ),
            )
        )
    adapted = adapters.to_model_file(module, spec, str(path), original=blob)
    converted = Converted(module, blob, hashlib.sha256(blob).hexdigest(), opset)
    conversion = converted.provenance(parity)
    conversion["method"] = (
        f"{IMPORT_METHOD} {_version('onnx2torch')} import, {', '.join(tv.REPLACED_OPS)} as TorchScript, "
        "traced per image"
    )
    conversion["detections_per_image"] = {"traced": traced_count, "compared": compared.counts}
    return replace(adapted, original=blob, conversion=conversion)


def _trace_tile(meta: ModelMetadata) -> np.ndarray:
    """The one tile a torchvision-style graph is traced on: not one of the parity tiles."""
    shape = (1, meta.bands, meta.tile_size, meta.tile_size)
    if meta.dtype in ("uint8", "uint16"):
        high = 256 if meta.dtype == "uint8" else 2000
        return np.random.default_rng(1).integers(0, high, shape).astype(meta.dtype)
    return np.random.default_rng(1).random(shape, dtype=np.float32)


def _torchvision_tiles(meta: ModelMetadata, samples: np.ndarray | None) -> np.ndarray:
    """The parity tiles of a torchvision-style graph: the warm-up batch, its first tile dimmed and
    brightened (so the numbers of detections differ from the traced tile's, for most models), and
    the caller's samples."""
    tiles = _sample_tiles(meta, None)
    top = float(np.iinfo(tiles.dtype).max) if tiles.dtype.kind == "u" else 1.0
    scaled = [np.clip(tiles[:1].astype(np.float64) * f, 0, top).astype(tiles.dtype) for f in (0.3, 3.0)]
    out = np.concatenate([tiles, *scaled])
    if samples is not None:
        out = np.concatenate([out, _sample_tiles(meta, samples)[len(tiles) :]])
    return out


def _run_onnx_images(onnx_blob: bytes, images: Tensor, batched: bool) -> list[list[np.ndarray]]:
    """ONNX Runtime (CPU) on each [C, H, W] image alone (as a batch of one [1, C, H, W] when
    `batched`): every output of the graph."""
    session = _ort_session(onnx_blob)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: image.numpy()[None] if batched else image.numpy()}) for image in images]


def _check_tolerance(tolerance: float) -> None:
    if not tolerance >= 0:
        raise LoaderError(f"--parity-tolerance must be >= 0, got {tolerance}")


def _refuse_unless(parity: Parity, path: str | Path) -> Parity:
    if not parity.passed:
        raise LoaderError(
            f"{path} was converted, but the TorchScript result does not reproduce ONNX Runtime: "
            f"{parity.describe()}. Nothing was stored. Report the operators of this graph to onnx2torch, "
            "or raise --parity-tolerance if the difference is acceptable"
        )
    return parity


def _read(path: str | Path) -> tuple[bytes, Any]:
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise LoaderError(f"cannot read model file {path}: {e}") from e
    onnx = _import("onnx")
    try:
        proto = onnx.load_model_from_string(blob)
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, onnx ValidationError: both mean "not a valid model"
        raise LoaderError(f"{path} is not a valid ONNX model: {e}") from e
    return blob, proto


def _convert_proto(blob: bytes, proto: Any, channels: int, tile: int, what: str) -> Converted:
    in_dtype = _check_interface(proto, channels, tile, what)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    _normalise(proto)
    unsupported = unsupported_ops(proto)
    if unsupported:
        raise LoaderError(
            f"{what} cannot be converted: onnx2torch {_version('onnx2torch')} has no converter for "
            f"{'; '.join(unsupported)}. Export the model without them (e.g. leave NMS and box decoding "
            "out of the graph and use an adapter), or at an opset that has them"
        )
    module = _convert(proto, in_dtype, channels, tile, what)
    return Converted(module, blob, hashlib.sha256(blob).hexdigest(), opset)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise LoaderError(
            f"ONNX import needs the packages onnx, onnxruntime and onnx2torch ({e}): "
            "pip install 'groundwatch[onnx]' && pip install --no-deps onnx2torch==1.5.15 (docs/models.md)"
        ) from e


def available() -> dict[str, str]:
    """The versions of onnx, onnxruntime and onnx2torch, imported as a load imports them (onnx2torch
    over the torchvision placeholder when no torchvision loads); LoaderError, with the install line,
    when one is missing. The image build runs it (Dockerfile) so a broken install fails there."""
    _import("onnx")
    _import("onnxruntime")
    _onnx2torch_registry()
    return {name: _version(name) for name in ("onnx", "onnxruntime", "onnx2torch")}


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _metadata(proto: Any, given: dict[str, Any] | None, what: str) -> ModelMetadata:
    raw: Any = given
    if raw is None:
        props = {p.key: p.value for p in proto.metadata_props}
        if METADATA_PROP not in props:
            raise LoaderError(
                f"{what} carries no {METADATA_PROP} in its metadata_props: give the metadata with "
                f"--metadata FILE.json, or add it to the file (onnx.helper.set_model_props(model, "
                f"{{'{METADATA_PROP}': json.dumps(meta)}})); the keys are those of docs/models.md"
            )
        try:
            raw = json.loads(props[METADATA_PROP])
        except ValueError as e:
            raise LoaderError(f"{what}: metadata_props[{METADATA_PROP!r}] is not valid JSON: {e}") from e
    try:
        return ModelMetadata.from_dict(raw)
    except modelmeta.MetadataError as e:
        raise LoaderError(f"{what}: {e}") from e


def _dims(value_info: Any) -> list[int | None]:
    """A graph value's dimensions; None for a symbolic or unknown one."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _check_interface(proto: Any, channels: int, tile: int, what: str) -> Any:
    """One tile batch in ([B, channels, tile, tile], B and the sizes may be free), one float
    tensor out; returns the input's numpy dtype."""
    onnx = _import("onnx")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    outputs = list(proto.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise LoaderError(
            f"{what} has {len(inputs)} input(s) and {len(outputs)} output(s); a contract-1 model has one "
            "tile batch [B, C, H, W] in and one [B, K, 6] out, an adapted one a tile batch in and one raw "
            "head out (docs/models.md)"
        )
    dims = _dims(inputs[0])
    b, c, h, w = dims if len(dims) == 4 else (None,) * 4
    if len(dims) != 4 or b not in (None, 1) or c not in (None, channels):
        raise LoaderError(
            f"{what}: its input {inputs[0].name!r} has shape {_shape_text(dims)}; it should take "
            f"[B, {channels}, H, W] with B free (or 1) and {channels} channel(s) (the metadata's bands, "
            "or an adapter's --band-map)"
        )
    if any(d not in (None, tile) for d in (h, w)):
        raise LoaderError(
            f"{what}: its input is fixed at {_shape_text(dims)}, but the tile size is {tile}; export "
            f"it for {tile} px tiles or with free H and W"
        )
    out_type = outputs[0].type.tensor_type.elem_type
    if out_type != onnx.TensorProto.FLOAT:
        raise LoaderError(
            f"{what}: its output is {onnx.TensorProto.DataType.Name(out_type)}; groundwatch takes float32"
        )
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type))
    except (KeyError, TypeError) as e:
        raise LoaderError(f"{what}: its input's element type is not a numeric tensor type") from e


def _shape_text(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _normalise(proto: Any) -> None:
    """Drop trailing empty optional inputs (``Clip(x, min, "")``, as torch.onnx writes clamp(min=)):
    ONNX allows leaving them out, and onnx2torch takes "" for a tensor name."""
    for node in _all_nodes(proto.graph):
        while node.input and node.input[-1] == "":
            node.input.pop()


def _all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def unsupported_ops(proto: Any, replaced: frozenset[str] = frozenset()) -> list[str]:
    """Every operator of the graph (subgraphs included) onnx2torch cannot convert at the file's
    opsets, as "Op (domain, opset N): nodes a, b" entries; [] when all can be. Operators in
    `replaced` need no torchvision (their converted modules are replaced before they run)."""
    registry, have_torchvision = _onnx2torch_registry()
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    missing: dict[tuple[str, str, int], list[str]] = {}
    for node in _all_nodes(proto.graph):
        domain = node.domain or "ai.onnx"
        version = opsets.get(domain)
        needs_torchvision = node.op_type in _TORCHVISION_OPS and node.op_type not in replaced
        ok = version is not None and not (needs_torchvision and not have_torchvision)
        if ok:
            try:
                registry.get_converter(node.op_type, version, "" if domain == "ai.onnx" else domain)
            except NotImplementedError:
                ok = False
        if not ok:
            missing.setdefault((node.op_type, domain, version or 0), []).append(node.name or "(unnamed)")
    return [
        f"{op} ({domain}, opset {version}{', needs torchvision' if op in _TORCHVISION_OPS else ''}): "
        f"{len(names)} node(s) {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
        for (op, domain, version), names in sorted(missing.items())
    ]


@functools.cache
def _onnx2torch_registry() -> tuple[Any, bool]:
    """onnx2torch's converter registry, and whether a working torchvision backs it.

    onnx2torch imports torchvision at import time for two converters (NMS, RoiAlign), and no
    torchvision build loads beside the CPU torch 2.13; without it onnx2torch is imported over a
    placeholder that is removed again, and those two operators count as unsupported."""
    have = True
    try:
        import torchvision  # noqa: F401  # type: ignore[import-not-found,unused-ignore]
    except Exception:  # a CUDA build raises RuntimeError ("operator torchvision::nms does not exist")
        have = False
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    if "onnx2torch" not in sys.modules and not have:
        with _torchvision_placeholder():
            _import("onnx2torch")
    return _import("onnx2torch.node_converters.registry"), have


@contextlib.contextmanager
def _torchvision_placeholder() -> Iterator[None]:
    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise LoaderError("this operator needs torchvision, which is not installed")

    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    for fn in ("nms", "box_convert", "roi_align"):
        setattr(ops, fn, unavailable)
    tv.ops = ops  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        yield
    finally:
        sys.modules.pop("torchvision", None)
        sys.modules.pop("torchvision.ops", None)


def _convert(proto: Any, in_dtype: np.dtype, channels: int, tile: int, what: str) -> Any:
    """onnx2torch's GraphModule, traced at [1, C, T, T] and wrapped to run any batch (scripted)."""
    graph_module = _onnx2torch_convert(proto, what)
    example = torch.from_numpy(
        np.random.default_rng(0).integers(0, 2000, (1, channels, tile, tile)).astype(in_dtype)
    )
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about shapes: the trace is for one shape
            traced = torch.jit.trace(graph_module, example, check_trace=False)
        return torch.jit.script(PerTile(traced, _torch_dtype(in_dtype), channels, tile))
    except Exception as e:
        raise LoaderError(
            f"{what}: the converted graph does not run on a [1, {channels}, {tile}, {tile}] tile in torch: {e}"
        ) from e


def _onnx2torch_convert(proto: Any, what: str) -> Any:
    """onnx2torch's GraphModule of the graph, in eval mode."""
    _onnx2torch_registry()
    onnx2torch = _import("onnx2torch")
    try:
        graph_module = onnx2torch.convert(proto)
    except Exception as e:  # a converter refusing one node's form (e.g. a Clip bound computed at run time)
        raise LoaderError(
            f"{what}: onnx2torch could not convert the graph: {_failing_nodes(proto, e)}"
        ) from e
    return graph_module.eval()


def _failing_nodes(proto: Any, error: Exception) -> str:
    """Which nodes onnx2torch refuses, and why: each converter is tried alone on its node."""
    onnx2torch_graph = _import("onnx2torch.onnx_graph")
    registry, _ = _onnx2torch_registry()
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    try:
        graph = onnx2torch_graph.OnnxGraph(proto.graph)
        failures = []
        for name, node in graph.nodes.items():
            domain = node.domain or "ai.onnx"
            try:
                registry.get_converter(node.operation_type, opsets[domain], node.domain)(node, graph)
            except Exception as e:
                failures.append(f"node {name} ({node.operation_type}): {e}")
    except Exception:
        failures = []
    return "; ".join(failures[:5]) if failures else str(error)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(1, dtype)).dtype


class PerTile(nn.Module):
    """Contract 1 around a graph traced for one [1, C, T, T] tile: the input cast to the ONNX
    input's type, each tile of the batch run alone, the rows stacked back in batch order."""

    def __init__(self, traced: nn.Module, dtype: torch.dtype, bands: int, tile: int) -> None:
        super().__init__()
        self.graph = traced
        self.dtype = dtype
        self.bands = bands
        self.tile = tile

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError("expected input [B, C, H, W]")
        if x.shape[1] != self.bands or x.shape[2] != self.tile or x.shape[3] != self.tile:
            raise ValueError("an imported ONNX model takes [B, bands, tile_size, tile_size] tiles only")
        x = x.to(self.dtype)
        return torch.cat([self.graph(x[i : i + 1]) for i in range(x.shape[0])], dim=0)


def _save(module: Any, meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module, buf, _extra_files={modelmeta.METADATA_FILE: json.dumps(meta, sort_keys=True)})
    return buf.getvalue()


def _sample_tiles(meta: ModelMetadata, samples: np.ndarray | None) -> np.ndarray:
    """The warm-up batch (the same noise every load) and the caller's sample tiles, if any."""
    from loaders.loader import warmup_input
    from loaders.variants import check_samples

    tiles = warmup_input(meta, PARITY_BATCH)
    if samples is not None:
        tiles = np.concatenate([tiles, check_samples(samples, meta)])
    return tiles


def check_parity(scripted_blob: bytes, onnx_blob: bytes, tiles: np.ndarray, tolerance: float) -> Parity:
    """Run the saved TorchScript bytes (as the engine will get them) and ONNX Runtime on `tiles`
    and compare the contract-1 outputs row by row (module docstring)."""
    want = _run_onnx(onnx_blob, tiles)
    module = torch.jit.load(io.BytesIO(scripted_blob))
    with torch.no_grad():
        got = module(torch.from_numpy(np.ascontiguousarray(tiles))).numpy()
    if got.shape != want.shape:
        raise LoaderError(
            f"the converted model returns {list(got.shape)} where ONNX Runtime returns {list(want.shape)}"
        )
    return compare_rows(want, got, tolerance)


def _ort_session(onnx_blob: bytes) -> Any:
    """An ONNX Runtime session on the CPU, its warnings silenced (the parity check reports)."""
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_blob, options, providers=["CPUExecutionProvider"])


def _run_onnx(onnx_blob: bytes, tiles: np.ndarray) -> np.ndarray:
    """ONNX Runtime (CPU) on `tiles`, cast to the graph's input type; one tile at a time when the
    graph's batch is fixed."""
    session = _ort_session(onnx_blob)
    inp = session.get_inputs()[0]
    x = tiles.astype(np.dtype(_ORT_TYPES.get(inp.type, "float32")))
    steps = [x] if not isinstance(inp.shape[0], int) else [x[i : i + 1] for i in range(len(x))]
    return np.concatenate([session.run(None, {inp.name: s})[0] for s in steps])


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def compare_rows(want: np.ndarray, got: np.ndarray, tolerance: float) -> Parity:
    """Two [N, K, 6] contract-1 outputs of the same tiles, paired row by row.

    Row i of `want` is paired with the unused row of `got` closest to it (max abs difference)
    among those whose score is within `tolerance` of its own; the order of rows with tied scores
    carries no meaning. A row with no such partner counts in full unless its score is within
    `tolerance` of the tile's K-th score (a near-tie for the last place may pick either
    candidate). Returns the largest difference of any paired value, by column group."""
    if want.ndim != 3 or want.shape[2] != 6 or got.shape != want.shape:
        raise LoaderError(f"cannot compare outputs {list(want.shape)} and {list(got.shape)}: not [N, K, 6]")
    box = score = cls = 0.0
    rows = mismatched = 0
    for a, b in zip(want.astype(np.float64), got.astype(np.float64), strict=True):
        distance = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)  # [K, K]
        tied = np.abs(a[:, None, 4] - b[None, :, 4]) <= tolerance
        used = np.zeros(len(b), bool)
        last = min(a[-1, 4], b[-1, 4])
        for i in range(len(a)):
            free = tied[i] & ~used
            if not free.any():
                if a[i, 4] - last <= tolerance:
                    continue
                free = ~used  # no partner: the closest row there is, and its whole difference counts
            j = int(np.flatnonzero(free)[np.argmin(distance[i, free])])
            used[j] = True
            rows += 1
            box = max(box, float(np.abs(a[i, :4] - b[j, :4]).max()))
            score = max(score, abs(float(a[i, 4] - b[j, 4])))
            cls = max(cls, abs(float(a[i, 5] - b[j, 5])))
            mismatched += int(a[i, 5] != b[j, 5])
    worst = max(box, score, cls)
    return Parity(
        tiles=len(want),
        compared="contract-1 rows",
        count=rows,
        max_abs_diff=worst,
        max_box_diff=box,
        max_score_diff=score,
        class_mismatches=mismatched,
        tolerance=tolerance,
    )
