import pytest

from groundwatch import keys
from groundwatch.errors import ConfigError


def _slot_tag(key: str) -> str:
    """The part Redis Cluster hashes: the text between the first { and the next }."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_every_key_of_a_feed_shares_its_hash_tag() -> None:
    feed = "sentinel-1"
    per_feed = [
        keys.frames(feed),
        keys.detections(feed),
        keys.scenes(feed),
        keys.dead_letters(feed),
        keys.scene_ingested(feed, "S1"),
        keys.scene_tiles(feed, "S1"),
        keys.scene_result(feed, "S1"),
        keys.frame_done(feed, "S1/0"),
        keys.model(feed, "ship", 3),
        keys.active_model(feed),
        keys.stats(feed),
        keys.latency(feed),
    ]
    assert {_slot_tag(k) for k in per_feed} == {feed}
    assert len(set(per_feed)) == len(per_feed)


def test_registry_keys_share_the_registry_tag() -> None:
    assert {
        _slot_tag(k)
        for k in (keys.registry_versions("ship"), keys.registry_active("ship"), keys.registry_models())
    } == {"registry"}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a{b}",
        "a:b",
        "x" * 65,
        "-lead",
        "sp ace",
        "feed\n",  # a "$" anchor matched before a trailing newline
        "feed\r",
        "feed\r\n",
        "\nfeed",
        "feed ",
        " feed",
        "fe\ted",
        "feed\x00",
        "f\u00e9ed",  # letters outside ASCII
        "\u0661",  # an Arabic-Indic digit
        "a*",
        "a?",
        "a[b]",
        "a\\b",
    ],
)
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        keys.frames(bad)
    with pytest.raises(ConfigError, match="not valid"):
        keys.check_name("model", bad)


@pytest.mark.parametrize("good", ["s1", "sentinel-1", "A.b_c-9", "x" * 64, "7"])
def test_good_names_are_kept_as_they_are(good: str) -> None:
    assert keys.check_name("feed", good) == good


def test_the_model_fit_field_is_no_consumer_name() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        keys.consumer_lease("s1", "detectors", keys.MODEL_FIT)
    assert keys.consumer_lease("s1", "detectors", "model-fit-2").endswith(":model-fit-2")
