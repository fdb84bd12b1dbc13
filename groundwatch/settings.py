"""The one settings object, built once from flags and the environment and passed down.

Nothing else in groundwatch reads the environment: a role receives a :class:`Settings` and
takes what it needs from it. Environment variables are ``GROUNDWATCH_<FIELD>`` (upper case)
plus the conventional ``REDIS_URL``; a command-line flag wins over the environment, which wins
over the default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundwatch.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCORE_THRESHOLD = 0.3


@dataclass(frozen=True)
class Settings:
    """Everything configurable, validated on construction.

    redis_url: where Redis is (``redis://``, ``rediss://`` for TLS, ACL user and password in
        the URL); None means the embedded server that `groundwatch up` started under data_dir.
    redis_user: with the embedded server secured by `up --secure`, the ACL user (a role, see
        docs/security.md) whose password the CLI takes from <data_dir>/credentials.json;
        default operator.
    tls_ca_cert: the CA that signed the server's certificate (``rediss://``: the certificate and
        the host name are verified against it; default: the embedded server's CA, else the
        system's CAs). tls_cert/tls_key: a client certificate for mutual TLS.
    data_dir: the embedded server's files (RDB, AOF, log, port file) and demo output.
    engine_module: the engine's shared object loaded into the embedded server.
    """

    redis_url: str | None = None
    redis_user: str | None = None
    tls_ca_cert: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    data_dir: Path = Path(".groundwatch")
    engine_module: Path = REPO_ROOT / "engine" / "build" / "engine.so"
    threads_per_queue: int = 1
    intra_op_threads: int = 0
    # engine: MB of libtorch's block cache (None: the engine's default, 512 or maxmemory/4) and
    # BACKEND_MEMORY_LIMIT in MB for TORCH runs (0: none); see docs/engine-limits.md.
    torch_cpu_cache_mb: int | None = None
    backend_memory_limit_mb: int = 0
    feed: str = "default"
    group: str = "detectors"
    consumer: str = ""  # consumers: the name in the group; empty: "<host>-<slot>", the first free slot
    dag_timeout_ms: int = 0  # consumers: the engine's TIMEOUT per DAG; 0: claim_idle_ms // 3
    max_frame_bytes: int = 64_000_000  # consumers: frames with more tensor data are dead letters at once
    # None: the model's own score_threshold_hint (docs/models.md), else DEFAULT_SCORE_THRESHOLD.
    score_threshold: float | None = None
    # consumers, segmentation models (contract 2): Douglas-Peucker tolerance of published outlines
    # in pixels (0: the exact pixel outlines); the merge of a scene always uses the exact ones.
    simplify_px: float = 1.0
    # consumers and `evaluate`, contract 2: the smallest region a scene result publishes, in pixels
    # of the tile grid, for every class. None: the model's own min_region_px (docs/models.md);
    # 0 publishes every region.
    min_region_px: int | None = None
    tile_size: int = 512
    tile_overlap: int = 64
    read_count: int = 16
    block_ms: int = 1000
    claim_idle_ms: int = 30000
    max_deliveries: int = 3
    max_lag: int = 1000
    backpressure_timeout_s: float = 60.0
    scene_ttl_s: int = 7 * 24 * 3600
    results_maxlen: int = 100_000  # consumers: approximate cap (entries) of the detections and scenes streams
    progress_ttl_s: int = 7 * 24 * 3600  # ingest: how long a half-published scene's resume point lives
    ingest_bands: str = ""  # ingest: 1-based band numbers to read, e.g. "4,3,2" (empty: all bands)
    expect_bands: int = 0  # ingest: refuse scenes that do not yield this many bands (0: any)
    publish_batch: int = 32  # ingest: frames per MULTI/EXEC (and per backpressure check)
    watch_poll_s: float = 2.0  # ingest: drop-folder poll interval; a file must be unchanged over two polls
    ingest_memory_mb: float = 1024.0  # ingest: memory budget (MB); larger scenes are read twice, a file one row of tiles of which does not fit is refused
    log_level: str = "INFO"
    # Monitoring (docs/monitoring.md): profiles per window, drift against a reference, alerts.
    profile_window_s: int = 60  # consumers add their profiles to one hash per window
    profile_flush_s: float = 5.0  # ... at most this often
    profile_every: int = 4  # profile one tile in this many (by frame id); 1: every tile
    baseline_frames: int = 500  # default reference: the first N frames a model version ran
    drift_psi: float = 0.25  # population stability index above which a distribution has drifted
    drift_mean: float = 0.1  # relative change of a band's mean that is drift
    drift_rate: float = 0.5  # relative change of detections per tile that is drift
    drift_min_tiles: int = 50  # fewer tiles than this in a window: not judged
    quiet_s: float = 300.0  # a feed with frames waiting or recently active that sees none this long
    dead_rate: float = 0.05  # dead letters / frames over a window above which an alert is raised
    # Object storage (s3:// locations). The conventional AWS variables are read too
    # (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL);
    # the endpoint is for S3-compatible stores (MinIO, Ceph, a test server): http:// turns HTTPS off.
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_access_key_id: str = field(default="", repr=False)
    s3_secret_access_key: str = field(default="", repr=False)
    s3_session_token: str = field(default="", repr=False)
    s3_done: str = "move"  # watch s3://: "move" to done/ and failed/ prefixes, or "tag" objects in place

    def __post_init__(self) -> None:
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"REDIS_URL {self.redis_url!r} is not a Redis URL; use redis://[user:password@]host:port/db, "
                "rediss:// for TLS, or unix:///path/to/socket"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "a client certificate needs both GROUNDWATCH_TLS_CERT and GROUNDWATCH_TLS_KEY "
                "(the certificate and its private key, PEM)"
            )
        if self.tile_size <= 0 or not 0 <= self.tile_overlap < self.tile_size:
            raise ConfigError(
                f"tile overlap {self.tile_overlap} must be >= 0 and smaller than the tile size {self.tile_size}"
            )
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"score threshold {self.score_threshold} must be between 0 and 1")
        if not 0.0 <= self.simplify_px <= 1000.0:
            raise ConfigError(
                f"simplify_px {self.simplify_px} must be between 0 (exact outlines) and 1000 pixels"
            )
        if self.min_region_px is not None and self.min_region_px < 0:
            raise ConfigError(
                f"min_region_px {self.min_region_px} must be 0 (publish every region) or more pixels; "
                "unset it to use the model's own min_region_px"
            )
        if self.torch_cpu_cache_mb is not None and self.torch_cpu_cache_mb < 0:
            raise ConfigError(f"torch_cpu_cache_mb must be 0 (off) or more, got {self.torch_cpu_cache_mb}")
        if self.backend_memory_limit_mb < 0:
            raise ConfigError(
                f"backend_memory_limit_mb must be 0 (no limit) or more, got {self.backend_memory_limit_mb}"
            )
        if self.dag_timeout_ms < 0 or self.dag_timeout_ms * 2 > self.claim_idle_ms:
            raise ConfigError(
                f"dag_timeout_ms {self.dag_timeout_ms} must be between 0 (claim_idle_ms // 3) and half of "
                f"claim_idle_ms ({self.claim_idle_ms}): a batch still in the engine must not be reclaimed"
            )
        if self.s3_done not in ("move", "tag"):
            raise ConfigError(f"s3_done must be 'move' or 'tag', got {self.s3_done!r}")
        if self.s3_endpoint and not self.s3_endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"s3 endpoint {self.s3_endpoint!r} must be a URL such as https://s3.example.com or "
                "http://127.0.0.1:9000"
            )
        for name in (
            "threads_per_queue",
            "read_count",
            "max_deliveries",
            "publish_batch",
            "max_frame_bytes",
            "profile_every",
            "results_maxlen",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Defaults, overridden by `env` (default: os.environ), overridden by non-None flags."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"GROUNDWATCH_{f.name.upper()}")
            if f.name == "redis_url":
                raw = env.get("REDIS_URL", raw)
            elif f.name in _AWS_ENV and raw is None:
                raw = next((env[n] for n in _AWS_ENV[f.name] if env.get(n)), None)
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in flags.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**values)

    @property
    def dag_timeout(self) -> int | None:
        """The engine TIMEOUT of a consumer's DAG (ms): well inside claim_idle_ms, so a batch that
        waits in a busy engine times out (and is retried) before another consumer reclaims it.
        None (no TIMEOUT) when claim_idle_ms is under 3 s: such a setting reclaims at once anyway."""
        if self.dag_timeout_ms:
            return self.dag_timeout_ms
        return self.claim_idle_ms // 3 if self.claim_idle_ms >= 3000 else None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# Settings the AWS SDKs and GDAL users already set, read when GROUNDWATCH_<FIELD> is not.
_AWS_ENV = {
    "s3_endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "s3_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "s3_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "s3_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "s3_session_token": ("AWS_SESSION_TOKEN",),
}


def _convert(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name).removesuffix(" | None")
    try:
        if "Path" in kind:
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as e:
        raise ConfigError(f"GROUNDWATCH_{name.upper()}={raw!r} is not a valid {kind}") from e
    return raw
