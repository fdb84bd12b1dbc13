"""The live view's subscriber thread (web.app._pubsub_thread) on a real redis-server: a scene
result it cannot render is skipped with a log line, and the view keeps receiving the next ones."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import redis

from groundwatch import keys
from groundwatch.settings import Settings
from web import app


def test_a_scene_the_view_cannot_render_does_not_end_the_subscription(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scene_doc(_client: Any, scene: Any) -> dict[str, Any]:
        if scene == b'{"bad": 1}':
            raise ValueError("an outline that cannot be simplified")
        return {"scene": "ok"}

    monkeypatch.setattr(app.detections, "decode_scene", lambda raw: raw)
    monkeypatch.setattr(app, "scene_doc", scene_doc)
    port = r.connection_pool.connection_kwargs["port"]
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0")
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=app._pubsub_thread, args=(settings, loop, queue, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while int(r.execute_command("PUBSUB", "NUMPAT")) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        r.publish(keys.scenes("f"), '{"bad": 1}')
        r.publish(keys.scenes("f"), '{"good": 1}')
        kind, payload = loop.run_until_complete(asyncio.wait_for(queue.get(), 10))
        assert (kind, json.loads(payload)) == ("scenes", {"scene": "ok"})
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(5)
        loop.close()
