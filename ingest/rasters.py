"""Reading scenes with rasterio, through one function: :func:`open_raster`.

It checks what ingest needs (readable, georeferenced, the bands asked for, one dtype the engine
knows) and turns every failure into an :class:`InputError` that names the file and the fix.
Reads are windowed: :meth:`Raster.read_rows` reads exactly the rows asked for (ingest.scene asks
for the rows of a row of tiles the previous read did not cover), and GDAL's block cache (limited
to a quarter of ``ingest_memory_mb`` while a file is open) keeps the blocks two reads share. What one read costs, whatever the file's layout, is
:meth:`Raster.working_set_bytes`: the rows read, plus one block as GDAL decodes it whole (a
compressed single-strip file is one block of the whole image), plus that cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from groundwatch.frames import FrameError, PixelWindow, engine_dtype
from ingest.errors import InputError

_PARTIAL_HINT = (
    "the file is probably partly written or corrupt: wait until the ground station has finished "
    "writing it (deliver as name.tif.part and rename), or ask for it to be sent again"
)


@dataclass
class Raster:
    """An open scene: its metadata and windowed reads of the selected bands."""

    path: Path | str  # a local file, or the s3:// URL of an object
    dataset: Any  # rasterio DatasetReader
    bands: tuple[int, ...]  # 1-based band numbers in the file
    width_px: int
    height_px: int
    dtype: np.dtype[Any]
    transform: tuple[float, float, float, float, float, float]  # affine order a..f
    crs: str
    nodata: float | None
    block_rows_px: int
    acquired: datetime
    block_bytes: int = 0  # one block as GDAL holds it while decoding (doubled when compressed)
    cache_bytes: int = 0  # GDAL's block cache limit while this file is open

    def read(self, window: PixelWindow) -> np.ndarray:
        """The selected bands in `window` as a (C, height, width) array of the file's dtype."""
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        try:
            return self.dataset.read(
                indexes=list(self.bands),
                window=Window(window.col_off, window.row_off, window.width, window.height),
            )
        except (RasterioError, OSError) as e:
            raise InputError(
                f"{self.path}: reading pixels {tuple(window)} (col_off, row_off, width, height) failed: "
                f"{_reason(e)}; {_PARTIAL_HINT}"
            ) from e

    def read_rows(self, row_off_px: int, height_px: int) -> tuple[int, np.ndarray]:
        """All columns of rows row_off_px..row_off_px+height_px-1 (exactly those rows).

        Returns (first row read, array); the caller slices its windows out of it. Not widened to
        the file's blocks: a block can be the whole image (one strip), and GDAL's cache already
        keeps blocks shared by two rows of tiles.
        """
        height_px = min(height_px, self.height_px - row_off_px)
        return row_off_px, self.read(PixelWindow(0, row_off_px, self.width_px, height_px))

    def working_set_bytes(self, rows_px: int) -> int:
        """Memory one read of `rows_px` rows costs: the rows, one decoded block, GDAL's cache."""
        rows = min(rows_px, self.height_px)
        return (
            rows * self.width_px * len(self.bands) * self.dtype.itemsize + self.block_bytes + self.cache_bytes
        )

    def layout(self) -> str:
        """The file's block layout in words (for messages)."""
        if self.block_rows_px >= self.height_px:
            return "a single strip of the whole image"
        return f"blocks of {self.block_rows_px} rows"


def _reason(e: BaseException) -> str:
    """The error with its causes (rasterio says "see previous exception" for GDAL's message)."""
    parts = [str(e)]
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        parts.append(str(e))
    return ": ".join(p for p in parts if p)


