"""The consumer loop: frames in, one AI.DAGEXECUTE per frame, results published, then XACK.

Delivery: at least once from the stream, exactly once in the results. The parts:
:mod:`consumers.reading` (XREADGROUP of new and own pending entries, XAUTOCLAIM of idle ones),
:mod:`consumers.inference` (the active model, the DAGs, georeferencing),
:mod:`consumers.commit` (publish + dead letters in one MULTI/EXEC under WATCH of the batch's
own markers, then XACK) and :mod:`consumers.scenes` (scene completion and the overlap merge).
An entry is pending until its result is published (and its scene's, when it completed one):
a crash leaves it to be processed again (by this consumer on restart, or by another through
XAUTOCLAIM), and done again it is only acknowledged.

The loop reads ahead: the next batch's DAGs go to the engine before this batch is committed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import redis

from consumers import ConsumerError, inference
from consumers.commit import Committer, Outcome
from consumers.identity import Lease
from consumers.inference import ActiveModel, NoActiveModel, Started
from consumers.profiling import Profiler
from consumers.reading import Entry, Reader
from groundwatch import keys
from groundwatch.detections import TileResult
from groundwatch.modelmeta import ModelMetadata
from groundwatch.settings import Settings

__all__ = ["ActiveModel", "Consumer", "Entry", "NoActiveModel", "RunStats"]

log = logging.getLogger("groundwatch.consumers")

RETRY_DELAY_S = 0.25  # pause before frames that failed are tried again
MAX_BACKOFF_S = 5.0  # longest pause while a fault of the system lasts


@dataclass
class RunStats:
    """What one consumer did (also kept, feed-wide, in keys.stats)."""

    frames_done: int = 0
    detections: int = 0
    regions: int = 0  # region pieces per tile (segmentation), before the scenes' merge
    dead: int = 0
    scenes_done: int = 0
    duplicates: int = 0
    superseded: int = 0
    retries: int = 0
    conflicts: int = 0
    batches: int = 0
    faults: int = 0  # batches (or parts) left pending on a fault of the system
    reasons: list[str] = field(default_factory=list)

    def add(self, out: Outcome) -> None:
        self.superseded += out.superseded
        self.frames_done += len(out.fresh)
        self.detections += out.detections
        self.regions += out.regions
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
        self.lease = Lease(client, self.feed, self.group, settings.consumer or None)
        self.name = self.lease.name
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
        self.models = inference.Models(
            self.r, self.feed, settings.score_threshold, settings.simplify_px, settings.min_region_px
        )
        self.committer = Committer(
            self.r,
            self.feed,
            self.group,
            self.name,
            ttl_s=settings.scene_ttl_s,
            clock_ms=self._now,
            results_maxlen=settings.results_maxlen,
        )
        self.stats = RunStats()
        self.profiler = Profiler(
            self.r,
            self.feed,
            settings.profile_window_s,
            settings.profile_flush_s,
            every=settings.profile_every,
        )
        self._stop = threading.Event()
        self._retry_own = False
        self._ahead: Started | None = None
        self._fault: str | None = None  # the fault of the system this consumer is backing off on
        self._fault_backoff = RETRY_DELAY_S
        self._fit_model: ActiveModel | None = None  # the model the last batch was checked against
        self._fit_cleared_ms: int | None = None  # when this consumer last cleared keys.MODEL_FIT

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
        """Own pending entries first, then new ones and reclaimed ones, until stopped or drained.

        Nothing a frame holds ends this loop (each is a result, a dead letter or, on a fault of
        the system, left pending); Redis failures (gone, OOM, read-only...) make it back off and
        start again from its own pending entries; only stop() (or a drained burst) returns."""
        backoff = 0.1
        first = True
        try:
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
                    if "NOGROUP" in str(e) or "UNBLOCKED" in str(e):
                        # NOGROUP: the stream or its group vanished (deleted, or a restart without
                        # persistence). UNBLOCKED: the stream's key moved away while this consumer
                        # waited on it (a slot migration, a DEL): the group may well still exist.
                        what = (
                            "the stream moved or was deleted while this consumer waited on it; reading it again"
                            if "UNBLOCKED" in str(e)
                            else "creating the group again"
                        )
                        log.warning("consumer %s: %s; %s", self.name, e, what)
                        self._abandon()
                        first = True
                        continue
                    # Redis refuses (OOM, LOADING, READONLY...): not the frames' fault; they stay pending
                    backoff = self._redis_fault(f"Redis refused a command: {e}", backoff)
                    first = True
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    # Redis went away (restart, failover): nothing unacknowledged is lost; it is
                    # still pending for us, so start over with our own pending entries.
                    backoff = self._redis_fault(f"Redis connection lost ({e})", backoff)
                    first = True
                except redis.RedisError as e:
                    backoff = self._redis_fault(f"Redis failed ({type(e).__name__}: {e})", backoff)
                    first = True
                except NoActiveModel:
                    raise
                except Exception as e:
                    # Not a frame's failure (those are caught per frame) nor Redis's: a bug. The
                    # batch stays pending with its attempts counted, so a frame that provokes it
                    # every time ends in the dead letters after max_deliveries attempts.
                    log.exception("consumer %s: unexpected error; backing off", self.name)
                    backoff = self._redis_fault(f"unexpected error ({type(e).__name__}: {e})", backoff)
                    first = True
            try:
                self._flush()  # stopped: finish the batch in flight
            except redis.RedisError:
                self._abandon()
            self.profiler.flush()
        finally:
            try:
                self._note_fault(None)  # a consumer that is gone backs off on nothing
                self.lease.release()
            except redis.RedisError:
                pass
        return self.stats

    def _redis_fault(self, reason: str, backoff: float) -> float:
        log.warning("consumer %s: %s; retrying in %.1fs", self.name, reason, backoff)
        self._abandon()
        self._note_fault(reason)
        self._stop.wait(backoff)
        return min(backoff * 2, MAX_BACKOFF_S)

    def _note_fault(self, reason: str | None) -> None:
        """Show (or clear) this consumer's fault in keys.faults, for `groundwatch status`."""
        if reason == self._fault:
            return
        self._fault = reason
        try:
            if reason is None:
                self.r.hdel(keys.faults(self.feed), self.name)
            else:
                self.r.hset(
                    keys.faults(self.feed),
                    self.name,
                    json.dumps({"reason": reason[:500], "at": self.clock_ms()}),
                )
        except redis.RedisError:
            self._fault = "unrecorded"  # write it again once Redis takes writes

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
        self.lease.refresh()
        if self._ahead is not None and (self._retry_own or self.stopping):
            self._flush()
            return True
        if self._retry_own:
            self._retry_own = False
            self._stop.wait(self._fault_backoff if self._fault else RETRY_DELAY_S)
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
        started = inference.sort_out(batch, self.settings.max_frame_bytes)
        if started.todo:
            try:
                started.model = self._wait_for_model()
            except NoActiveModel:
                if self.stopping and not self.burst:
                    return None  # entries stay pending; whoever runs next picks them up
                raise
            self._fit(started)
            self._charge(started)
            # Frames that failed before run alone (in _finish), so a poison frame that broke a
            # whole engine batch does not take its batch-mates to the dead letters with it.
            started.isolated = any(e.attempts > 1 for e in started.todo)
            if started.todo and not started.isolated:
                inference.send(self.r, started, self.settings.dag_timeout)
        return started

    def _fit(self, started: Started) -> None:
        """Frames that do not fit the active model go to the dead letters now, not after
        max_deliveries engine failures; the feed's status shows the last one until a batch whose
        frames all fit, or a change of the active model, clears it (whichever consumer sees it)."""
        assert started.model is not None
        meta = self.metadata(started.model)
        keep: list[Entry] = []
        last = None
        for e in started.todo:
            try:
                why = inference.misfit(e.frame, meta, started.model.version)  # type: ignore[arg-type]
            except Exception as err:  # a metadata value we did not foresee: let the engine judge
                log.warning("model %s: cannot check frames against it (%s)", started.model.version, err)
                why = None
            if why is None:
                keep.append(e)
            else:
                started.dead.append((e, f"does not fit the model: {why}"))
                last = why
        changed = started.model != self._fit_model
        self._fit_model = started.model
        if last is not None:
            self.r.hset(
                keys.faults(self.feed),
                keys.MODEL_FIT,
                json.dumps(
                    {
                        "reason": f"frames do not fit the active model: {last}"[:500],
                        "at": self.clock_ms(),
                        "model": started.model.version,
                    }
                ),
            )
            self.r.hincrby(keys.stats(self.feed), "misfits", len(started.todo) - len(keep))
            self._fit_cleared_ms = None
        else:
            # Cleared at most once a second per consumer (one HDEL, off the engine's path), and
            # at once when the model changed: the entry judged frames against another model.
            now = self.clock_ms()
            if changed or self._fit_cleared_ms is None or now - self._fit_cleared_ms >= 1000:
                self.r.hdel(keys.faults(self.feed), keys.MODEL_FIT)
                self._fit_cleared_ms = now
        started.todo = keep

    def _charge(self, started: Started) -> None:
        """Count this attempt at each frame (keys.attempts); a frame attempted max_deliveries times
        already (each failed, or its consumer died on it) goes to the dead letters unrun."""
        if not started.todo:
            return
        key = keys.attempts(self.feed)
        pipe = self.r.pipeline(transaction=False)
        for e in started.todo:
            pipe.hincrby(key, e.id, 1)
            pipe.hget(key, f"{e.id}:error")
        replies = pipe.execute()
        keep: list[Entry] = []
        limit = self.settings.max_deliveries
        for i, e in enumerate(started.todo):
            e.attempts = int(replies[2 * i])
            if e.attempts > limit:
                last = replies[2 * i + 1]
                cause = (
                    f"; last error: {last.decode(errors='replace')}"
                    if last
                    else " (its consumer died on it every time)"
                )
                started.dead.append((e, f"attempted {e.attempts - 1} times (max_deliveries {limit}){cause}"))
            else:
                keep.append(e)
        started.todo = keep

    def _refund(self, entries: list[Entry]) -> None:
        """Attempts spoilt by a fault of the system do not count."""
        if entries:
            pipe = self.r.pipeline(transaction=False)
            for e in entries:
                pipe.hincrby(keys.attempts(self.feed), e.id, -1)
            pipe.execute()

    def _finish(self, started: Started) -> None:
        """Collect the engine's replies, georeference, then publish and XACK (consumers.commit)."""
        results: list[tuple[Entry, TileResult]] = []
        dead = started.dead
        faults: list[tuple[Entry, str]] = []
        if started.todo:
            results, failed, faults = inference.infer(
                self.r,
                self.feed,
                started,
                self.models,
                lambda: self.active_model(),
                self.settings.dag_timeout,
            )
            retries = 0
            errors: dict[str, str] = {}
            for e, reason, poison in failed:
                if poison or e.attempts >= self.settings.max_deliveries:
                    dead.append((e, reason if poison else f"failed {e.attempts} times; last error: {reason}"))
                else:
                    retries += 1
                    errors[f"{e.id}:error"] = reason[:500]
                    log.warning(
                        "frame %s (entry %s) failed, will retry: %s",
                        e.frame and e.frame.frame_id,
                        e.id,
                        reason,
                    )
            if errors:
                self.r.hset(keys.attempts(self.feed), mapping=errors)
            if retries:
                # left pending: read again (alone) from our own pending entries after a pause
                self.stats.retries += retries
                self._retry_own = True
                self.r.hincrby(keys.stats(self.feed), "retries", retries)
            if faults:
                # The system's fault, not the frames': they stay pending, uncharged, and this
                # consumer backs off (longer while it lasts) and tries them again by itself.
                self._refund([e for e, _ in faults])
                self.stats.faults += 1
                self.r.hincrby(keys.stats(self.feed), "fault_waits", 1)
                log.warning(
                    "consumer %s: %d frame(s) left pending: %s; retrying in %.1fs",
                    self.name,
                    len(faults),
                    faults[0][1],
                    self._fault_backoff,
                )
                self._note_fault(faults[0][1])
                self._retry_own = True
        if results or dead or started.deleted:
            self._commit(results, dead, started.deleted)
        if faults:
            self._fault_backoff = min(self._fault_backoff * 2, MAX_BACKOFF_S)
        elif results:
            self._fault_backoff = RETRY_DELAY_S
            self._note_fault(None)

    def _commit(
        self,
        results: list[tuple[Entry, TileResult]],
        dead: list[tuple[Entry, str]],
        deleted: list[str],
    ) -> None:
        """The commit transaction (consumers.commit), then this consumer's own counters.

        Should the batch's transaction fail for something one frame holds (not Redis: that
        raises), each frame is committed alone, and a frame that cannot be committed becomes a
        dead letter (with only the dead_* fields if its own cannot be written either)."""
        try:
            outs = [self.committer.commit(results, dead, deleted)]
        except redis.RedisError:
            raise
        except Exception:
            log.exception(
                "consumer %s: committing a batch failed; committing its frames one by one", self.name
            )
            outs = [self.committer.commit([], [], deleted)] if deleted else []
            for e, r in results:
                outs.append(self._commit_alone(e, partial(self.committer.commit, [(e, r)], [], [])))
            for e, why in dead:
                outs.append(self._commit_alone(e, partial(self.committer.commit, [], [(e, why)], [])))
        for out in outs:
            self.stats.add(out)
            for e, why in out.dead:
                log.warning("entry %s -> dead letters: %s", e.id, why)
        if results:
            try:
                self.profiler.add(results)
            except Exception:  # figures, not results: never a reason to stop or to fail a frame
                log.exception("consumer %s: profiling a batch failed", self.name)

    def _commit_alone(self, e: Entry, commit: Callable[[], Outcome]) -> Outcome:
        try:
            return commit()
        except redis.RedisError:
            raise
        except Exception as err:
            e.stripped = True
            why = f"cannot be committed ({type(err).__name__}: {err}); its fields are not copied here"
            return self.committer.commit([], [(e, why)], [])
