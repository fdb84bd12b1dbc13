"""Inference of a batch: the feed's active model, one AI.DAGEXECUTE per frame, georeferencing.

A batch is *started* (its frames decoded, what cannot run sorted out, its DAGs sent to the
engine) before the previous batch is committed, and *finished* later (:func:`infer` reads the
engine's replies and turns each into a :class:`TileResult`, or a failure with its reason).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import redis

from consumers import ConsumerError, segment
from consumers.geo import check_crs, georeference
from consumers.reading import Entry, id_key
from groundwatch import ai, frames, geometry, keys, modelmeta, registry
from groundwatch.detections import Detection, TileResult, features_json, tile_result_of
from groundwatch.errors import GroundwatchError
from groundwatch.frames import FrameError
from groundwatch.modelmeta import ModelMetadata

log = logging.getLogger("groundwatch.consumers")


class NoActiveModel(ConsumerError):
    """The feed has no active model: frames wait (they are not poison)."""


@dataclass(frozen=True)
class ActiveModel:
    version: str  # "name:version"
    key: str


@dataclass
class Started:
    """A batch whose DAGs are in the engine (or, `isolated`, will run one by one)."""

    todo: list[Entry] = field(default_factory=list)
    dead: list[tuple[Entry, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    model: ActiveModel | None = None
    isolated: bool = False
    inflight: ai.InFlight | None = None


# (entry, reason, poison): poison frames go to the dead letters at once, others are retried
Failed = tuple[Entry, str, bool]


class Models:
    """The feed's active model pointer and what each model's metadata says (cached per key)."""

    def __init__(
        self,
        client: redis.Redis,
        feed: str,
        score_threshold: float | None,
        simplify_px: float = 1.0,
        min_region_px: int | None = None,
    ) -> None:
        self.r = client
        self.feed = feed
        self.score_threshold = score_threshold
        self.simplify_px = simplify_px
        self.min_region_px = min_region_px  # the operator's; None: each model's own
        self._meta: dict[str, ModelMetadata | None] = {}

    def active(self) -> ActiveModel | None:
        """The feed's active model version (one GET; read again for every batch)."""
        try:
            ref = registry.active_ref(self.r, self.feed)
            return None if ref is None else ActiveModel(str(ref), ref.key(self.feed))
        except GroundwatchError as e:  # a malformed pointer is an operator's mistake: wait
            log.error("feed %s: active model pointer: %s", self.feed, e)
            return None

    def metadata(self, model: ActiveModel) -> ModelMetadata | None:
        """The model's groundwatch.json (read once per model key from AI.MODELGET BLOB)."""
        if model.key not in self._meta:
            try:
                blob = ai.Engine(self.r).model_blob(model.key)
            except ai.EngineError as e:  # the key is gone: say nothing now, read it when it is back
                log.warning("model %s: metadata not readable now (%s)", model.version, e)
                return None
            meta: ModelMetadata | None = None
            try:
                meta = modelmeta.read(blob, f"model {model.version}")
            except modelmeta.MetadataError as e:
                log.warning("model %s: no usable metadata (%s); classes shown as class<id>", model.version, e)
            self._meta[model.key] = meta
        return self._meta[model.key]

    def labels(self, model: ActiveModel) -> tuple[str, ...]:
        """Class names from the model's metadata; empty when it declares none."""
        meta = self.metadata(model)
        return meta.classes if meta is not None else ()

    def threshold(self, model: ActiveModel) -> float:
        """The operator's --score-threshold, else the model's own hint, else the default."""
        meta = self.metadata(model) if self.score_threshold is None else None
        return modelmeta.score_threshold(self.score_threshold, meta.score_threshold_hint if meta else None)


def sort_out(batch: Sequence[Entry], max_frame_bytes: int) -> Started:
    """Decode the batch's frames; deleted entries and bad frames are set aside.

    Whatever an entry holds, it ends here as a frame to run, a dead letter with its reason, or a
    deleted entry: nothing a producer writes can raise out of this function."""
    started = Started()
    for e in batch:
        if e.fields is None:
            started.deleted.append(e.id)
            continue
        try:
            size = len(e.fields.get(b"data", b""))
            if size > max_frame_bytes:
                raise FrameError(
                    f"data is {size} bytes, more than max_frame_bytes={max_frame_bytes}; publish smaller "
                    "tiles or raise GROUNDWATCH_MAX_FRAME_BYTES"
                )
            e.frame = frames.decode(e.fields)
            check_crs(e.frame.crs)
        except (FrameError, ConsumerError) as err:
            started.dead.append((e, f"bad frame: {err}"))
            continue
        except Exception as err:  # a decoder bug must not stop the feed: this frame's failure
            log.exception("entry %s: unexpected error decoding it", e.id)
            started.dead.append((e, f"bad frame (unexpected {type(err).__name__}: {err})"))
            continue
        started.todo.append(e)
    return started


