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
        browser = p.chromium.launch(
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
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('live')", timeout=20000
        )
        assert page.locator("figure.scene").count() == 0

        ingest_file(engine, settings, tif)
        Consumer(engine, settings, burst=True).run()
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
        shot = tmp_path / "live-view.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    artefacts = REPO_ROOT / "out"
    artefacts.mkdir(exist_ok=True)
    shutil.copy(shot, artefacts / "live-view.png")
    assert shot.stat().st_size > 10_000
