"""bench/harness.py in quick mode: tiny rows in fresh processes, interleaved rounds, the table's
shape, ratios per round, failures reported as such. No speed is asserted."""

from __future__ import annotations

import os
from pathlib import Path

from bench import harness

HERE = "tests.bench.test_harness:"


def busy_row(n: float, seconds: float, fail: bool = False) -> dict[str, object]:
    """A row function: sums a list of `n` numbers until `seconds` pass, after warm-up."""
    if fail:
        raise RuntimeError("this row fails on purpose")
    data = list(range(int(n)))
    warm = harness.settle(lambda: sum(data), max_calls=20)
    lat, wall = harness.timed_loop(lambda i: sum(data), seconds)
    return harness.sample(
        tiles=len(lat), wall_s=wall, latencies_s=lat, warmup_calls=warm, pid=os.getpid(), n=n
    )


def test_rows_run_in_fresh_processes_in_rounds_with_a_table(tmp_path: Path) -> None:
    specs = [
        harness.Spec("small", HERE + "busy_row", {"n": 1000, "seconds": 0.05}, reference=True),
        harness.Spec("large", HERE + "busy_row", {"n": 20000, "seconds": 0.05}),
        harness.Spec("derived", HERE + "busy_row", {"seconds": 0.05}, derive={"n": ("small", "tiles", 1.0)}),
        harness.Spec("broken", HERE + "busy_row", {"n": 1, "seconds": 0.01, "fail": True}),
    ]
    ratios = [
        harness.Ratio("large / small", "large", harness.REFERENCE, goal=(">=", 1e9)),
        harness.Ratio("p50 large / small", "large", "small", metric="p50_ms", den_scale=2.0, den_offset=1.0),
        harness.Ratio("broken / small", "broken", "small"),
    ]
    result = harness.run(specs, ratios, rounds=3, log=tmp_path / "rows.log")

    samples = result["samples"]
    pids = {s["extra"]["pid"] for name in ("small", "large") for s in samples[name]}
    assert len(pids) == 6 and os.getpid() not in pids, "every row, every round: its own process"
    assert [s["round"] for s in samples["small"]] == [0, 1, 2]
    # derived: its n is the tiles the reference did in the same round
    for d, ref in zip(samples["derived"], samples["small"], strict=True):
        assert d["params"]["n"] == ref["tiles"] == d["extra"]["n"]

    rows = {r["name"]: r for r in result["rows"]}
    small = rows["small"]
    assert (
        small["rounds_ok"] == 3 and small["throughput_min"] <= small["throughput"] <= small["throughput_max"]
    )
    assert small["spread"] == (small["throughput_max"] - small["throughput_min"]) / small["throughput"]
    assert result["reference"] == "small"
    assert rows["broken"]["rounds_ok"] == 0 and "fails on purpose" in rows["broken"]["failed"][0]

    r = {q["name"]: q for q in result["ratios"]}
    assert len(r["large / small"]["per_round"]) == 3 and r["large / small"]["met"] is False
    want = [
        a["p50_ms"] / (2.0 * b["p50_ms"] + 1.0)
        for a, b in zip(samples["large"], samples["small"], strict=True)
    ]
    assert r["p50 large / small"]["per_round"] == want
    assert r["broken / small"]["median"] is None

    table = result["table"]
    lines = table.splitlines()
    assert lines[0] == "## groundwatch bench"
    assert "3 interleaved rounds" in lines[2] and "load average (1 min)" in lines[2]
    assert any(line.startswith("Reference: **small**") for line in lines)
    header = "| row | tiles/s | min-max | spread | p50 ms | p99 ms | CPU ms/tile | warm-up | note |"
    body = lines[lines.index(header) + 2 : lines.index(header) + 6]
    assert [b.split(" | ")[0] for b in body] == ["| small (ref)", "| large", "| derived", "| broken"]
    assert all(b.count("|") == header.count("|") for b in body)
    assert "3/3 rounds failed" in body[3]
    assert "| large / small | tiles/s of 'large' / tiles/s of 'small' |" in table
    assert "(2 x p50 of 'small' + 1 ms)" in table
    assert "**no**" in table
    md, js = harness.write(result, tmp_path)
    assert md.read_text() == table and js.exists()


def test_a_reference_spread_over_the_bound_is_said_in_the_header() -> None:
    spec = harness.Spec("ref", HERE + "busy_row", reference=True)
    samples = [harness.sample(tiles=t, wall_s=1.0) for t in (100, 100, 130)]
    row = harness.aggregate(spec, samples)
    result = {
        "title": "t", "date": "d", "commit": "c", "rounds": 3, "wall_s": 1.0, "reference": "ref",
        "load": {"mean_1min": 1.0, "max_1min": 2.0}, "rows": [row], "ratios": [],
    }  # fmt: skip
    assert "spread is 30%, over 15%" in harness.table(result)
    row2 = harness.aggregate(spec, samples[:2])
    assert "Warning" not in harness.table({**result, "rows": [row2]})
