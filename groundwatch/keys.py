"""Every Redis key and channel name groundwatch uses, and the hash-tag rule behind them.

Key layout version 1 (documented in docs/protocol.md). All keys of one feed carry the feed's
hash tag ``{feed}``, so a feed's frames, its model copies, the tensors of its DAGs, its results
and its counters live in one Redis Cluster slot and every multi-key command stays legal. Keys
that are not about one feed (the model registry) carry the registry's own tag.

No other module spells a key name: they call these functions. Passing :data:`ANY` for a feed,
model, scene, frame or version gives the glob pattern of every such key instead (ACL rules,
``groundwatch acl``): ``frames(ANY)`` is ``gw:{*}:frames``.
"""

from __future__ import annotations

import re

from groundwatch.errors import ConfigError

LAYOUT_VERSION = 1
PREFIX = "gw"

# fullmatch, not a $ anchor: "$" also matches before a trailing newline ("feed\n" must be refused)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", re.ASCII)


class Wildcard(str):
    """The glob `*` in place of a name. A str subclass, so no user input (a plain str) is ever one:
    `--feed '*'` is still refused by check_name."""


ANY = Wildcard("*")


def check_name(kind: str, name: str) -> str:
    """Feed, model and consumer names are short identifiers with no braces or colons.

    Names hold none of the glob characters ``*?[]\\``, so a key of a named feed, used as an ACL
    pattern, matches that feed's keys only.
    """
    if isinstance(name, Wildcard):
        return name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{kind} name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def tag(feed: str) -> str:
    """The hash tag shared by every key of `feed`."""
    return "{" + check_name("feed", feed) + "}"


def _feed(feed: str, *parts: str) -> str:
    return ":".join((PREFIX, tag(feed), *parts))


# --- streams -------------------------------------------------------------------------------


def frames(feed: str) -> str:
    """Stream of frames (tiles) waiting for inference."""
    return _feed(feed, "frames")


def detections(feed: str) -> str:
    """Stream of per-tile detection results; also the name of their pub/sub channel."""
    return _feed(feed, "detections")


def scenes(feed: str) -> str:
    """Stream of merged per-scene results; also the name of their pub/sub channel."""
    return _feed(feed, "scenes")


def dead_letters(feed: str) -> str:
    """Stream of frames that could not be processed, each with its reason."""
    return _feed(feed, "dead")


# --- per-scene and per-frame state ---------------------------------------------------------


def scene_ingested(feed: str, scene_id: str) -> str:
    """Marker set once a scene's tiles were published: ingesting it again is a no-op."""
    return _feed(feed, "ingested", scene_id)


def scene_progress(feed: str, scene_id: str) -> str:
    """Hash {tiles, published} of a scene whose frames are being published (deleted when done)."""
    return _feed(feed, "ingesting", scene_id)


def scene_tiles(feed: str, scene_id: str) -> str:
    """Hash tile index -> per-tile result, gathered until the scene is complete."""
    return _feed(feed, "scene", scene_id, "tiles")


def scene_result(feed: str, scene_id: str) -> str:
    """The merged GeoJSON FeatureCollection of a complete scene (expires after the scene TTL)."""
    return _feed(feed, "scene", scene_id)


def frame_done(feed: str, frame_id: str) -> str:
    """Idempotency marker: this frame's result was published (value: "<model version> <entry id>").

    One per frame, whatever the model version: the first version to commit wins."""
    return _feed(feed, "done", frame_id)


def frame_done_pattern(feed: str, scene_id: str) -> str:
    """SCAN pattern of the idempotency markers of every frame of a scene (frame ids are scene/tile)."""
    return _feed(feed, "done", f"{scene_id}/*")


def dead_marker(feed: str, entry_id: str) -> str:
    """Idempotency marker: this frames-stream entry was sent to the dead letters."""
    return _feed(feed, "deadmark", entry_id)


def attempts(feed: str) -> str:
    """Hash entry id -> real attempts at a frame (engine runs it failed or did not finish), and
    "<entry id>:error" -> the last error. Faults of the system are not counted (XPENDING's
    delivery count includes them). Fields go when the entry is acknowledged."""
    return _feed(feed, "attempts")


MODEL_FIT = "model-fit"  # the field of keys.faults for frames that do not fit the active model


def faults(feed: str) -> str:
    """Hash of what stops the feed now, for `groundwatch status`: consumer name -> JSON
    {"reason", "at"} while that consumer backs off on a fault of the system, and MODEL_FIT ->
    {"reason", "at", "model"}: the last frame that did not fit the active model, until a batch
    whose frames all fit or a change of the active model clears it."""
    return _feed(feed, "faults")


