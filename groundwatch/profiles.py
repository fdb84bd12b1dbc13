"""Profiles of what flows through a feed, and drift between two of them. Pure: no Redis here.

A :class:`Profile` summarises the input tiles (per band: count, mean, std, quantiles, nodata
fraction) and the model's outputs (detections per tile, per class, the score distribution) of
one feed and model version over a window. Profiles are **mergeable by addition**: every field
is a count or a sum, so consumers add their batches into the same Redis hash with HINCRBY, and
windows (or shards) combine by adding fields. Quantiles come from a relative-error sketch in
the manner of DDSketch: a value v > 0 falls in bucket ceil(log_gamma(v)), negative values in
mirrored buckets and |v| < 1e-9 in a zero bucket, so any quantile is known within ALPHA (2%)
of its value, over any range of pixel values, in a few hundred buckets a band.

Why not a library (docs/monitoring.md): whylogs was last released in 2024 and fails on NumPy 2;
Apache DataSketches' KLL sketches merge too, but their serialised form is opaque bytes that
cannot be added with HINCRBY in Redis, so every batch would need a read-modify-write. A
log-bucket histogram is 40 lines of NumPy, vectorised, and its Redis form is plain counters.

Drift is the population stability index (PSI) between the reference and the current
distribution, over ten bins cut at the reference's deciles (bins the usual rule of thumb reads:
< 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift), the relative change of each band's mean (PSI
alone is blind to a gain change of a wide distribution: a 20% brighter speckled band moves PSI
by only about 0.12), and the relative change of detections per tile. A measure needs at least ``min_tiles`` tiles on both sides to be judged.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALPHA = 0.02  # relative accuracy of the quantiles
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)
_ZERO = 1e-9
_SPAN = 4500  # |key| < 4500 for every finite float64 of magnitude up to 1.8e308
SCORE_BINS = 20  # scores 0..1 in 0.05 bins
SAMPLE_PX = 4096  # pixels a band profiled per tile (a systematic sample)
PSI_FLOOR = 1e-4  # empty bins count as this fraction, so PSI stays finite


# --- the sketch -----------------------------------------------------------------------------------


def bucket_keys(values: np.ndarray) -> np.ndarray:
    """The sketch bucket of each value (int64): 0 for |v| < 1e-9, +-(1 + ceil(log_gamma |v|)) else."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    mag = np.abs(v)
    out = np.zeros(v.shape, dtype=np.int64)
    big = mag >= _ZERO
    k = np.ceil(np.log(mag[big]) / _LOG_GAMMA).astype(np.int64) + 2000  # > 0 for |v| >= 1e-9
    out[big] = np.where(v[big] > 0, k, -k)
    return out


def bucket_value(key: int) -> float:
    """A representative value of bucket `key` (the middle of its range, within ALPHA)."""
    if key == 0:
        return 0.0
    k = abs(key) - 2000
    v = 2 * GAMMA**k / (GAMMA + 1)
    return v if key > 0 else -v


def count_buckets(values: np.ndarray) -> dict[int, int]:
    """Bucket counts (a bincount over the bounded key range: linear, no sort)."""
    counts = np.bincount(bucket_keys(values) + _SPAN, minlength=2 * _SPAN + 1)
    nz = np.flatnonzero(counts)
    return {int(k) - _SPAN: int(counts[k]) for k in nz}


def quantile(buckets: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of the values counted in `buckets`, None when there are none."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    ordered = sorted(buckets, key=bucket_value)
    rank = q * (total - 1)
    seen = 0
    for k in ordered:
        seen += buckets[k]
        if seen > rank:
            return bucket_value(k)
    return bucket_value(ordered[-1])


# --- profiles -------------------------------------------------------------------------------------


@dataclass
class BandProfile:
    count: int = 0  # valid (not nodata, finite) pixels sampled
    nodata: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(2 * _SPAN + 1, dtype=np.int64))

    @property
    def buckets(self) -> dict[int, int]:
        """The sketch as {bucket key: count} (non-empty buckets only)."""
        nz = np.flatnonzero(self.hist)
        return {int(k) - _SPAN: int(self.hist[k]) for k in nz}

    def add_bucket(self, key: int, count: int) -> None:
        if -_SPAN <= key <= _SPAN:
            self.hist[key + _SPAN] += count

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def std(self) -> float | None:
        if not self.count:
            return None
        m = self.total / self.count
        return math.sqrt(max(self.total_sq / self.count - m * m, 0.0))

    @property
    def nodata_fraction(self) -> float | None:
        n = self.count + self.nodata
        return self.nodata / n if n else None


