"""The registry's read side in the core: ModelRef and the active pointer."""

from __future__ import annotations

import pytest
import redis

from groundwatch import keys
from groundwatch.registry import ModelRef, RegistryError, RegistryReader, VersionRecord, active_ref


def test_model_ref_parses_and_formats() -> None:
    assert ModelRef.parse("ship:3") == ModelRef("ship", 3)
    assert ModelRef.parse(b"ship:v3") == ModelRef("ship", 3)
    assert ModelRef.parse("7", default_name="ship") == ModelRef("ship", 7)
    assert str(ModelRef("ship", 3)) == "ship:3"
    assert ModelRef("ship", 3).key("s1") == keys.model("s1", "ship", 3)
    for bad in (
        "ship",
        "ship:x",
        ":3",
        "a:b:3",
        "7",
        "ship:3\n",
        "ship:3\r",
        " ship:3",
        "ship:3 ",
        "ship:\u0663",
    ):
        with pytest.raises(RegistryError, match="NAME:VERSION"):
            ModelRef.parse(bad)
    for bad in ("7\n", "\u00b2", "\u0663", "9" * 5000):  # isdigit() took these; int() refuses some
        with pytest.raises(RegistryError, match="NAME:VERSION"):
            ModelRef.parse(bad, default_name="ship")
    with pytest.raises(RegistryError, match="NAME:VERSION"):
        ModelRef.parse(b"ship:\xff3")


def test_reader_and_active_pointer(r: redis.Redis) -> None:
    rec = VersionRecord("ship", 2, "ab", "f.pt", ["ship"], 1, "uint16", 512, "CPU", ["s1"], "now")
    r.hset(keys.registry_versions("ship"), "2", rec.to_json())
    assert RegistryReader(r).get("ship", 2) == rec and rec.label == "ship:2"
    with pytest.raises(RegistryError, match="known versions: 2"):
        RegistryReader(r).get("ship", 1)
    assert active_ref(r, "s1") is None
    r.set(keys.active_model("s1"), rec.label)
    assert active_ref(r, "s1") == rec.ref
    r.set(keys.active_model("s1"), "garbage")
    with pytest.raises(RegistryError):
        active_ref(r, "s1")