def consumer_lease(feed: str, group: str, name: str) -> str:
    """A consumer's claim on its name (value "<host> <pid>", short TTL, refreshed while it runs),
    so default names are stable per host and slot and never shared by two live consumers."""
    if name == MODEL_FIT:  # a consumer's field of faults(feed) would be the model-fit entry's
        raise ConfigError(f"consumer name {name!r} is reserved (a field of {faults(feed)}); choose another")
    return _feed(feed, "consumer", check_name("group", group), check_name("consumer", name))


def profile(feed: str, version: str, window: int | Wildcard) -> str:
    """Hash: the profile of what flowed through model `version` (``name:version``) in one
    time window (`window`: its start, seconds since the epoch / profile_window_s)."""
    return _feed(feed, "profile", version, f"w{window if isinstance(window, Wildcard) else int(window)}")


def profile_reference(feed: str, version: str) -> str:
    """Hash: the reference profile of model `version` that drift is measured against."""
    return _feed(feed, "profile", version, "reference")


def profile_index(feed: str) -> str:
    """Sorted set: ``<window>|<version>`` members, scored by window, of the profiles kept."""
    return _feed(feed, "profiles")


def drift(feed: str) -> str:
    """Hash: the monitor's latest figures per measure (JSON), for status, Prometheus and the web view."""
    return _feed(feed, "drift")


def alerts(feed: str) -> str:
    """Stream of alerts raised and cleared; also the name of their pub/sub channel."""
    return _feed(feed, "alerts")


def alert_state(feed: str) -> str:
    """Hash: the alerts active now (alert name -> JSON with since, value, model version)."""
    return _feed(feed, "alerts", "active")


def channel_pattern(kind: str) -> str:
    """The PSUBSCRIBE pattern of one kind of channel (``scenes``, ``alerts``, ``detections``)
    across every feed (Redis glob: the braces of the hash tag are literal)."""
    if kind not in ("scenes", "alerts", "detections"):
        raise ConfigError(f"no channel kind {kind!r}")
    return f"{PREFIX}:{{*}}:{kind}"


def quicklook(feed: str, scene_id: str) -> str:
    """Hash: a scene's quick-look PNG and footprint, written by ingest for the live view."""
    return _feed(feed, "quicklook", scene_id)


def throughput(feed: str) -> str:
    """Capped list of recent completions "<epoch ms> <frames>", one per published batch (for status)."""
    return _feed(feed, "throughput")


# --- models --------------------------------------------------------------------------------


def model(feed: str, name: str, version: int | Wildcard) -> str:
    """The AI model key of one version, copied into the feed's slot."""
    return _feed(feed, "model", check_name("model", name), f"v{version}")


def active_model(feed: str) -> str:
    """String `name:version` of the model the feed's consumers run now."""
    return _feed(feed, "active")


REGISTRY_TAG = "{registry}"


def registry_versions(name: str) -> str:
    """Hash version -> JSON metadata of every stored version of model `name`."""
    return ":".join((PREFIX, REGISTRY_TAG, "model", check_name("model", name), "versions"))


def registry_active(name: str) -> str:
    """The registry's active version of model `name`."""
    return ":".join((PREFIX, REGISTRY_TAG, "model", check_name("model", name), "active"))


def registry_counter(name: str) -> str:
    """Counter that hands out version numbers of model `name`; never reused, even after removal."""
    return ":".join((PREFIX, REGISTRY_TAG, "model", check_name("model", name), "next"))


def registry_history(name: str) -> str:
    """List of versions of model `name` that were active before, newest first (for rollback)."""
    return ":".join((PREFIX, REGISTRY_TAG, "model", check_name("model", name), "history"))


def registry_originals(name: str) -> str:
    """Hash version -> the original file of a version converted at load time (an ONNX model's bytes)."""
    return ":".join((PREFIX, REGISTRY_TAG, "model", check_name("model", name), "originals"))


def registry_models() -> str:
    """Set of model names known to the registry."""
    return ":".join((PREFIX, REGISTRY_TAG, "models"))


# --- operations ----------------------------------------------------------------------------


def feeds() -> str:
    """Set of feed names that have been used (for `groundwatch status`)."""
    return ":".join((PREFIX, "feeds"))


def stats(feed: str) -> str:
    """Hash of counters (frames_in, frames_done, detections, dead, ...) of a feed."""
    return _feed(feed, "stats")


def latency(feed: str) -> str:
    """Capped list of recent end-to-end latencies in ms (XADD to publish)."""
    return _feed(feed, "latency")


def scratch_model(token: str) -> str:
    """A temporary model copy (`groundwatch evaluate --engine` of a file), deleted after use."""
    return ":".join((PREFIX, "scratch", "model", check_name("scratch token", token)))


def everything() -> str:
    """Glob pattern of every groundwatch key and channel (ACL rules of the operator)."""
    return PREFIX + ":*"