# Engine dtype names a contract-1 model takes (docs/models.md: uint8, uint16, float32).
_CONTRACT_DTYPES = {"UINT8": "uint8", "UINT16": "uint16", "FLOAT": "float32"}


def misfit(frame: frames.Frame, meta: ModelMetadata | None, version: str) -> str | None:
    """Why `frame` cannot go to the model whose metadata is `meta` (None: it fits, or the model
    declares nothing to check against). Band count, a dtype of the contract, and the tile size
    within the model's bounds: 1 .. `max_tile_size` of its metadata, else 4 x its tile_size."""
    if meta is None:
        return None
    c, h, w = frame.shape
    if c != meta.bands:
        return f"frame has {c} band(s) but model {version} takes {meta.bands}; ingest with --bands / --expect-bands {meta.bands}"
    if frame.dtype not in _CONTRACT_DTYPES:
        return (
            f"frame dtype {frame.dtype} is not one model {version} takes ({', '.join(_CONTRACT_DTYPES)}); "
            "convert the scene, e.g. gdal_translate -ot UInt16"
        )
    top = meta.extra.get("max_tile_size", 4 * meta.tile_size)
    top = top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else 4 * meta.tile_size
    if max(h, w) > top:
        return (
            f"frame is {h} x {w} pixels but model {version} takes tiles up to {top} (its tile_size is "
            f"{meta.tile_size}); ingest with --tile-size {meta.tile_size}"
        )
    return None


def _tiles(batch: Sequence[Entry]) -> list[np.ndarray]:
    return [e.frame.array() for e in batch]  # type: ignore[union-attr]


def send(client: redis.Redis, started: Started, timeout_ms: int | None = None) -> None:
    """Put the started batch's DAGs in the engine (one connection each), replies read later.

    A DAG names its model copy as its ROUTING key too, so its only key is one that exists: while
    the feed's slot is migrated it runs where that key is (ASK is followed), where a ROUTING key
    that does not exist would make it a multi-key command with a key missing, refused (TRYAGAIN)
    until the migration ends."""
    assert started.model is not None
    key = started.model.key
    started.inflight = ai.send_concurrently(client, ai.tile_dags(key, key, _tiles(started.todo), timeout_ms))