@dataclass
class Profile:
    """What flowed through one feed and model version over a window (see the module doc)."""

    tiles: int = 0
    bands: list[BandProfile] = field(default_factory=list)
    detections: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    scores: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)

    def band(self, i: int) -> BandProfile:
        while len(self.bands) <= i:
            self.bands.append(BandProfile())
        return self.bands[i]

    def add_tile(self, array: np.ndarray, nodata: float | None) -> None:
        """One tile, (C, H, W) or (H, W), of any numeric dtype (see add_tiles)."""
        self.add_tiles([array], nodata)

    def add_tiles(self, arrays: Sequence[np.ndarray], nodata: float | None) -> None:
        """Tiles of one nodata value, each (C, H, W) or (H, W), of any numeric dtype.

        A systematic sample of about SAMPLE_PX pixels a band of each tile (every s-th row and
        column) is profiled, not every pixel: the figures are estimates whose noise is far
        below any drift worth an alert. The samples of all the tiles are profiled together, so
        a batch costs one set of NumPy calls a band, not one a tile.
        """
        by_band: list[list[np.ndarray]] = []
        for array in arrays:
            a = np.asarray(array)
            if a.ndim == 2:
                a = a[np.newaxis]
            self.tiles += 1
            step = max(1, math.ceil(math.sqrt(a.shape[1] * a.shape[2] / SAMPLE_PX)))
            sample = a[:, ::step, ::step]
            for i in range(sample.shape[0]):
                if len(by_band) <= i:
                    by_band.append([])
                by_band[i].append(sample[i].ravel())
        for i, parts in enumerate(by_band):
            v = np.concatenate(parts).astype(np.float64)
            valid = np.isfinite(v)
            if nodata is not None:
                valid &= ~(np.isnan(v) if math.isnan(nodata) else (v == nodata))
            b = self.band(i)
            good = v[valid]
            b.nodata += int(v.size - good.size)
            b.count += int(good.size)
            b.total += float(good.sum())
            # not np.dot: that is BLAS, whose threads then spin-wait on the consumer's other core
            b.total_sq += float(np.square(good).sum())
            b.hist += np.bincount(bucket_keys(good) + _SPAN, minlength=2 * _SPAN + 1)

    def add_detections(self, scores: Sequence[float], classes: Sequence[str]) -> None:
        """The detections of any number of tiles: their scores and class names."""
        self.detections += len(scores)
        if len(scores):
            bins = np.minimum(
                (np.asarray(scores, dtype=np.float64) * SCORE_BINS).astype(np.int64), SCORE_BINS - 1
            )
            counts = np.bincount(np.maximum(bins, 0), minlength=SCORE_BINS)
            self.scores = [a + int(b) for a, b in zip(self.scores, counts, strict=True)]
        for c, n in Counter(classes).items():
            self.classes[c] = self.classes.get(c, 0) + n

    def merge(self, other: Profile) -> Profile:
        self.tiles += other.tiles
        for i, ob in enumerate(other.bands):
            b = self.band(i)
            b.count += ob.count
            b.nodata += ob.nodata
            b.total += ob.total
            b.total_sq += ob.total_sq
            b.hist += ob.hist
        self.detections += other.detections
        for name, n in other.classes.items():
            self.classes[name] = self.classes.get(name, 0) + n
        self.scores = [a + b for a, b in zip(self.scores, other.scores, strict=True)]
        return self

    def summary(self) -> dict[str, Any]:
        """The figures people read (``groundwatch monitor``, the web view)."""
        return {
            "tiles": self.tiles,
            "bands": [
                {
                    "mean": b.mean,
                    "std": b.std,
                    "p05": quantile(b.buckets, 0.05),
                    "p50": quantile(b.buckets, 0.5),
                    "p95": quantile(b.buckets, 0.95),
                    "nodata_fraction": b.nodata_fraction,
                }
                for b in self.bands
            ],
            "detections_per_tile": self.detections / self.tiles if self.tiles else None,
            "classes": dict(self.classes),
        }


# --- the Redis form: a hash of counters -----------------------------------------------------------


def to_fields(p: Profile) -> tuple[dict[str, int], dict[str, float]]:
    """(integer fields for HINCRBY, float fields for HINCRBYFLOAT) that add `p` to a hash."""
    ints: dict[str, int] = {"tiles": p.tiles, "det": p.detections}
    floats: dict[str, float] = {}
    for i, b in enumerate(p.bands):
        ints[f"b{i}:n"] = b.count
        ints[f"b{i}:nodata"] = b.nodata
        floats[f"b{i}:sum"] = b.total
        floats[f"b{i}:sumsq"] = b.total_sq
        for k, c in b.buckets.items():
            ints[f"b{i}:k{k}"] = c
    for name, n in p.classes.items():
        ints[f"cls:{name}"] = n
    for j, n in enumerate(p.scores):
        if n:
            ints[f"score:{j}"] = n
    return {k: v for k, v in ints.items() if v}, {k: v for k, v in floats.items() if v}


