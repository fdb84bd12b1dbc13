"""Scenes from object storage and STAC, against a real S3 implementation (moto's server mode).

GDAL reads through its own /vsis3/ driver over HTTP to the server started here (path style, no
TLS); boto3 lists and moves. Nothing of GDAL or boto3 is mocked. The server is wrapped in a
WSGI middleware that counts the bytes it sends per object, so range reads can be checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import rasterio
import redis
from moto.server import ThreadedMotoServer

from consumers.worker import Consumer
from groundwatch import detections as wire
from groundwatch import frames, keys
from groundwatch.settings import Settings
from ingest import objectstore, stac
from ingest.errors import InputError
from ingest.scene import ingest_file
from ingest.watch import DropPrefix
from tests.consumers.helpers import TRANSFORM, UTM31N, install_model
from tests.ingest.conftest import scene_array, write_tif

KEY_ID, SECRET = "testing-key", "testing-secret"


class CountingMotoServer(ThreadedMotoServer):
    """moto's threaded server, counting the body bytes it answers per request path."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.sent: dict[str, int] = defaultdict(int)
        self.ranges: dict[str, int] = defaultdict(int)

    def _server_entry(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            path = environ.get("PATH_INFO", "")
            if environ.get("REQUEST_METHOD") == "GET" and "HTTP_RANGE" in environ:
                self.ranges[path] += 1
            for chunk in app(environ, start_response):
                if environ.get("REQUEST_METHOD") == "GET":
                    self.sent[path] += len(chunk)
                yield chunk

        self._server = make_server("127.0.0.1", 0, counting, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


@pytest.fixture(scope="module")
def s3server() -> Iterator[CountingMotoServer]:
    server = CountingMotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3server: CountingMotoServer, request: pytest.FixtureRequest) -> Iterator[tuple[Any, str, Settings]]:
    """(boto3 client, a fresh bucket, Settings pointing GDAL and boto3 at the server)."""
    host, port = s3server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = "gw-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    settings = Settings(
        s3_endpoint=endpoint,
        s3_access_key_id=KEY_ID,
        s3_secret_access_key=SECRET,
        s3_region="us-east-1",
        tile_size=64,
        tile_overlap=16,
        feed="orbit",
    )
    yield client, bucket, settings


def write_cog(path: Path, array: np.ndarray, **tags: str) -> Path:
    """A Cloud-Optimized GeoTIFF (tiled, with overviews) of a (C, H, W) array."""
    tmp = write_tif(path.with_suffix(".plain.tif"), array, tags=tags or None)
    with rasterio.open(tmp) as src:
        profile = src.profile | {"driver": "COG", "blocksize": 64, "overview_resampling": "nearest"}
        with rasterio.open(
            path,
            "w",
            **{
                k: v
                for k, v in profile.items()
                if k not in ("tiled", "blockxsize", "blockysize", "interleave")
            },
        ) as dst:
            dst.write(src.read())
            if tags:
                dst.update_tags(**tags)
    tmp.unlink()
    return path


def frame_pixels(client: redis.Redis, feed: str) -> dict[int, bytes]:
    out = {}
    for _id, fields in client.xrange(keys.frames(feed)):
        f = frames.decode(fields)
        out[f.tile] = bytes(f.data)
    return out


def test_a_cog_is_read_where_it_lies_with_range_reads(
    tmp_path: Path, r: redis.Redis, s3: tuple[Any, str, Settings], s3server: CountingMotoServer
) -> None:
    client, bucket, settings = s3
    # 4 bands, 512 x 512: the overviews and the bands not asked for are never fetched.
    cog = write_cog(tmp_path / "pass-0017.tif", scene_array(4, 512, 512, seed=3))
    client.upload_file(str(cog), bucket, "contact-0017/pass-0017.tif")
    size = cog.stat().st_size

    result = ingest_file(r, settings.replace(ingest_bands="2"), f"s3://{bucket}/contact-0017/pass-0017.tif")
    assert result.published == result.tiles > 0
    local = ingest_file(r, settings.replace(ingest_bands="2", feed="local"), cog)
    # The same pixels as the file read from disk, tile by tile.
    assert frame_pixels(r, "orbit") == frame_pixels(r, "local")
    path = f"/{bucket}/contact-0017/pass-0017.tif"
    assert s3server.ranges[path] > 0, "GDAL fetched the object without range requests"
    assert 0 < s3server.sent[path] < size, (s3server.sent[path], size)
    first = frames.decode(r.xrange(keys.frames("orbit"), count=1)[0][1])
    assert first.source == f"s3://{bucket}/contact-0017/pass-0017.tif"
    assert first.scene == "pass-0017" == local.scene


def test_a_missing_object_is_the_inputs_fault(r: redis.Redis, s3: tuple[Any, str, Settings]) -> None:
    _client, bucket, settings = s3
    with pytest.raises(InputError, match="no such object"):
        ingest_file(r, settings, f"s3://{bucket}/nothing-here.tif")


