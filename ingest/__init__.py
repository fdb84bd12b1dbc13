"""Ingest: ground-station scenes (GeoTIFF/COG) and in-memory arrays to frames on Redis streams.

`rasters` opens and reads files, `tiles` is the window arithmetic, `publisher` writes frames
(idempotency, backpressure, retention), `scene` ties them together, `watch` is the drop folder
and `cli` the `groundwatch ingest` / `groundwatch watch` commands.
"""
