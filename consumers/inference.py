"""Inference of a batch: the feed's active model, one AI.DAGEXECUTE per frame, georeferencing.

A batch is *started* (its frames decoded, what cannot run sorted out, its DAGs sent to the
engine) before the previous batch is committed, and *finished* later (:func:`infer` reads the
engine's replies and turns each into a :class:`TileResult`, or a failure with its reason).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from consumers import ConsumerError
from consumers.geo import check_crs, decode_output, georeference
from consumers.reading import Entry, id_key, text
from groundwatch import ai, frames, keys, modelmeta
from groundwatch.detections import Detection, TileResult
from groundwatch.frames import FrameError
from groundwatch.modelmeta import ModelMetadata
from groundwatch.settings import DEFAULT_SCORE_THRESHOLD

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
Failure = tuple[Entry, str, bool]


class Models:
    """The feed's active model pointer and what each model's metadata says (cached per key)."""

    def __init__(self, client: redis.Redis, feed: str, score_threshold: float | None) -> None:
        self.r = client
        self.feed = feed
        self.score_threshold = score_threshold
        self._meta: dict[str, ModelMetadata | None] = {}

    def active(self) -> ActiveModel | None:
        """The feed's active model version (one GET; read again for every batch)."""
        raw = self.r.get(keys.active_model(self.feed))
        if raw is None:
            return None
        version = text(raw)
        name, _, number = version.rpartition(":")
        try:
            return ActiveModel(version, keys.model(self.feed, name, int(number.lstrip("v"))))
        except (ValueError, Exception) as e:  # a malformed pointer is an operator's mistake: wait
            log.error("feed %s: active model pointer %r is not name:version (%s)", self.feed, version, e)
            return None

    def metadata(self, model: ActiveModel) -> ModelMetadata | None:
        """The model's groundwatch.json (read once per model key from AI.MODELGET BLOB)."""
        if model.key not in self._meta:
            meta: ModelMetadata | None = None
            try:
                meta = modelmeta.read(ai.model_blob(self.r, model.key), f"model {model.version}")
            except (ai.EngineError, modelmeta.MetadataError) as e:
                log.warning("model %s: no usable metadata (%s); classes shown as class<id>", model.version, e)
            self._meta[model.key] = meta
        return self._meta[model.key]

    def labels(self, model: ActiveModel) -> tuple[str, ...]:
        """Class names from the model's metadata; empty when it declares none."""
        meta = self.metadata(model)
        return meta.classes if meta is not None else ()

    def threshold(self, model: ActiveModel) -> float:
        """The operator's --score-threshold, else the model's own hint, else the default."""
        if self.score_threshold is not None:
            return self.score_threshold
        meta = self.metadata(model)
        if meta is not None and meta.score_threshold_hint is not None:
            return meta.score_threshold_hint
        return DEFAULT_SCORE_THRESHOLD


def sort_out(batch: Sequence[Entry], max_deliveries: int) -> Started:
    """Decode the batch's frames; deleted entries, worn-out ones and bad frames are set aside."""
    started = Started()
    for e in batch:
        if e.fields is None:
            started.deleted.append(e.id)
            continue
        if e.deliveries > max_deliveries:
            started.dead.append(
                (
                    e,
                    f"delivered {e.deliveries} times (max_deliveries "
                    f"{max_deliveries}): it failed, or its consumer died, every time",
                )
            )
            continue
        try:
            e.frame = frames.decode(e.fields)
            check_crs(e.frame.crs)
        except (FrameError, ConsumerError) as err:
            started.dead.append((e, f"bad frame: {err}"))
            continue
        started.todo.append(e)
    return started


def dags(model: ActiveModel, route: str, batch: Sequence[Entry]) -> list[list[Any]]:
    return [
        ai.dag_command(model.key, route, e.frame.array()[np.newaxis])  # type: ignore[union-attr]
        for e in batch
    ]


def send(client: redis.Redis, route: str, started: Started) -> None:
    """Put the started batch's DAGs in the engine (one connection each), replies read later."""
    assert started.model is not None
    started.inflight = ai.send_concurrently(client, dags(started.model, route, started.todo))


def run_dags(
    client: redis.Redis, model: ActiveModel, route: str, batch: Sequence[Entry], isolated: bool = False
) -> list[np.ndarray | ai.DagError]:
    """All DAGs at once (the engine batches them), or one after the other when `isolated`."""
    commands = dags(model, route, batch)
    if isolated:
        return outputs([ai.execute_concurrently(client, [c])[0] for c in commands])
    return outputs(ai.execute_concurrently(client, commands))