def _poll_until(folder: DropPrefix, want: int, timeout_s: float = 30.0) -> list[Any]:
    outcomes: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(outcomes) < want and time.monotonic() < deadline:
        outcomes.extend(folder.poll())
        time.sleep(0.1)
    return outcomes


def test_a_drop_prefix_takes_objects_as_they_arrive(
    tmp_path: Path, r: redis.Redis, s3: tuple[Any, str, Settings]
) -> None:
    client, bucket, settings = s3
    good = write_cog(tmp_path / "good.tif", scene_array(1, 160, 160, seed=1))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 this is not a whole tiff" * 10)
    folder = DropPrefix(r, settings, f"s3://{bucket}/station-a/")
    assert folder.poll() == []

    # A station still uploading writes .part first; it is never taken.
    client.upload_file(str(good), bucket, "station-a/good.tif.part")
    assert folder.poll() == []
    # Objects arrive while the watcher polls in a thread.
    outcomes: list[Any] = []
    worker = threading.Thread(target=lambda: outcomes.extend(_poll_until(folder, 2)))
    worker.start()
    client.upload_file(str(good), bucket, "station-a/good.tif")
    time.sleep(0.3)
    client.upload_file(str(tmp_path / "bad.tif"), bucket, "station-a/bad.tif")
    worker.join()

    by_status = {o.status: o for o in outcomes}
    assert set(by_status) == {"done", "failed"}
    assert by_status["done"].path == f"s3://{bucket}/station-a/done/good.tif"
    assert by_status["failed"].path == f"s3://{bucket}/station-a/failed/bad.tif"
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {
        "station-a/good.tif.part",
        "station-a/done/good.tif",
        "station-a/failed/bad.tif",
        "station-a/failed/bad.tif.reason.txt",
    }
    reason = (
        client.get_object(Bucket=bucket, Key="station-a/failed/bad.tif.reason.txt")["Body"].read().decode()
    )
    assert "InputError" in reason and "cannot be opened as a raster" in reason
    tiles = r.xlen(keys.frames("orbit"))
    assert tiles == by_status["done"].result.tiles

    # A watcher that died after ingesting but before moving: the object is back at the top; a new
    # watcher ingests it again, the scene marker makes it a no-op, and it moves to done/.
    client.upload_file(str(good), bucket, "station-a/good.tif")
    again = DropPrefix(r, settings, f"s3://{bucket}/station-a/").poll()
    assert [(o.status, o.reason) for o in again] == [("done", "already ingested")]
    assert str(again[0].path).startswith(f"s3://{bucket}/station-a/done/good.tif.")  # the first one is kept
    assert r.xlen(keys.frames("orbit")) == tiles


def test_tag_mode_records_outcomes_on_the_objects(
    tmp_path: Path, r: redis.Redis, s3: tuple[Any, str, Settings]
) -> None:
    client, bucket, settings = s3
    good = write_cog(tmp_path / "g.tif", scene_array(1, 100, 100, seed=2))
    client.upload_file(str(good), bucket, "in/g.tif")
    client.put_object(Bucket=bucket, Key="in/broken.tif", Body=b"not a raster")
    folder = DropPrefix(r, settings.replace(s3_done="tag"), f"s3://{bucket}/in")
    outcomes = folder.poll()
    assert sorted((o.name, o.status) for o in outcomes) == [("broken.tif", "failed"), ("g.tif", "done")]
    tags = objectstore.tags(client, objectstore.S3Location(bucket, "in/broken.tif"))
    assert tags[objectstore.STATUS_TAG] == "failed" and "raster" in tags[objectstore.REASON_TAG]
    assert folder.poll() == []  # tagged objects are not taken again


def test_listing_is_paginated(tmp_path: Path, r: redis.Redis, s3: tuple[Any, str, Settings]) -> None:
    client, bucket, settings = s3
    for i in range(60):
        client.put_object(Bucket=bucket, Key=f"deep/a{i:03d}.tif.tmp", Body=b"x")
    client.upload_file(str(write_cog(tmp_path / "z.tif", scene_array(1, 64, 64))), bucket, "deep/z.tif")
    folder = DropPrefix(r, settings, f"s3://{bucket}/deep/", page_size=25)
    assert [o.name for o in folder.poll()] == ["z.tif"]  # on the third page


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "groundwatch.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.fixture(scope="module")
def authenticating_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server (its own process) that checks credentials: no key is known to it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def test_wrong_credentials_are_a_clear_error(redis_server: Any, authenticating_s3: str) -> None:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "AWS_ENDPOINT_URL": authenticating_s3,
        "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1",
        "AWS_SECRET_ACCESS_KEY": "wrong",
        "AWS_REGION": "us-east-1",
    }
    for argv in (("ingest", "s3://deliveries/pass-1.tif"), ("watch", "--burst", "s3://deliveries/in/")):
        out = _run_cli(*argv, env=env)
        assert out.returncode == 1, out
        assert "refused the credentials" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr, out.stderr


# --- STAC ------------------------------------------------------------------------------------------

SPOT = (40, 100)  # (row, col) of one bright spot in a 160 x 160 scene


