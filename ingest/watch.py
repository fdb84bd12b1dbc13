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

import redis

from groundwatch.settings import Settings
from ingest.errors import IngestError, InputError
from ingest.scene import Progress, SceneResult, ingest_file

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".part", ".tmp")
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class Outcome:
    path: Path  # where the file is now (in done/ or failed/)
    status: str  # "done" or "failed"
    reason: str = ""
    result: SceneResult | None = None


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
        try:
            result = ingest_file(self.client, self.settings, path, on_progress=self.on_progress)
        except InputError as e:
            return self._failed(path, e)
        except (IngestError, redis.RedisError):
            raise
        except MemoryError as e:
            return self._failed(
                path,
                e,
                f"ran out of memory reading it (ingest_memory_mb={self.settings.ingest_memory_mb:g}); lower "
                "--memory-mb so it is read in two passes, or rewrite it tiled: "
                "`gdal_translate -co TILED=YES -co COMPRESS=DEFLATE in.tif out.tif`",
            )
        except Exception as e:
            # Whatever else this file provoked: it would again at every poll, so it is the file's.
            log.exception("%s: unexpected error", path.name)
            return self._failed(
                path, e, f"unexpected error ({type(e).__name__}: {e}); report it with the file"
            )
        dest = _unique(self.directory / DONE / path.name)
        shutil.move(str(path), dest)
        return Outcome(dest, DONE, "already ingested" if result.duplicate else "", result)

    def _failed(self, path: Path, error: BaseException, reason: str | None = None) -> Outcome:
        reason = reason or str(error)
        dest = _unique(self.directory / FAILED / path.name)
        shutil.move(str(path), dest)
        dest.with_name(dest.name + ".reason.txt").write_text(
            f"{datetime.now(UTC).isoformat(timespec='seconds')} {type(error).__name__}: {reason}\n"
        )
        log.error("%s -> %s: %s", path.name, dest, reason)
        return Outcome(dest, FAILED, reason)


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
    """Poll `directory` every settings.watch_poll_s; burst: two polls, then return."""
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
