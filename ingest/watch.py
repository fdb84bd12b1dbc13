"""A ground-station drop folder: ingest complete files, move each to done/ or failed/.

A file is complete when (both rules apply):

- its name does not end in ``.part`` or ``.tmp`` and does not start with ``.`` (write
  ``name.tif.part`` and rename it to ``name.tif`` when done: a rename is atomic), and
- its size and modification time were the same at two consecutive polls (for stations that
  cannot rename).

Every failure of one file stays that file's: the watcher keeps running. A bad file (InputError:
unreadable, not georeferenced, wrong bands, partly written, too big to read within
``ingest_memory_mb``), or any other error while it is read and tiled (MemoryError included: the
same file would fail the same way at every poll), goes to ``failed/`` with
``failed/<name>.reason.txt``. Failures that are not the file's fault (Redis unreachable or
refusing writes, backpressure timeout, durability not reached) leave it where it is, to be tried
again at a later poll (in burst mode the error is raised).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from groundwatch.settings import Settings
from ingest import objectstore
from ingest.errors import IngestError, InputError
from ingest.scene import Progress, SceneResult, ingest_file

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".part", ".tmp")
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class Outcome:
    path: Path | str  # where the file is now (in done/ or failed/; an s3:// URL for an object)
    status: str  # "done" or "failed"
    reason: str = ""
    result: SceneResult | None = None

    @property
    def name(self) -> str:
        return str(self.path).rstrip("/").rsplit("/", 1)[-1]


def _complete_candidates(directory: Path) -> dict[Path, tuple[int, int]]:
    """Files that may be complete, with their (size, mtime_ns) signature."""
    out: dict[Path, tuple[int, int]] = {}
    for p in directory.iterdir():
        if p.name.startswith(".") or p.name.endswith(IGNORED_SUFFIXES):
            continue
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if p.is_file():
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def _unique(dest: Path) -> Path:
    if not dest.exists():
        return dest
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return dest.with_name(f"{dest.name}.{stamp}")


def attempt(
    run: Callable[[], SceneResult], name: str, settings: Settings
) -> tuple[SceneResult | None, BaseException | None, str]:
    """Run one file's ingest: (result, None, "") or, when it is the file's failure, (None, error,
    reason). Failures that are not the file's (Redis, backpressure, durability, the object store)
    are raised, so the file is left for a later poll."""
    try:
        return run(), None, ""
    except InputError as e:
        return None, e, str(e)
    except (IngestError, redis.RedisError):
        raise
    except MemoryError as e:
        return (
            None,
            e,
            f"ran out of memory reading it (ingest_memory_mb={settings.ingest_memory_mb:g}); lower "
            "--memory-mb so it is read in two passes, or rewrite it tiled: "
            "`gdal_translate -co TILED=YES -co COMPRESS=DEFLATE in.tif out.tif`",
        )
    except Exception as e:
        # Whatever else this file provoked: it would again at every poll, so it is the file's.
        log.exception("%s: unexpected error", name)
        return None, e, f"unexpected error ({type(e).__name__}: {e}); report it with the file"


@dataclass
class DropFolder:
    client: redis.Redis
    settings: Settings
    directory: Path
    on_progress: Progress | None = None
    _seen: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directory.is_dir():
            raise InputError(f"{self.directory}: not a directory; give the drop folder the station writes to")
        (self.directory / DONE).mkdir(exist_ok=True)
        (self.directory / FAILED).mkdir(exist_ok=True)

    def poll(self, raise_errors: bool = False) -> list[Outcome]:
        """Process every file unchanged since the previous poll; remember the others."""
        now = _complete_candidates(self.directory)
        stable = sorted(p for p, sig in now.items() if self._seen.get(p) == sig)
        self._seen = now
        outcomes = []
        for p in stable:
            try:
                outcomes.append(self.process(p))
            except (IngestError, redis.RedisError, OSError) as e:
                # Not the file's fault: Redis (down, OOM, read-only), backpressure, durability,
                # or the folder itself (a move that failed). The file stays for a later poll.
                if raise_errors:
                    raise
                log.warning("%s: not ingested now, will retry: %s", p, e)
                continue
            self._seen.pop(p, None)
        return outcomes

    def process(self, path: Path) -> Outcome:
        """Ingest one file; move it to done/ or (its own failure) failed/ with the reason."""
        result, error, reason = attempt(
            lambda: ingest_file(self.client, self.settings, path, on_progress=self.on_progress),
            path.name,
            self.settings,
        )
        if error is not None:
            return self._failed(path, error, reason)
        assert result is not None
        dest = _unique(self.directory / DONE / path.name)
        shutil.move(str(path), dest)
        return Outcome(dest, DONE, "already ingested" if result.duplicate else "", result)

    def _failed(self, path: Path, error: BaseException, reason: str) -> Outcome:
        dest = _unique(self.directory / FAILED / path.name)
        shutil.move(str(path), dest)
        dest.with_name(dest.name + ".reason.txt").write_text(
            f"{datetime.now(UTC).isoformat(timespec='seconds')} {type(error).__name__}: {reason}\n"
        )
        log.error("%s -> %s: %s", path.name, dest, reason)
        return Outcome(dest, FAILED, reason)


@dataclass
class DropPrefix:
    """A drop folder on object storage: ``s3://bucket/prefix/``, as a ground station delivers.

    An object is complete when it is listed (S3 writes are atomic; ``.part``/``.tmp`` keys and
    names starting with ``.`` are skipped). Outcomes, by ``settings.s3_done``: "move" copies
    it to ``prefix/done/`` or ``prefix/failed/`` (with ``<name>.reason.txt``) and deletes it;
    "tag" leaves it in place with a ``groundwatch-status`` tag (and ``groundwatch-reason``),
    and tagged objects are skipped. A watcher that stops between the ingest and the move ingests
    the object again when it restarts: the scene marker makes that a no-op, reported "already
    ingested".
    """

    client: redis.Redis
    settings: Settings
    prefix: str
    on_progress: Progress | None = None
    page_size: int = 1000

    def __post_init__(self) -> None:
        loc = objectstore.parse(self.prefix)
        self.location = (
            loc if not loc.key or loc.key.endswith("/") else objectstore.S3Location(loc.bucket, loc.key + "/")
        )
        self.s3 = objectstore.client(self.settings)
        # Fail at start, not at the first poll, on a wrong bucket, endpoint or credentials.
        next(iter(objectstore.list_objects(self.s3, self.location, page_size=1)), None)

    def candidates(self) -> list[Any]:
        out = []
        for obj in objectstore.list_objects(self.s3, self.location, page_size=self.page_size):
            name = obj.location.name
            if not name or name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
                continue
            if self.settings.s3_done == "tag" and objectstore.STATUS_TAG in objectstore.tags(
                self.s3, obj.location
            ):
                continue
            out.append(obj)
        return sorted(out, key=lambda o: o.location.key)

    def poll(self, raise_errors: bool = False) -> list[Outcome]:
        outcomes = []
        try:
            todo = self.candidates()
        except objectstore.ObjectStoreError as e:
            if raise_errors:
                raise
            log.warning("%s: cannot list it now, will retry: %s", self.location, e)
            return []
        for obj in todo:
            try:
                outcomes.append(self.process(obj))
            except (IngestError, redis.RedisError, OSError) as e:
                if raise_errors:
                    raise
                log.warning("%s: not ingested now, will retry: %s", obj.location, e)
        return outcomes

    def process(self, obj: Any) -> Outcome:
        """Ingest one object; record done/failed on the store as settings.s3_done says."""
        url = str(obj.location)
        result, error, reason = attempt(
            lambda: ingest_file(self.client, self.settings, url, on_progress=self.on_progress),
            obj.location.name,
            self.settings,
        )
        if error is not None:
            log.error("%s: failed: %s", url, reason)
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            return self._record(obj, FAILED, reason, f"{stamp} {type(error).__name__}: {reason}\n", None)
        assert result is not None
        return self._record(obj, DONE, "already ingested" if result.duplicate else "", "", result)

    def _record(self, obj: Any, status: str, reason: str, text: str, result: SceneResult | None) -> Outcome:
        if self.settings.s3_done == "tag":
            objectstore.tag(self.s3, obj.location, status, reason)
            return Outcome(str(obj.location), status, reason, result)
        dest = self.location.child(f"{status}/{obj.location.name}")
        try:
            objectstore.head(self.s3, dest)
            dest = self.location.child(f"{status}/{obj.location.name}.{datetime.now(UTC):%Y%m%dT%H%M%S%f}")
        except InputError:
            pass  # no object there yet: the usual case
        if text:
            objectstore.put_text(self.s3, self.location.child(f"{status}/{dest.name}.reason.txt"), text)
        objectstore.move(self.s3, obj.location, dest)
        return Outcome(str(dest), status, reason, result)


def watch(
    client: redis.Redis,
    settings: Settings,
    directory: str | Path,
    *,
    burst: bool = False,
    on_progress: Progress | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
) -> list[Outcome]:
    """Poll `directory` (a folder, or an ``s3://bucket/prefix/``) every settings.watch_poll_s;
    burst: two polls, then return."""
    folder: DropFolder | DropPrefix
    if isinstance(directory, str) and directory.startswith("s3://"):
        folder = DropPrefix(client, settings, directory, on_progress)
    else:
        folder = DropFolder(client, settings, Path(directory), on_progress)
    outcomes: list[Outcome] = []
    folder.poll(raise_errors=burst)
    while not stop():
        sleep(settings.watch_poll_s)
        for outcome in folder.poll(raise_errors=burst):
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        if burst:
            break
    return outcomes