def _spot_scene() -> np.ndarray:
    a = np.full((1, 160, 160), 1000, dtype=np.uint16)
    a[0, SPOT[0], SPOT[1]] = 60000
    return a


def _item(item_id: str, href: str, when: str = "2026-11-30T09:15:00Z") -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[3, 54], [3.02, 54], [3.02, 54.01], [3, 54.01], [3, 54]]],
        },
        "bbox": [3, 54, 3.02, 54.01],
        "properties": {"datetime": when},
        "links": [],
        "assets": {
            "thumbnail": {"href": "thumb.png", "type": "image/png"},
            "image": {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized"},
        },
    }


def test_a_stac_item_is_a_scene_and_its_results_link_back(
    tmp_path: Path, engine: redis.Redis, s3: tuple[Any, str, Settings]
) -> None:
    client, bucket, settings = s3
    settings = settings.replace(consumer="c1", block_ms=100, claim_idle_ms=60000)
    cog = tmp_path / "S1X_20261130.tif"
    with rasterio.open(
        write_tif(
            tmp_path / "spot.tif", _spot_scene(), transform=rasterio.transform.Affine(*TRANSFORM), crs=UTM31N
        )
    ) as src:
        write_cog(cog, src.read())
    client.upload_file(str(cog), bucket, "items/S1X_20261130.tif")
    item_url = f"s3://{bucket}/items/S1X_20261130.json"
    client.put_object(
        Bucket=bucket,
        Key="items/S1X_20261130.json",
        Body=json.dumps(_item("S1X_20261130", "./S1X_20261130.tif")),
    )

    result = stac.ingest_item(engine, settings, item_url)
    assert result.scene == "S1X_20261130" and result.published == result.tiles == 9
    f = frames.decode(engine.xrange(keys.frames("orbit"), count=1)[0][1])
    assert f.acquired.isoformat() == "2026-11-30T09:15:00+00:00"
    assert f.source == item_url

    install_model(engine, "orbit")
    Consumer(engine, settings, burst=True).run()
    (entry,) = engine.xrange(keys.scenes("orbit"))
    scene = wire.decode_scene(entry[1])
    assert scene.scene == "S1X_20261130" and scene.source == item_url and len(scene.detections) == 1

    out = _run_cli(
        "results",
        "--feed",
        "orbit",
        "--stac",
        str(tmp_path / "stac"),
        env={
            "REDIS_URL": _url(engine),
            "AWS_ENDPOINT_URL": settings.s3_endpoint,
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
        },
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "stac" / "S1X_20261130" / "S1X_20261130-detections.json").read_text())
    import pystac

    written = pystac.Item.from_dict(doc)
    assert written.properties["groundwatch:count"] == 1
    assert written.bbox == [3, 54, 3.02, 54.01]  # the source item's footprint
    assert {"rel": "derived_from", "href": item_url, "type": "application/json"} in doc["links"]
    geo = json.loads((tmp_path / "stac" / "S1X_20261130" / "S1X_20261130.geojson").read_text())
    assert geo["groundwatch"]["source"] == item_url and len(geo["features"]) == 1


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def test_a_local_catalogue_is_walked_item_by_item(tmp_path: Path, r: redis.Redis) -> None:
    settings = Settings(tile_size=64, tile_overlap=16, feed="cat")
    root = tmp_path / "catalog"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        write_cog(root / name / f"{name}.tif", scene_array(1, 100, 100, seed=seed))
        (root / name / f"{name}.json").write_text(json.dumps(_item(f"item-{name}", f"./{name}.tif")))
    (root / "collection.json").write_text(
        json.dumps(
            {
                "type": "Collection",
                "stac_version": "1.0.0",
                "id": "passes",
                "description": "two passes",
                "license": "proprietary",
                "extent": {"spatial": {"bbox": [[3, 54, 4, 55]]}, "temporal": {"interval": [[None, None]]}},
                "links": [{"rel": "item", "href": "./a/a.json"}, {"rel": "item", "href": "./b/b.json"}],
            }
        )
    )
    found = list(stac.walk(str(root / "collection.json"), settings))
    assert [Path(p).name for p in found] == ["a.json", "b.json"]
    for location in found:
        stac.ingest_item(r, settings, location)
    scenes = {frames.decode(fields).scene for _id, fields in r.xrange(keys.frames("cat"))}
    assert scenes == {"item-a", "item-b"}


def test_an_item_without_an_image_says_how_to_choose(tmp_path: Path) -> None:
    item = _item("x", "./x.tif")
    item["assets"]["image"]["type"] = "image/jp2"
    (tmp_path / "x.json").write_text(json.dumps(item))
    with pytest.raises(InputError, match="--asset"):
        stac.read_item(str(tmp_path / "x.json"), Settings())
    with pytest.raises(InputError, match="no asset 'nope'"):
        stac.read_item(str(tmp_path / "x.json"), Settings(), asset="nope")
    assert stac.read_item(str(tmp_path / "x.json"), Settings(), asset="image").image == str(
        tmp_path / "x.tif"
    )
