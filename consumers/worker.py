"""The consumer loop: frames in, one AI.DAGEXECUTE per frame, results and XACK in one MULTI.

Delivery: at least once from the stream, exactly once in the results. The parts:
:mod:`consumers.reading` (XREADGROUP of new and own pending entries, XAUTOCLAIM of idle ones),
:mod:`consumers.inference` (the active model, the DAGs, georeferencing),
:mod:`consumers.commit` (publish + dead letters + XACK in one MULTI/EXEC under WATCH) and
:mod:`consumers.scenes` (scene completion and the overlap merge). A crash before EXEC leaves
the entry pending, and it is processed again (by this consumer on restart, or by another
through XAUTOCLAIM); a crash after EXEC leaves nothing to do.

The loop reads ahead: the next batch's DAGs go to the engine before this batch is committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from consumers import ConsumerError, inference
from consumers.commit import Committer, Outcome
from consumers.inference import ActiveModel, NoActiveModel, Started
from consumers.reading import Entry, Reader
from groundwatch import keys
from groundwatch.detections import TileResult
from groundwatch.modelmeta import ModelMetadata
from groundwatch.settings import Settings

__all__ = ["ActiveModel", "Consumer", "Entry", "NoActiveModel", "RunStats"]

log = logging.getLogger("groundwatch.consumers")

RETRY_DELAY_S = 0.25  # pause before frames that failed are tried again


@dataclass
class RunStats:
    """What one consumer did (also kept, feed-wide, in keys.stats)."""

    frames_done: int = 0
    detections: int = 0
    dead: int = 0
    scenes_done: int = 0
    duplicates: int = 0
    retries: int = 0
    conflicts: int = 0
    batches: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, out: Outcome) -> None:
        self.frames_done += len(out.fresh)
        self.detections += out.detections
        self.dead += len(out.dead)
        self.scenes_done += len(out.scenes)
        self.duplicates += len(out.duplicates)
        self.conflicts += out.conflicts
        self.reasons.extend(why for _, why in out.dead)


class Consumer:
    """One member of the feed's consumer group. `run()` until `stop()` (or drained, in burst mode)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        burst: bool = False,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConsumerError(
                "the consumer needs a Redis client with decode_responses=False (frames are bytes)"
            )
        self.settings = settings
        self.feed = keys.check_name("feed", settings.feed)
        self.group = settings.group
        self.name = settings.consumer
        self.burst = burst
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.reader = Reader(
            client,
            self.feed,
            self.group,
            self.name,
            count=settings.read_count,
            claim_idle_ms=settings.claim_idle_ms,
        )
        self.r = self.reader.r
        self.stream = self.reader.stream
        self.route = keys.dag_routing(self.feed)
        self.models = inference.Models(self.r, self.feed, settings.score_threshold)
        self.committer = Committer(
            self.r, self.feed, self.group, self.name, ttl_s=settings.scene_ttl_s, clock_ms=self._now
        )
        self.stats = RunStats()
        self._stop = threading.Event()
        self._retry_own = False
        self._ahead: Started | None = None

    def _now(self) -> int:
        return self.clock_ms()

    # --- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in flight, acknowledge it, and return from run()."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def ensure_group(self) -> None:
        self.reader.ensure_group()

    def run(self) -> RunStats:
        """Own pending entries first, then new ones and reclaimed ones, until stopped or drained."""
        backoff = 0.1
        first = True
        while not self.stopping:
            try:
                if first:
                    self.ensure_group()
                    self._drain_own()
                    first = False
                busy = self._step()
                backoff = 0.1
                if not busy and self.burst:
                    break
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e) and "UNBLOCKED" not in str(e):
                    raise
                # the stream or its group vanished (deleted, or a restart without persistence)
                log.warning("consumer %s: %s; creating the group again", self.name, e)
                self._abandon()
                first = True
            except (redis.ConnectionError, redis.TimeoutError) as e:
                # Redis went away (restart, failover): nothing unacknowledged is lost; it is
                # still pending for us, so start over with our own pending entries.
                log.warning(
                    "consumer %s: Redis connection lost (%s); retrying in %.1fs", self.name, e, backoff
                )
                self._abandon()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                first = True
        try:
            self._flush()  # stopped: finish the batch in flight
        except (redis.ConnectionError, redis.TimeoutError):
            self._abandon()
        return self.stats

    def _flush(self) -> None:
        """Finish the batch read ahead, if any."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._finish(ahead)

    def _abandon(self) -> None:
        """Forget the batch read ahead (its entries stay pending for us: we start over from those)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.inflight is not None:
            ahead.inflight.abandon()

    def _step(self) -> bool:
        """One unit of work; False when there was nothing to do."""
        if self._ahead is not None and (self._retry_own or self.stopping):
            self._flush()
            return True
        if self._retry_own:
            self._retry_own = False
            self._stop.wait(RETRY_DELAY_S)
            self._drain_own()
            return True
        if self.reader.claim_due():
            claimed = self._autoclaim()
            if claimed and self._ahead is not None:
                # XAUTOCLAIM also returns our own read-ahead entries when finishing the previous
                # batch took longer than claim_idle_ms; they are finished by the flush below.
                mine = {e.id for e in self._ahead.todo}
                claimed = [e for e in claimed if e.id not in mine]
            if claimed:
                self._flush()
                self._process(claimed)
                return True
        # Read ahead: the next batch's DAGs go to the engine before this batch is published, so
        # the engine is not idle while the consumer georeferences, merges and commits.
        batch = self._read(">", None if self.burst or self._ahead else self.settings.block_ms)
        if batch:
            try:
                started = self._start(batch)
            finally:
                self._flush()
            self._ahead = started
            return True
        if self._ahead is not None:
            self._flush()
            return True
        claimed = self._autoclaim()
        if claimed:
            self._process(claimed)
            return True
        if self._retry_own:
            return True
        return False

    # --- reading -----------------------------------------------------------------------------

    def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        return self.reader.read(start, block_ms)

    def _autoclaim(self) -> list[Entry]:
        return self.reader.autoclaim()

    def _drain_own(self) -> None:
        """Our own pending entries (XREADGROUP from id 0), read forward until none is left."""
        last = "0"
        while not self.stopping:
            batch = self._read(last, None)
            if not batch:
                return
            last = batch[-1].id
            self._process(batch)

    # --- the model ---------------------------------------------------------------------------

    def active_model(self) -> ActiveModel | None:
        """The feed's active model version (one GET; read again for every batch)."""
        return self.models.active()

    def _wait_for_model(self) -> ActiveModel:
        warned = False
        while True:
            model = self.active_model()
            if model is not None:
                return model
            if self.burst:
                raise NoActiveModel(
                    f"feed {self.feed} has no active model ({keys.active_model(self.feed)} is not set); "
                    "frames stay pending. Load one with `groundwatch load MODEL.pt --feed "
                    f"{self.feed}`, then run again"
                )
            if not warned:
                log.warning("feed %s: no active model yet; frames wait", self.feed)
                warned = True
            if self._stop.wait(self.settings.block_ms / 1000.0):
                raise NoActiveModel("stopped while waiting for an active model")

    def metadata(self, model: ActiveModel) -> ModelMetadata | None:
        """The model's groundwatch.json (read once per model key from AI.MODELGET BLOB)."""
        return self.models.metadata(model)

    def labels(self, model: ActiveModel) -> tuple[str, ...]:
        """Class names from the model's metadata; empty when it declares none."""
        return self.models.labels(model)

    def threshold(self, model: ActiveModel) -> float:
        """The operator's --score-threshold, else the model's own hint, else the default."""
        return self.models.threshold(model)

    # --- processing --------------------------------------------------------------------------

    def _process(self, batch: list[Entry]) -> None:
        """A batch from start to finish (frames that were read again, reclaimed ones...)."""
        started = self._start(batch)
        if started is not None:
            self._finish(started)

    def _start(self, batch: list[Entry]) -> Started | None:
        """Sort out what cannot run, read the active model, put the batch's DAGs in the engine.

        None when stopped while waiting for a model (the entries stay pending)."""
        self.stats.batches += 1
        started = inference.sort_out(batch, self.settings.max_deliveries)
        if started.todo:
            try:
                started.model = self._wait_for_model()
            except NoActiveModel:
                if self.stopping and not self.burst:
                    return None  # entries stay pending; whoever runs next picks them up
                raise
            # Frames that failed before run alone (in _finish), so a poison frame that broke a
            # whole engine batch does not take its batch-mates to the dead letters with it.
            started.isolated = any(e.deliveries > 1 for e in started.todo)
            if not started.isolated:
                inference.send(self.r, self.route, started)
        return started

    def _finish(self, started: Started) -> None:
        """Collect the engine's replies, georeference, then publish and XACK (one MULTI)."""
        results: list[tuple[Entry, TileResult]] = []
        dead = started.dead
        if started.todo:
            results, failed = inference.infer(
                self.r, self.feed, self.route, started, self.models, lambda: self.active_model()
            )
            retries = 0
            for e, reason, poison in failed:
                if poison or e.deliveries >= self.settings.max_deliveries:
                    dead.append(
                        (e, reason if poison else f"failed {e.deliveries} times; last error: {reason}")
                    )
                else:
                    retries += 1
                    log.warning(
                        "frame %s (entry %s) failed, will retry: %s",
                        e.frame and e.frame.frame_id,
                        e.id,
                        reason,
                    )
            if retries:
                # left pending: read again (alone) from our own pending entries after a pause
                self.stats.retries += retries
                self._retry_own = True
                self.r.hincrby(keys.stats(self.feed), "retries", retries)
        if results or dead or started.deleted:
            self._commit(results, dead, started.deleted)

    def _commit(
        self,
        results: list[tuple[Entry, TileResult]],
        dead: list[tuple[Entry, str]],
        deleted: list[str],
    ) -> None:
        """The commit transaction (consumers.commit), then this consumer's own counters."""
        out = self.committer.commit(results, dead, deleted)
        self.stats.add(out)
        for e, why in out.dead:
            log.warning("entry %s -> dead letters: %s", e.id, why)
