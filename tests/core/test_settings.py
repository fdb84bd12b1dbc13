from pathlib import Path

import pytest

from groundwatch.errors import ConfigError
from groundwatch.settings import Settings


def test_defaults_without_environment() -> None:
    s = Settings.load(env={})
    assert s.redis_url is None
    assert s.tile_size == 512 and s.tile_overlap == 64
    assert s.data_dir == Path(".groundwatch")


def test_environment_then_flags_take_precedence() -> None:
    env = {
        "REDIS_URL": "rediss://user:pw@example:6380/0",
        "GROUNDWATCH_TILE_SIZE": "256",
        "GROUNDWATCH_FEED": "s1",
    }
    s = Settings.load(env=env, feed="s2")
    assert s.redis_url == "rediss://user:pw@example:6380/0"
    assert s.tile_size == 256
    assert s.feed == "s2"


def test_frozen() -> None:
    s = Settings.load(env={})
    with pytest.raises(AttributeError):
        s.feed = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"REDIS_URL": "localhost:6379"}, "redis://"),
        ({"GROUNDWATCH_TILE_SIZE": "big"}, "GROUNDWATCH_TILE_SIZE"),
        ({"GROUNDWATCH_TILE_OVERLAP": "512"}, "smaller than the tile size"),
        ({"GROUNDWATCH_SCORE_THRESHOLD": "2"}, "between 0 and 1"),
        ({"GROUNDWATCH_MIN_REGION_PX": "-5"}, "model's own min_region_px"),
    ],
)
def test_bad_values_say_what_to_fix(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(env=env)


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown settings"):
        Settings.load(env={}, colour="blue")