def from_fields(h: Mapping[Any, Any]) -> Profile:
    """A profile from its hash (HGETALL); unknown or malformed fields are ignored."""
    p = Profile()
    for raw_k, raw_v in h.items():
        k = raw_k.decode() if isinstance(raw_k, bytes) else str(raw_k)
        text = raw_v.decode() if isinstance(raw_v, bytes) else str(raw_v)
        try:
            if k == "tiles":
                p.tiles = int(text)
            elif k == "det":
                p.detections = int(text)
            elif k.startswith("cls:"):
                p.classes[k[4:]] = int(text)
            elif k.startswith("score:"):
                p.scores[int(k[6:])] = int(text)
            elif k.startswith("b") and ":" in k:
                band_text, what = k[1:].split(":", 1)
                b = p.band(int(band_text))
                if what == "n":
                    b.count = int(text)
                elif what == "nodata":
                    b.nodata = int(text)
                elif what == "sum":
                    b.total = float(text)
                elif what == "sumsq":
                    b.total_sq = float(text)
                elif what.startswith("k"):
                    b.add_bucket(int(what[1:]), int(text))
        except (ValueError, IndexError):
            continue
    return p


# --- drift ----------------------------------------------------------------------------------------


def psi_buckets(reference: Mapping[int, int], current: Mapping[int, int], bins: int = 10) -> float | None:
    """PSI of `current` against `reference`, over bins cut at the reference's quantiles."""
    rt, ct = sum(reference.values()), sum(current.values())
    if rt <= 0 or ct <= 0:
        return None
    edges = sorted({v for v in (quantile(reference, i / bins) for i in range(1, bins)) if v is not None})

    def shares(b: Mapping[int, int], total: int) -> np.ndarray:
        out = np.zeros(len(edges) + 1)
        for k, c in b.items():
            out[np.searchsorted(edges, bucket_value(k), side="right")] += c
        return out / total

    return psi(shares(reference, rt), shares(current, ct))


def psi(reference: Iterable[float], current: Iterable[float]) -> float:
    """Population stability index of two distributions given as shares of the same bins."""
    r = np.maximum(np.asarray(list(reference), dtype=np.float64), PSI_FLOOR)
    c = np.maximum(np.asarray(list(current), dtype=np.float64), PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


@dataclass(frozen=True)
class Measure:
    """One drift figure: what (``band:0`` (PSI), ``band:0:mean``, ``scores``, ``classes``,
    ``detections_per_tile``),
    its value, and the threshold it is judged against."""

    name: str
    value: float
    threshold: float
    detail: str

    @property
    def drifted(self) -> bool:
        return self.value > self.threshold


def drift(
    reference: Profile,
    current: Profile,
    *,
    psi_threshold: float = 0.25,
    mean_threshold: float = 0.1,
    rate_threshold: float = 0.5,
    min_tiles: int = 50,
) -> list[Measure]:
    """Every measure that can be judged between the two profiles (none below min_tiles)."""
    if reference.tiles < min_tiles or current.tiles < min_tiles:
        return []
    out: list[Measure] = []
    for i, (rb, cb) in enumerate(zip(reference.bands, current.bands, strict=False)):
        means = f"band {i + 1} mean {_fmt(rb.mean)} -> {_fmt(cb.mean)}"
        if rb.mean and cb.mean is not None:
            out.append(
                Measure(f"band:{i}:mean", abs(cb.mean - rb.mean) / abs(rb.mean), mean_threshold, means)
            )
        v = psi_buckets(rb.buckets, cb.buckets)
        if v is not None:
            out.append(Measure(f"band:{i}", v, psi_threshold, means + " (distribution)"))
    if reference.detections and current.detections:
        out.append(
            Measure(
                "scores",
                psi(
                    np.array(reference.scores) / reference.detections,
                    np.array(current.scores) / current.detections,
                ),
                psi_threshold,
                "score distribution",
            )
        )
        names = sorted(set(reference.classes) | set(current.classes))
        out.append(
            Measure(
                "classes",
                psi(
                    [reference.classes.get(n, 0) / reference.detections for n in names],
                    [current.classes.get(n, 0) / current.detections for n in names],
                ),
                psi_threshold,
                "class mix " + ", ".join(names),
            )
        )
    ref_rate = reference.detections / reference.tiles
    cur_rate = current.detections / current.tiles
    if ref_rate > 0:
        out.append(
            Measure(
                "detections_per_tile",
                abs(cur_rate - ref_rate) / ref_rate,
                rate_threshold,
                f"detections per tile {ref_rate:.3g} -> {cur_rate:.3g}",
            )
        )
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def measure_json(m: Measure) -> str:
    return json.dumps({"value": round(m.value, 4), "threshold": m.threshold, "detail": m.detail})
