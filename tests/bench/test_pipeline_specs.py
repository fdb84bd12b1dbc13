"""The pipeline rows' parameters (bench/pipeline.py, demo/bench.py): what each row is asked to
measure. No row is run here and no speed is asserted."""

from __future__ import annotations

from bench import harness, pipeline
from demo import bench as demo_bench


def _throughput(specs: list[harness.Spec]) -> list[harness.Spec]:
    return [s for s in specs if s.target == "bench.pipeline:pipeline" and not s.derive]


def test_the_throughput_rows_time_a_backlog_long_enough_to_dwarf_the_ramp_up() -> None:
    # The window starts at the first XADD; the engine idles until the first scene is published,
    # read and sent (0.1-0.3 s), so a short backlog measured that ramp-up more than the pipeline.
    rows = _throughput(pipeline.specs("m.pt"))
    assert rows and all(s.params["frames"] == pipeline.BACKLOG for s in rows)
    assert pipeline.BACKLOG >= 288 and pipeline.BACKLOG % (pipeline.GRID * pipeline.GRID) == 0
    full = _throughput(demo_bench.specs("m.pt", quick=False, threads=2))
    quick = _throughput(demo_bench.specs("m.pt", quick=True, threads=2))
    assert {s.params["frames"] for s in full} == {pipeline.BACKLOG}
    assert {s.params["frames"] for s in quick} == {pipeline.BACKLOG // 3}


def test_the_rows_run_the_engine_with_one_thread_per_queue_unless_asked() -> None:
    # THREADS_PER_QUEUE 1 is what `groundwatch up` starts by default; the bench compares rows
    # under it, and the parameter exists to measure the alternative.
    import inspect

    default = inspect.signature(pipeline.pipeline).parameters["threads_per_queue"].default
    assert default == 1
    assert all("threads_per_queue" not in s.params for s in pipeline.specs("m.pt"))