def _crs_text(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else str(crs.to_wkt())


def _acquired(path: Path | str, tags: dict[str, str], modified: datetime | None = None) -> datetime:
    """Acquisition time from the file's tags, else `modified`, else the file's mtime (UTC).

    A tag that parses but lies outside the years 1..9999 once taken to UTC (e.g.
    0001-01-01T00:00:00+01:00) is the file's fault: InputError, not OverflowError.
    """
    for name in ("ACQUISITIONDATETIME", "acquired", "TIFFTAG_DATETIME"):
        text = tags.get(name)
        if not text:
            continue
        for parse in (
            lambda t: datetime.strptime(t, "%Y:%m:%d %H:%M:%S").replace(tzinfo=UTC),
            lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")),
        ):
            try:
                value = parse(text.strip())
            except ValueError:
                continue
            try:
                return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            except OverflowError as e:
                raise InputError(
                    f"{path}: its {name} tag {text!r} is outside the years 1..9999 in UTC; fix the tag "
                    f"(e.g. `gdal_edit.py -mo {name}=2026-11-25T10:31:07Z {Path(path).name}`)"
                ) from e
    if modified is not None:
        return modified.astimezone(UTC) if modified.tzinfo else modified.replace(tzinfo=UTC)
    if isinstance(path, str):  # an object whose time the caller did not give
        return datetime.now(UTC)
    return datetime.fromtimestamp(os.stat(path).st_mtime, UTC)


@contextmanager
def open_raster(
    path: str | os.PathLike[str],
    bands: Sequence[int] | None = None,
    expect_bands: int = 0,
    memory_bytes: int | None = None,
    gdal_env: Mapping[str, Any] | None = None,
    modified: datetime | None = None,
) -> Iterator[Raster]:
    """Open a scene for ingest: the one place that opens rasters.

    path: a local file or an ``s3://bucket/key`` object (read by GDAL's /vsis3/ with range
    requests: only the blocks read are fetched). bands: 1-based band numbers to read, in that
    order (None: all). expect_bands: when > 0, the number of channels the feed's model wants; a
    scene that yields another count is refused. memory_bytes: ingest's memory budget; GDAL's
    block cache gets a quarter of it while the file is open (GDAL's default is 5% of the
    machine's memory, which would not be bounded by it). gdal_env: GDAL configuration options
    (``ingest.objectstore.gdal_options``: endpoint, credentials). modified: the object's time
    (its LastModified), the acquisition time when the file carries none; a local file's mtime
    is used otherwise.
    """
    import rasterio
    from rasterio.errors import RasterioError

    remote = isinstance(path, str) and path.startswith("s3://")
    p: Path = Path(path) if not remote else Path(str(path)[len("s3://") :])
    shown = str(path)
    if not remote and not p.is_file():
        raise InputError(f"{p}: no such file; check the path")
    # GDAL reads values below 100000 as megabytes, larger ones as bytes.
    cache = None if memory_bytes is None else max(memory_bytes // 4, 100_001)
    options: dict[str, Any] = dict(gdal_env or {})
    if cache is not None:
        options["GDAL_CACHEMAX"] = cache
    with rasterio.Env(**options):
        try:
            ds = rasterio.open("/vsis3/" + str(p) if remote else p)
        except (RasterioError, OSError) as e:
            reason = _reason(e)
            if remote and any(
                w in reason
                for w in (
                    "HTTP response code: 403",
                    "Access Denied",
                    "InvalidAccessKeyId",
                    "SignatureDoesNotMatch",
                )
            ):
                from ingest.objectstore import ObjectStoreError

                raise ObjectStoreError(
                    f"{shown}: the object store refused the credentials ({reason}); set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or GROUNDWATCH_S3_ACCESS_KEY_ID/_SECRET_ACCESS_KEY) to a key that may "
                    "read it"
                ) from e
            if remote and any(
                w in reason
                for w in ("Could not resolve host", "Connection refused", "Couldn't connect", "Timeout")
            ):
                from ingest.objectstore import ObjectStoreError

                raise ObjectStoreError(
                    f"{shown}: the object store is unreachable ({reason}); check GROUNDWATCH_S3_ENDPOINT / "
                    "AWS_ENDPOINT_URL and the network"
                ) from e
            raise InputError(
                f"{shown}: cannot be opened as a raster ({reason}); ingest reads GeoTIFF/COG and other formats "
                f"GDAL knows. If it is a GeoTIFF, {_PARTIAL_HINT}"
            ) from e
        try:
            raster = _describe(p if not remote else shown, ds, bands, expect_bands, modified)
            raster.cache_bytes = cache or 0
            yield raster
        finally:
            ds.close()


def _describe(
    p: Path | str, ds: Any, bands: Sequence[int] | None, expect_bands: int, modified: datetime | None = None
) -> Raster:
    from affine import Affine

    if ds.crs is None or (ds.transform == Affine.identity() and not ds.gcps[0]):
        raise InputError(
            f"{p}: not georeferenced (no CRS or no geotransform), so its detections could not be placed "
            "on a map. Georeference it, e.g. `gdal_translate -a_srs EPSG:32631 -a_ullr ULX ULY LRX LRY "
            "in.tif out.tif`, or publish the array with ingest.publisher.publish_tile(..., transform, crs)"
        )
    if ds.transform == Affine.identity():
        raise InputError(
            f"{p}: georeferenced by ground control points only; warp it to a grid first, e.g. "
            "`gdalwarp -t_srs EPSG:32631 in.tif out.tif`"
        )
    selected = tuple(range(1, ds.count + 1)) if not bands else tuple(int(b) for b in bands)
    bad = [b for b in selected if not 1 <= b <= ds.count]
    if bad:
        raise InputError(
            f"{p}: has {ds.count} band(s) but band(s) {', '.join(map(str, bad))} were asked for; "
            f"choose bands between 1 and {ds.count} with --bands"
        )
    if expect_bands and len(selected) != expect_bands:
        raise InputError(
            f"{p}: yields {len(selected)} band(s) ({', '.join(map(str, selected))}) but the feed expects "
            f"{expect_bands}; select {expect_bands} bands with --bands (e.g. --bands "
            f"{','.join(str(i + 1) for i in range(min(expect_bands, ds.count)))}) or fix --expect-bands"
        )
    dtypes = {ds.dtypes[b - 1] for b in selected}
    if len(dtypes) != 1:
        raise InputError(
            f"{p}: the selected bands have different types ({', '.join(sorted(dtypes))}); select bands of "
            "one type with --bands, or convert with gdal_translate -ot"
        )
    dtype = np.dtype(dtypes.pop())
    try:
        engine_dtype(dtype)
    except FrameError as e:
        raise InputError(
            f"{p}: pixel type {dtype} is not supported ({e}); convert it, e.g. `gdal_translate -ot Int32`"
        ) from e
    nodatas = {ds.nodatavals[b - 1] for b in selected}
    nodata_values = [v for v in nodatas if v is not None]
    if len(nodatas) > 1 and not all(isinstance(v, float) and np.isnan(v) for v in nodata_values):
        raise InputError(
            f"{p}: the selected bands have different nodata values ({nodatas}); frames carry one nodata "
            "value: set one with `gdal_edit.py -a_nodata VALUE`"
        )
    nodata = None if not nodata_values else float(nodata_values[0])
    block_rows, block_cols = (int(n) for n in ds.block_shapes[selected[0] - 1]) if ds.block_shapes else (1, 1)
    # A pixel-interleaved block holds every band of the file; a compressed one is held twice while
    # it is decoded (the compressed bytes and the pixels).
    interleaved = ds.count if (ds.interleaving is not None and ds.interleaving.name == "PIXEL") else 1
    compressed = ds.compression is not None
    block_bytes = block_rows * block_cols * interleaved * dtype.itemsize * (2 if compressed else 1)
    t = ds.transform
    return Raster(
        path=p,
        dataset=ds,
        bands=selected,
        width_px=int(ds.width),
        height_px=int(ds.height),
        dtype=dtype,
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        crs=_crs_text(ds.crs),
        nodata=nodata,
        block_rows_px=max(1, block_rows),
        acquired=_acquired(p, ds.tags(), modified),
        block_bytes=block_bytes,
    )
