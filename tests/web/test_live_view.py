"""The live view in a real browser: Debian's chromium, headless, driven by Playwright.

A scene goes through the running pipeline (ingest of a real GeoTIFF, a consumer with the
engine) while the page is open; the page must show it without reloading, with its detection
count and one box per detection drawn on the quick-look. The screenshot is kept under out/.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import uvicorn

from consumers.worker import Consumer
from groundwatch import keys
from groundwatch.settings import REPO_ROOT, Settings
from ingest.publisher import register_feed
from ingest.scene import ingest_file
from tests.consumers.helpers import install_model
from tests.ingest.conftest import write_tif
from web.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it as root)"
)
FEED = "live"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_view(engine: redis.Redis) -> Iterator[tuple[str, Settings]]:
    kw = engine.connection_pool.connection_kwargs
    settings = Settings(
        redis_url=f"redis://{kw['host']}:{kw['port']}/0",
        feed=FEED,
        tile_size=64,
        tile_overlap=16,
        consumer="c1",
        block_ms=100,
        claim_idle_ms=60000,
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", settings
    server.should_exit = True
    thread.join(timeout=10)


def launch(p: Any) -> Any:
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


def open_live(p: Any, url: str) -> tuple[Any, Any]:
    """A browser on the live view, once its event stream is connected: (browser, page)."""
    browser = launch(p)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('live')", timeout=20000)
    return browser, page


def keep_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot, also kept under out/ for people to look at."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    artefacts = REPO_ROOT / "out"
    artefacts.mkdir(exist_ok=True)
    shutil.copy(shot, artefacts / name)
    return shot


def publish_and_detect(engine: redis.Redis, settings: Settings, tif: Path) -> None:
    """Ingest one GeoTIFF and run a consumer until the feed is drained."""
    ingest_file(engine, settings, tif)
    Consumer(engine, settings, burst=True).run()


def test_the_page_shows_a_scene_published_while_it_is_open(
    engine: redis.Redis, live_view: tuple[str, Settings], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    url, settings = live_view
    install_model(engine, FEED)
    register_feed(engine, FEED)
    scene = np.full((1, 160, 160), 1000, dtype=np.uint16)
    spots = [(20, 20), (70, 120), (140, 40)]
    for r, c in spots:
        scene[0, r, c] = 60000
    tif = write_tif(tmp_path / "pass-42.tif", scene)

    with sync_playwright() as p:
        browser, page = open_live(p, url)
        assert page.locator("figure.scene").count() == 0

        publish_and_detect(engine, settings, tif)
        (entry,) = engine.xrange(keys.scenes(FEED))
        count = int(entry[1][b"count"]) if b"count" in entry[1] else None

        fig = page.locator('figure.scene[data-scene="pass-42"]')
        fig.wait_for(timeout=20000)  # arrived by server-sent event: the page was not reloaded
        assert fig.get_attribute("data-count") == str(len(spots))
        assert count in (None, len(spots))
        assert fig.locator("rect.box").count() == len(spots)
        assert fig.locator("image").count() == 1  # the quick-look
        assert page.locator("#map polygon.detection").count() == len(spots)
        assert page.locator("#map polygon.footprint").count() == 1
        row = page.locator(f'#feeds tr[data-feed="{FEED}"] td.detections')
        row.wait_for(timeout=10000)
        page.wait_for_function(
            f"document.querySelector('#feeds tr[data-feed=\"{FEED}\"] td.detections').textContent === '{len(spots)}'",
            timeout=10000,
        )
        shot = keep_screenshot(page, tmp_path, "live-view.png")
        browser.close()
    assert shot.stat().st_size > 10_000


def test_the_regions_of_a_segmentation_feed_are_drawn_as_polygons(
    engine: redis.Redis, live_view: tuple[str, Settings], tmp_path: Path
) -> None:
    """A segmentation model's scene: one region (a disc across four tiles) drawn as a filled polygon
    on the quick-look and on the map, its class total in the feeds table."""
    from playwright.sync_api import sync_playwright

    from groundwatch.ai import Engine
    from tests.consumers.test_segmentation import LEVEL, disc, level_model

    url, settings = live_view
    Engine(engine).model_store(keys.model(FEED, "seg", 1), level_model(), tag="1", batch=8)
    engine.set(keys.active_model(FEED), "seg:1")
    register_feed(engine, FEED)
    scene = np.full((1, 160, 160), 100, dtype=np.uint16)
    scene[0][disc(160, 160, 80.0, 80.0, 30.0)] = LEVEL + 500  # a slick in the middle of 9 tiles
    tif = write_tif(tmp_path / "slick-7.tif", scene)

    with sync_playwright() as p:
        browser, page = open_live(p, url)
        publish_and_detect(engine, settings, tif)

        fig = page.locator('figure.scene[data-scene="slick-7"]')
        fig.wait_for(timeout=20000)
        assert fig.get_attribute("data-count") == "1"
        region = fig.locator('path.region[data-class="slick"]')
        assert region.count() == 1 and fig.locator("rect.box").count() == 0
        box = region.bounding_box()
        image = fig.locator("image").bounding_box()
        assert box is not None and image is not None
        # the disc spans 60 of 160 scene pixels: the same share of the quick-look, in its middle
        assert box["width"] == pytest.approx(image["width"] * 60 / 160, rel=0.1)
        assert box["x"] + box["width"] / 2 == pytest.approx(image["x"] + image["width"] / 2, abs=3)
        assert "1 region(s)" in fig.locator("figcaption").text_content()
        assert page.locator('#map path.region[data-class="slick"]').count() == 1
        page.wait_for_function(
            f"document.querySelector('#feeds tr[data-feed=\"{FEED}\"] td.classes').textContent"
            ".startsWith('slick 1 regions')",
            timeout=10000,
        )
        keep_screenshot(page, tmp_path, "live-view-regions.png")
        browser.close()