def infer(
    client: redis.Redis,
    feed: str,
    started: Started,
    models: Models,
    reread: Callable[[], ActiveModel | None],
    timeout_ms: int | None = None,
) -> tuple[list[tuple[Entry, TileResult]], list[Failed], list[tuple[Entry, str]]]:
    """The engine's outputs of a started batch, decoded and georeferenced.

    Returns (results, failures, faults): a failure is the frame's (retried, or poison), a fault
    is the system's (the frame stays pending, no attempt charged). Every per-frame step turns
    any exception into that frame's failure; only Redis failures (connection) raise.
    `reread` reads the active pointer again when the model was removed under us."""
    todo, model, isolated = started.todo, started.model, started.isolated
    assert model is not None
    per_frame: list[ActiveModel] = [model] * len(todo)
    if started.inflight is not None:
        inflight, started.inflight = started.inflight, None
        outs = ai.dag_outcomes(inflight.replies())
    else:
        outs = ai.execute_dags(
            client, model.key, model.key, _tiles(todo), isolated=isolated, timeout_ms=timeout_ms
        )
    missing = [i for i, o in enumerate(outs) if isinstance(o, ai.DagError) and o.model_missing]
    if missing:
        # The version was removed under us (a switch in progress): read the pointer again, once.
        again = reread()
        if again is not None and again != model:
            log.info(
                "feed %s: model %s is gone; retrying %d frames with %s",
                feed,
                model.version,
                len(missing),
                again.version,
            )
            rerun = ai.execute_dags(
                client,
                again.key,
                again.key,  # routed by its model copy, as in send()
                _tiles([todo[i] for i in missing]),
                isolated=isolated,
                timeout_ms=timeout_ms,
            )
            for i, out in zip(missing, rerun, strict=True):
                outs[i] = out
                per_frame[i] = again
    failed: list[Failed] = []
    faults: list[tuple[Entry, str]] = []
    ok: list[tuple[int, np.ndarray]] = []
    segmented: list[tuple[int, np.ndarray]] = []
    for i, out in enumerate(outs):
        if isinstance(out, ai.DagError):
            if out.model_missing:
                faults.append(
                    (
                        todo[i],
                        f"model key {per_frame[i].key} of the active version {per_frame[i].version} is gone "
                        f"(removed, or a switch in progress); load the model again or point "
                        f"{keys.active_model(feed)} at a version that exists",
                    )
                )
            elif out.system_fault:  # ai.FAILURES decides; the consumer only asks
                faults.append((todo[i], f"engine refused for load: {out}"))
            else:
                failed.append((todo[i], f"engine: {out}", out.poison))
            continue
        meta = models.metadata(per_frame[i])
        if meta is not None and meta.segmentation:
            segmented.append((i, out))
            continue
        try:
            ok.append((i, geometry.decode_rows(out, models.threshold(per_frame[i]))))
        except geometry.OutputContractError as err:
            failed.append((todo[i], f"model {per_frame[i].version}: {err}", False))
        except Exception as err:
            failed.append(
                (
                    todo[i],
                    f"model {per_frame[i].version}: output does not decode ({type(err).__name__}: {err})",
                    False,
                )
            )
    results, unlocated = locate(feed, todo, ok, per_frame, models)
    for i, out in segmented:  # contract 2: regions instead of boxes (consumers/segment.py)
        seg_meta = models.metadata(per_frame[i])
        assert seg_meta is not None
        outcome = segment.tile_result(
            feed,
            todo[i],
            out,
            seg_meta,
            per_frame[i].version,
            models.simplify_px,
            modelmeta.region_minimum(models.min_region_px, seg_meta),
        )
        if isinstance(outcome, TileResult):
            results.append((todo[i], outcome))
        else:
            unlocated.append((todo[i], *outcome))
    results.sort(key=lambda pair: id_key(pair[0].id))
    return results, failed + unlocated, faults


def locate(
    feed: str,
    todo: Sequence[Entry],
    ok: Sequence[tuple[int, np.ndarray]],
    per_frame: Sequence[ActiveModel],
    models: Models,
) -> tuple[list[tuple[Entry, TileResult]], list[Failed]]:
    """Georeference decoded rows (per model: one warp per batch); a frame that fails is poison."""
    results: list[tuple[Entry, TileResult]] = []
    failed: list[Failed] = []
    by_model: dict[ActiveModel, list[tuple[int, np.ndarray]]] = {}
    for i, rows in ok:
        by_model.setdefault(per_frame[i], []).append((i, rows))
    for m, items in by_model.items():
        labels = models.labels(m)
        try:
            pairs = [(todo[i].frame, rows) for i, rows in items]
            located: list[list[Detection] | Exception] = list(
                georeference(pairs, labels, m.version)  # type: ignore[arg-type]
            )
        except Exception:  # find the frame(s) at fault, one by one
            located = []
            for i, rows in items:
                try:
                    located.extend(georeference([(todo[i].frame, rows)], labels, m.version))  # type: ignore[list-item]
                except Exception as err:
                    located.append(err)
        for (i, _rows), dets in zip(items, located, strict=True):
            f = todo[i].frame
            assert f is not None
            if isinstance(dets, Exception):
                why = str(dets) if isinstance(dets, ConsumerError) else f"{type(dets).__name__}: {dets}"
                failed.append((todo[i], f"cannot georeference: {why}", True))
                continue
            try:
                result = tile_result_of(feed, f, m.version, detections=tuple(dets))
                # encoded once, here: a NaN or inf coordinate fails now; the commit reuses the text
                result = replace(result, encoded_features=features_json(result))
            except Exception as err:
                failed.append((todo[i], f"cannot encode its result: {type(err).__name__}: {err}", True))
                continue
            results.append((todo[i], result))
    return results, failed
