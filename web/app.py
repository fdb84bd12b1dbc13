"""The live view: one page, a JSON snapshot, quick-look images and server-sent events.

- ``GET /``: the page (web/static/index.html; no CDN, no tile server: the machines are offline).
- ``GET /api/state``: every feed's figures (groundwatch.status), active alerts and drift
  figures, per-class totals, and its latest scenes with their detections (lon/lat rings and scene
  pixels) and regions (lon/lat outlines, and outlines in scene pixels simplified at one quick-look
  pixel).
- ``GET /quicklook/{feed}/{scene}.png``: the quick-look ingest stored for the scene.
- ``GET /events``: server-sent events fed from the ``scenes``, ``alerts`` and ``detections``
  channels of every feed (a thread on a plain client PSUBSCRIBEs and hands messages to the
  event loop), so the page updates without reloading.

Redis is reached through groundwatch.connection with the Settings given, so a viewer role's
credentials in REDIS_URL are all it needs (it only reads and subscribes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from groundwatch import connection, detections, keys, regions, status
from groundwatch.settings import Settings

log = logging.getLogger(__name__)
SCENES_PER_FEED = 12
CHANNELS = ("scenes", "alerts", "detections")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def feed_state(client: redis.Redis, feed: str) -> dict[str, Any]:
    st = status.collect(client, feed)[0]
    groups = st.groups
    drift = {}
    for k, v in client.hgetall(keys.drift(feed)).items():
        try:
            drift[_text(k)] = json.loads(v)
        except ValueError:
            drift[_text(k)] = _text(v)
    alerts = {}
    for k, v in client.hgetall(keys.alert_state(feed)).items():
        try:
            alerts[_text(k)] = json.loads(v)
        except ValueError:
            continue
    return {
        "feed": feed,
        "frames": st.frames,
        "dead_letters": st.dead_letters,
        "lag": sum(g.lag or 0 for g in groups),
        "pending": sum(g.pending for g in groups),
        "consumers": sum(g.consumers for g in groups),
        "throughput_fps": st.throughput_fps,
        "latency_ms": st.latency_ms,
        "model": st.model,
        "classes": st.classes,
        "alerts": alerts,
        "drift": drift,
        "scenes": latest_scenes(client, feed),
    }


def scene_doc(client: redis.Redis, s: detections.SceneResult) -> dict[str, Any]:
    q = client.hmget(
        keys.quicklook(s.feed, s.scene), ["width", "height", "scene_width_px", "scene_height_px", "footprint"]
    )
    quick = None
    if q[0] is not None:
        quick = {
            "url": f"/quicklook/{s.feed}/{s.scene}.png",
            "width": int(q[0]),
            "height": int(q[1]),
            "scene_width_px": int(q[2]),
            "scene_height_px": int(q[3]),
            "footprint": json.loads(q[4]),
        }
    # A region's outline for the quick-look: its exact pixel outline simplified at one quick-look
    # pixel (a coast's exact outline can hold thousands of vertices that the image cannot show).
    per_px = quick["scene_width_px"] / max(quick["width"], 1) if quick else 1.0
    return {
        "feed": s.feed,
        "scene": s.scene,
        "acquired": s.acquired,
        "models": list(s.models),
        "count": len(s.detections) + len(s.regions),
        "tiles": s.tiles,
        "done_ms": s.done_ms,
        "quicklook": quick,
        "detections": [
            {
                "label": d.label,
                "score": d.score,
                "ring": [list(p) for p in d.ring],
                "scene_box_px": list(d.scene_box_px),
            }
            for d in s.detections
        ],
        "regions": [
            {
                "label": g.label,
                "score": g.score,
                "area_m2": g.area_m2,
                "rings": [[list(p) for p in ring] for ring in g.rings],
                "rings_px": [[list(p) for p in ring] for ring in regions.simplify(g.rings_px, per_px)],
            }
            for g in s.regions
        ],
    }


def latest_scenes(client: redis.Redis, feed: str, count: int = SCENES_PER_FEED) -> list[dict[str, Any]]:
    out = []
    for _id, fields in client.xrevrange(keys.scenes(feed), count=count):
        try:
            out.append(scene_doc(client, detections.decode_scene(fields)))
        except detections.DetectionFormatError:
            continue
    return out


def _pubsub_thread(
    settings: Settings,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[tuple[str, str]],
    stop: threading.Event,
) -> None:
    """PSUBSCRIBE every feed's channels; hand (event, JSON) to the event loop until stopped."""
    client = connection.connect(settings)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(*(keys.channel_pattern(c) for c in CHANNELS))
    try:
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.5)
            if msg is None:
                continue
            channel = _text(msg["channel"])
            kind = channel.rsplit(":", 1)[-1]
            try:
                doc = json.loads(msg["data"])
            except ValueError:
                continue
            if kind == "scenes":
                try:
                    payload = scene_doc(client, detections.decode_scene(msg["data"]))
                except detections.DetectionFormatError:
                    continue
                except redis.RedisError:
                    raise
                except Exception:  # an outline shapely cannot simplify...: one scene, not the view
                    log.exception("live view: scene result on %s not shown", channel)
                    continue
            elif kind == "detections":
                h = doc.get("groundwatch", {}) if isinstance(doc, dict) else {}
                payload = {
                    "feed": h.get("feed"),
                    "scene": h.get("scene"),
                    "tile": h.get("tile"),
                    "count": h.get("count"),
                }
            else:
                payload = doc
            loop.call_soon_threadsafe(queue.put_nowait, (kind, json.dumps(payload)))
    except redis.RedisError as e:
        log.warning("live view: subscription ended (%s)", e)
        loop.call_soon_threadsafe(queue.put_nowait, ("error", json.dumps({"error": str(e)})))
    finally:
        pubsub.close()
        client.close()


def create_app(settings: Settings) -> Starlette:
    client = connection.connect(settings)

    def index(request: Request) -> HTMLResponse:
        return HTMLResponse(resources.files("web").joinpath("static/index.html").read_text())

    def state(request: Request) -> JSONResponse:
        feeds = sorted(_text(f) for f in client.smembers(keys.feeds()))
        return JSONResponse({"feeds": [feed_state(client, f) for f in feeds]})

    def quick(request: Request) -> Response:
        feed, scene = request.path_params["feed"], request.path_params["scene"]
        try:
            png = client.hget(keys.quicklook(feed, scene), "png")
        except Exception:
            png = None
        if png is None:
            return Response(status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def events(request: Request) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)
        stop = threading.Event()
        thread = threading.Thread(target=_pubsub_thread, args=(settings, loop, queue, stop), daemon=True)
        thread.start()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        kind, data = await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: {kind}\ndata: {data}\n\n"
            finally:
                stop.set()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/quicklook/{feed}/{scene}.png", quick),
            Route("/events", events),
        ]
    )
