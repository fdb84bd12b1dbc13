"""The engine's memory: the `ai_memory` figures of INFO MODULES against the process's real RSS,
the block cache's cap (TORCH_CPU_CACHE_MB, or the default that follows maxmemory) and
BACKEND_MEMORY_LIMIT refusing runs.

Every test starts its own server so that RSS is the engine's alone. The models are built here:
`Activations` makes large activations (8 x 16 x 256 x 256 floats = 32 MiB per layer at batch 8),
`Weights` holds 62.5 MiB of parameters and makes nothing at run time.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest
import redis
import torch
from engine_helpers import err, scripted_blob

from groundwatch import enginestats

MIB = 1 << 20
SIDE = 256
BATCH = 8
LAYER_BYTES = BATCH * 16 * SIDE * SIDE * 4  # one activation of Activations at BATCH

# RSS growth that the figures may leave unexplained after warm-up: code pages of kernels first
# used by a large batch, allocator metadata, the tail of a size class. Measured on these tests:
# 2.8 MiB (RSS +162.7 MiB, figures +165.5 MiB) and 1.8 MiB between the engine's heap and
# libtorch's own figures. Far below one activation (32 MiB) or the weights (62.5 MiB), so a
# figure that missed either would fail.
RSS_SLACK = 8 * MIB


class Activations(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))).mean(dim=(2, 3))


class Weights(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        # 62.5 MiB of weights, and a blob just under 64 MiB: jemalloc rounds a huge allocation
        # up to its size class (64, 80, 96 MiB...) and counts the untouched rest as allocated,
        # which a blob just over 64 MiB would add (16 MiB allocated, never resident).
        self.fc = torch.nn.Linear(2048, 8000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0


def param_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


ACTIVATIONS = Activations()
WEIGHTS = Weights()


def figures(r: redis.Redis) -> enginestats.EngineMemory:
    m = enginestats.read(r)
    assert m is not None, "INFO MODULES has no ai_memory section"
    return m


def explained(m: enginestats.EngineMemory) -> int:
    """What the allocators hand out: Redis's jemalloc, and the C library's heap when libtorch
    allocates there (enginestats explains the two layouts)."""
    return m.heaps


def run_batch(r: redis.Redis, key: str, batch: int) -> Any:
    x = np.random.default_rng(batch).random((batch, 3, SIDE, SIDE), dtype=np.float32)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", *x.shape, "BLOB", x.tobytes())
    return r.execute_command("AI.MODELEXECUTE", key, "INPUTS", 1, "x", "OUTPUTS", 1, "y", "TIMEOUT", 600000)


def settle(r: redis.Redis) -> enginestats.EngineMemory:
    """Figures once jemalloc has purged what Redis freed (its decay runs in the server's cron)."""
    r.execute_command("MEMORY", "PURGE")
    time.sleep(0.3)
    return figures(r)


# `make test-asan` / `make fuzz-server`: the AddressSanitizer build, its runtime preloaded.
ASAN = bool(os.environ.get("GW_TEST_LD_PRELOAD"))


def needs_real_malloc() -> None:
    if ASAN:
        pytest.skip("AddressSanitizer replaces malloc: no allocator accounts for the heap")


def held_cap(cap: int) -> int:
    """The block cache's cap the loaded backend reports for a setting of `cap`: the
    AddressSanitizer build's backend caches nothing (a reused block would hide a use-after-free
    from ASan), so it holds 0 whatever the setting."""
    return 0 if ASAN else cap


def test_cache_holds_its_setting_and_the_figures_add_up_to_rss(server_factory) -> None:
    server = server_factory(module_args=("TORCH_CPU_CACHE_MB", "64"))
    r = redis.Redis(port=server.port, socket_timeout=600)
    r.execute_command("AI.MODELSTORE", "act", "TORCH", "CPU", "BLOB", scripted_blob(ACTIVATIONS))
    run_batch(r, "act", 1)  # warm-up: libtorch's code and threads are in from here
    needs_real_malloc()
    before = settle(r)
    assert before.cache_limit == 64 * MIB
    assert before.models == 1 and before.model_weights == param_bytes(ACTIVATIONS)

    r.execute_command("AI.MODELSTORE", "w", "TORCH", "CPU", "BLOB", scripted_blob(WEIGHTS))
    for _ in range(3):
        run_batch(r, "act", BATCH)
    after = settle(r)

    # The cache kept large blocks of the batch, and no more than its setting.
    assert 0 < after.cache <= 64 * MIB
    # No run is in progress; the peak saw at least two layers of the batch alive at once.
    assert after.run_tensors == 0
    assert after.run_tensors_peak >= 2 * LAYER_BYTES
    assert after.models == 2
    assert after.model_weights == param_bytes(ACTIVATIONS) + param_bytes(WEIGHTS)
    # libtorch's tensors and cache are part of the engine's heap.
    assert after.torch_allocated >= after.model_weights
    assert after.torch_allocated + after.cache <= after.outside_redis

    # What libtorch reports (tensors and cache) is what the engine's heap grew by.
    torch_growth = after.torch_allocated + after.cache - before.torch_allocated - before.cache
    assert abs((after.outside_redis - before.outside_redis) - torch_growth) <= RSS_SLACK

    growth = after.rss - before.rss
    accounted = explained(after) - explained(before)
    print(
        f"\nrss growth {growth / MIB:.1f} MiB, allocators {accounted / MIB:.1f} MiB, engine heap "
        f"{(after.outside_redis - before.outside_redis) / MIB:.1f} MiB, torch "
        f"{torch_growth / MIB:.1f} MiB, "
        f"libc {after.malloc_is_libc}, unexplained {before.unexplained / MIB:.1f} -> {after.unexplained / MIB:.1f} MiB"
    )
    # The weights (62.5 MiB) and the cache (64 MiB) at least went in: the growth is real.
    assert growth >= param_bytes(WEIGHTS) + after.cache - RSS_SLACK
    assert abs(growth - accounted) <= RSS_SLACK, (growth, accounted)
    server.stop()


def test_modeldel_and_flushall_give_the_weights_back(server_factory) -> None:
    server = server_factory(module_args=("TORCH_CPU_CACHE_MB", "0"))
    r = redis.Redis(port=server.port, socket_timeout=600)
    blob = scripted_blob(WEIGHTS)
    r.execute_command("AI.MODELSTORE", "warm", "TORCH", "CPU", "BLOB", scripted_blob(ACTIVATIONS))
    run_batch(r, "warm", 1)
    weights = param_bytes(WEIGHTS)

    for release in (["AI.MODELDEL", "w"], ["FLUSHALL"]):
        needs_real_malloc()
        base = settle(r)
        r.execute_command("AI.MODELSTORE", "w", "TORCH", "CPU", "BLOB", blob)
        held = settle(r)
        assert held.model_weights - base.model_weights == weights
        assert held.torch_allocated - base.torch_allocated >= weights
        assert held.rss - base.rss >= weights  # the weights and the blob are resident
        assert r.memory_usage("w") >= weights + len(blob)  # MEMORY USAGE: blob and weights

        r.execute_command(*release)
        gone = settle(r)
        print(f"{release[0]}: rss {base.rss / MIB:.0f} -> {held.rss / MIB:.0f} -> {gone.rss / MIB:.0f} MiB")
        expect_models = 1 if release[0] == "AI.MODELDEL" else 0
        assert gone.models == expect_models
        assert gone.model_weights == (param_bytes(ACTIVATIONS) if expect_models else 0)
        assert held.torch_allocated - gone.torch_allocated >= weights
        # The C library gave the weights back to the system (a block that size is mapped on
        # its own), so RSS fell by at least them; the figures account for the rest.
        assert held.rss - gone.rss >= weights - RSS_SLACK
        assert abs((held.rss - gone.rss) - (explained(held) - explained(gone))) <= RSS_SLACK
        if release[0] == "FLUSHALL":
            break
        r.execute_command("AI.MODELDEL", "warm")
        r.execute_command("AI.MODELSTORE", "warm", "TORCH", "CPU", "BLOB", scripted_blob(ACTIVATIONS))
    server.stop()


def test_backend_memory_limit_refuses_a_run_and_the_server_goes_on(server_factory) -> None:
    server = server_factory(module_args=("BACKEND_MEMORY_LIMIT", "40", "TORCH_CPU_CACHE_MB", "64"))
    r = redis.Redis(port=server.port, socket_timeout=600)
    r.execute_command("AI.MODELSTORE", "act", "TORCH", "CPU", "BLOB", scripted_blob(ACTIVATIONS))
    assert r.execute_command("AI.CONFIG", "GET", "BACKEND_MEMORY_LIMIT") == 40
    assert r.info("modules")["ai_torch_memory_limit_bytes"] == 40 * MIB
    run_batch(r, "act", 1)  # 4 MiB per layer: fits
    small = figures(r)
    assert small.refused_allocations == 0

    with pytest.raises(redis.ResponseError) as e:
        run_batch(r, "act", BATCH)  # 32 MiB per layer, two alive at once: over 40 MiB
    message = err(e.value)
    assert "BACKEND_MEMORY_LIMIT of 40.0 MB reached: the run needed 32.0 MB for a tensor" in message, message
    assert "raise the limit (AI.CONFIG BACKEND_MEMORY_LIMIT <MB>)" in message
    refused = figures(r)
    assert refused.refused_allocations == 1
    assert refused.run_tensors == 0 and refused.run_tensors_peak <= 40 * MIB
    # The cache counts against the limit too: the refusal emptied it first.
    assert refused.cache + refused.run_tensors <= 40 * MIB
    info = dict(zip(*[iter(r.execute_command("AI.INFO", "act"))] * 2, strict=False))
    assert info[b"errors"] == 1

    # Inputs alone over the limit: refused before anything runs.
    big = np.zeros((1, 3, 2048, 2048), dtype=np.float32)  # 48 MiB
    r.execute_command("AI.TENSORSET", "big", "FLOAT", *big.shape, "BLOB", big.tobytes())
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.MODELEXECUTE", "act", "INPUTS", 1, "big", "OUTPUTS", 1, "y")
    assert "BACKEND_MEMORY_LIMIT of 40.0 MB reached: the run needed 48.0 MB for its inputs" in err(e.value)

    # The server goes on: small runs work, and lifting the limit lets the batch through.
    assert r.ping()
    run_batch(r, "act", 1)
    assert r.execute_command("AI.CONFIG", "BACKEND_MEMORY_LIMIT", 0) == b"OK"
    run_batch(r, "act", BATCH)
    assert figures(r).memory_limit == 0
    server.stop()


def test_default_cache_follows_maxmemory_and_ai_config_sets_it(server_factory) -> None:
    server = server_factory(extra_config=(("maxmemory", "400mb"),))
    r = redis.Redis(port=server.port, socket_timeout=600)

    def cap() -> int:
        return int(r.info("modules")["ai_torch_cpu_cache_limit_bytes"])

    assert cap() == 100 * MIB  # a quarter of maxmemory, before the backend is even loaded
    r.execute_command("AI.MODELSTORE", "act", "TORCH", "CPU", "BLOB", scripted_blob(ACTIVATIONS))
    assert cap() == held_cap(100 * MIB)  # and handed to it once loaded
    r.config_set("maxmemory", "40mb")
    assert cap() == held_cap(10 * MIB)
    r.config_set("maxmemory", "0")
    assert cap() == held_cap(512 * MIB)
    assert r.info("modules")["ai_torch_cpu_cache_follows_maxmemory"] == 1

    run_batch(r, "act", BATCH)
    assert figures(r).cache > 0 or ASAN
    assert r.execute_command("AI.CONFIG", "TORCH_CPU_CACHE_MB", 0) == b"OK"
    assert figures(r).cache == 0 and cap() == 0  # lowering the cap frees blocks at once
    assert r.execute_command("AI.CONFIG", "GET", "TORCH_CPU_CACHE_MB") == 0
    r.config_set("maxmemory", "400mb")
    assert cap() == 0  # a set size does not follow maxmemory
    assert r.execute_command("AI.CONFIG", "TORCH_CPU_CACHE_MB", "auto") == b"OK"
    assert cap() == held_cap(100 * MIB) and r.execute_command("AI.CONFIG", "GET", "TORCH_CPU_CACHE_MB") == 100

    for args, message in (
        (["TORCH_CPU_CACHE_MB", "-1"], "TORCH_CPU_CACHE_MB: expected megabytes, 0 or more, or AUTO"),
        (["TORCH_CPU_CACHE_MB"], "TORCH_CPU_CACHE_MB: expected megabytes, 0 or more, or AUTO"),
        (["BACKEND_MEMORY_LIMIT", "x"], "BACKEND_MEMORY_LIMIT: expected megabytes, 0 or more (0: no limit)"),
    ):
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command("AI.CONFIG", *args)
        assert err(e.value) == message
    server.stop()


def test_memory_figures_count_scripts(server_factory) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port)
    src = "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n"
    r.execute_command("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "f", "SOURCE", src)
    m = figures(r)
    assert m.scripts == 1 and m.script_bytes == 0 and m.models == 0
    r.execute_command("AI.SCRIPTDEL", "s")
    assert figures(r).scripts == 0
    server.stop()


def test_bad_memory_arguments_stop_the_load(server_factory) -> None:
    from groundwatch.errors import ServerError

    for args in (("TORCH_CPU_CACHE_MB", "-1"), ("BACKEND_MEMORY_LIMIT", "lots")):
        with pytest.raises(ServerError):
            server_factory(module_args=args)


def test_settings_reach_the_engine_and_status_shows_the_figures(server_factory, engine_module) -> None:
    from groundwatch.commands import engine_args
    from groundwatch.settings import Settings

    settings = Settings.load(
        env={"GROUNDWATCH_TORCH_CPU_CACHE_MB": "32", "GROUNDWATCH_BACKEND_MEMORY_LIMIT_MB": "100"},
        engine_module=engine_module,
    )
    server = server_factory(module_args=engine_args(settings))
    r = redis.Redis(port=server.port)
    r.execute_command("AI.MODELSTORE", "act", "TORCH", "CPU", "BLOB", scripted_blob(ACTIVATIONS))
    m = figures(r)
    assert m.cache_limit == held_cap(32 * MIB) and m.memory_limit == 100 * MIB
    assert r.info("modules")["ai_torch_cpu_cache_follows_maxmemory"] == 0
    lines = enginestats.render(m)
    assert lines[0].startswith(f"memory           rss {m.rss / MIB:.0f} MB: used_memory")
    assert (
        "weights 0 MB (1 models)" in lines[1]
        and f"block cache 0 MB of {held_cap(32 * MIB) // MIB} MB, limit 100 MB" in lines[1]
    )
    assert enginestats.render(None)[0].startswith("engine memory    not reported")
    # Without the settings the engine's default applies (it follows maxmemory).
    assert "TORCH_CPU_CACHE_MB" not in engine_args(Settings())
    server.stop()