def outputs(replies: Sequence[Any]) -> list[np.ndarray | ai.DagError]:
    out: list[np.ndarray | ai.DagError] = []
    for reply in replies:
        try:
            out.append(ai.dag_result(reply))
        except ai.DagError as e:
            out.append(e)
    return out


_TENSOR_ERRORS = ("data length", "invalid data type", "tensor shape", "invalid value", "blob")


def is_poison(err: ai.DagError) -> bool:
    """The engine refused the tile itself (its TENSORSET): no retry will change that."""
    message = str(err).lower()
    return err.op == 0 or (err.op == -1 and any(t in message for t in _TENSOR_ERRORS))


def infer(
    client: redis.Redis,
    feed: str,
    route: str,
    started: Started,
    models: Models,
    reread: Callable[[], ActiveModel | None],
) -> tuple[list[tuple[Entry, TileResult]], list[Failure]]:
    """The engine's outputs of a started batch, decoded and georeferenced; (results, failures).

    `reread` reads the active pointer again when the model was removed under us."""
    todo, model, isolated = started.todo, started.model, started.isolated
    assert model is not None
    per_frame: list[ActiveModel] = [model] * len(todo)
    if started.inflight is not None:
        inflight, started.inflight = started.inflight, None
        outs = outputs(inflight.replies())
    else:
        outs = run_dags(client, model, route, todo, isolated)
    missing = [i for i, o in enumerate(outs) if isinstance(o, ai.DagError) and o.model_missing]
    if missing:
        # The version was removed under us (a switch in progress): read the pointer again, once.
        again = reread()
        if again is not None:
            log.info(
                "feed %s: model %s is gone; retrying %d frames with %s",
                feed,
                model.version,
                len(missing),
                again.version,
            )
            rerun = run_dags(client, again, route, [todo[i] for i in missing], isolated)
            for i, out in zip(missing, rerun, strict=True):
                outs[i] = out
                per_frame[i] = again
    failed: list[Failure] = []
    ok: list[tuple[int, np.ndarray]] = []
    for i, out in enumerate(outs):
        if isinstance(out, ai.DagError):
            failed.append((todo[i], f"engine: {out}", is_poison(out)))
            continue
        try:
            ok.append((i, decode_output(out, models.threshold(per_frame[i]))))
        except ConsumerError as err:
            failed.append((todo[i], f"model {per_frame[i].version}: {err}", False))
    results, unlocated = locate(feed, todo, ok, per_frame, models)
    results.sort(key=lambda pair: id_key(pair[0].id))
    return results, failed + unlocated


def locate(
    feed: str,
    todo: Sequence[Entry],
    ok: Sequence[tuple[int, np.ndarray]],
    per_frame: Sequence[ActiveModel],
    models: Models,
) -> tuple[list[tuple[Entry, TileResult]], list[Failure]]:
    """Georeference decoded rows (per model: one warp per batch); a frame that fails is poison."""
    results: list[tuple[Entry, TileResult]] = []
    failed: list[Failure] = []
    by_model: dict[ActiveModel, list[tuple[int, np.ndarray]]] = {}
    for i, rows in ok:
        by_model.setdefault(per_frame[i], []).append((i, rows))
    for m, items in by_model.items():
        labels = models.labels(m)
        try:
            pairs = [(todo[i].frame, rows) for i, rows in items]
            located: list[list[Detection] | ConsumerError] = list(
                georeference(pairs, labels, m.version)  # type: ignore[arg-type]
            )
        except ConsumerError:  # find the frame(s) at fault, one by one
            located = []
            for i, rows in items:
                try:
                    located.extend(georeference([(todo[i].frame, rows)], labels, m.version))  # type: ignore[list-item]
                except ConsumerError as err:
                    located.append(err)
        for (i, _rows), dets in zip(items, located, strict=True):
            f = todo[i].frame
            assert f is not None
            if isinstance(dets, ConsumerError):
                failed.append((todo[i], f"cannot georeference: {dets}", True))
                continue
            results.append(
                (
                    todo[i],
                    TileResult(
                        feed=feed,
                        frame=f.frame_id,
                        scene=f.scene,
                        tile=f.tile,
                        tiles=f.tiles,
                        model=m.version,
                        crs=f.crs,
                        window=tuple(f.window),  # type: ignore[arg-type]
                        acquired=frames.format_time(f.acquired),
                        published_ms=f.published_ms,
                        done_ms=0,
                        detections=tuple(dets),
                    ),
                )
            )
    return results, failed
