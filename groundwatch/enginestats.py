"""The engine's memory, read from INFO: what the `ai_memory` section of INFO MODULES reports next
to Redis's own figures from INFO memory (docs/engine-limits.md explains them).

`used_memory` counts only what Redis allocated; libtorch's tensors, its block cache and the model
weights are outside it and outside `maxmemory`. Where they live depends on how redis-server was
built: with its bundled jemalloc (prefixed), libtorch uses the C library's malloc and the engine
reports that heap (`ai_malloc_*`); when redis-server links a jemalloc that replaces malloc for the
whole process (Debian's package), libtorch's memory is inside Redis's `allocator_*` figures and
the engine's heap is `allocator_allocated - used_memory`. read() takes both views in one
snapshot so that `groundwatch status` and long runs can tell growth of data (Redis) from growth
of the engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import redis

MIB = 1 << 20


@dataclass(frozen=True)
class EngineMemory:
    """Bytes unless named otherwise; every figure is one INFO field (no estimates)."""

    rss: int  # ai_process_rss_bytes: the whole redis-server process
    redis_used: int  # used_memory: what Redis's allocator hands out (keys, tensors, blobs)
    redis_allocator_allocated: int  # allocator_allocated: jemalloc's bytes in use
    redis_allocator_resident: int  # allocator_resident: jemalloc's resident pages
    fragmentation_ratio: float  # mem_fragmentation_ratio: rss / used_memory, engine included
    malloc_is_libc: bool  # ai_malloc_is_libc: libtorch allocates from the C library, not Redis's jemalloc
    malloc_in_use: int  # ai_malloc_in_use_bytes: C-library malloc in use (libtorch and the engine)
    malloc_free: int  # ai_malloc_free_bytes: freed but kept by the C library
    torch_allocated: int  # ai_torch_cpu_allocated_bytes: live libtorch CPU tensors
    model_weights: int  # ai_torch_model_weights_bytes
    models: int  # ai_torch_models
    script_bytes: int  # ai_torch_script_bytes
    scripts: int  # ai_torch_scripts
    run_tensors: int  # ai_torch_run_tensor_bytes: tensors of the runs in progress
    run_tensors_peak: int  # ai_torch_run_tensor_peak_bytes: highest since the backend loaded
    cache: int  # ai_torch_cpu_cache_bytes: the block cache
    cache_limit: int  # ai_torch_cpu_cache_limit_bytes
    memory_limit: int  # ai_torch_memory_limit_bytes: BACKEND_MEMORY_LIMIT, 0 for none
    refused_allocations: int  # ai_torch_refused_allocations

    @property
    def outside_redis(self) -> int:
        """Heap the engine (libtorch and the module's own objects) holds outside `used_memory`:
        the C library's heap, or the part of the shared jemalloc that Redis did not allocate."""
        if self.malloc_is_libc:
            return self.malloc_in_use + self.malloc_free
        return max(self.redis_allocator_allocated - self.redis_used, 0)

    @property
    def heaps(self) -> int:
        """What the allocators hand out: jemalloc's allocated bytes (Redis's data, and the
        engine's heap when it shares jemalloc), plus the C library's heap (in use and kept)
        when libtorch allocates there."""
        extra = self.malloc_in_use + self.malloc_free if self.malloc_is_libc else 0
        return self.redis_allocator_allocated + extra

    @property
    def unexplained(self) -> int:
        """RSS beyond the heaps: code, stacks, libtorch's mapped libraries, and allocator
        fragmentation. Flat after warm-up; growth here is neither data nor engine tensors."""
        return self.rss - self.heaps

    def as_dict(self) -> dict[str, Any]:
        """Flat figures (with the derived ones) for a JSON log line or a soak report."""
        out = asdict(self)
        out["outside_redis"] = self.outside_redis
        out["heaps"] = self.heaps
        out["unexplained"] = self.unexplained
        return out


def _int(info: dict[str, Any], name: str) -> int:
    value = info.get(name, 0)
    return int(value) if value is not None else 0


def read(client: redis.Redis) -> EngineMemory | None:
    """The figures now; None when the server has no engine with the `ai_memory` section, or
    when this user may not run INFO (the viewer role may not: INFO shows the server's
    configuration)."""
    try:
        modules = client.info("modules")
    except redis.exceptions.NoPermissionError:
        return None
    if "ai_process_rss_bytes" not in modules:
        return None
    memory = client.info("memory")
    return EngineMemory(
        rss=_int(modules, "ai_process_rss_bytes"),
        redis_used=_int(memory, "used_memory"),
        redis_allocator_allocated=_int(memory, "allocator_allocated"),
        redis_allocator_resident=_int(memory, "allocator_resident"),
        fragmentation_ratio=float(memory.get("mem_fragmentation_ratio", 0.0)),
        malloc_is_libc=bool(_int(modules, "ai_malloc_is_libc")),
        malloc_in_use=_int(modules, "ai_malloc_in_use_bytes"),
        malloc_free=_int(modules, "ai_malloc_free_bytes"),
        torch_allocated=_int(modules, "ai_torch_cpu_allocated_bytes"),
        model_weights=_int(modules, "ai_torch_model_weights_bytes"),
        models=_int(modules, "ai_torch_models"),
        script_bytes=_int(modules, "ai_torch_script_bytes"),
        scripts=_int(modules, "ai_torch_scripts"),
        run_tensors=_int(modules, "ai_torch_run_tensor_bytes"),
        run_tensors_peak=_int(modules, "ai_torch_run_tensor_peak_bytes"),
        cache=_int(modules, "ai_torch_cpu_cache_bytes"),
        cache_limit=_int(modules, "ai_torch_cpu_cache_limit_bytes"),
        memory_limit=_int(modules, "ai_torch_memory_limit_bytes"),
        refused_allocations=_int(modules, "ai_torch_refused_allocations"),
    )


def _mb(n: int) -> str:
    return f"{n / MIB:.0f} MB"


def render(m: EngineMemory | None) -> list[str]:
    """Lines for `groundwatch status`."""
    if m is None:
        return ["engine memory    not reported (no engine, or one without the ai_memory section)"]
    limit = _mb(m.memory_limit) if m.memory_limit else "none"
    return [
        f"memory           rss {_mb(m.rss)}: used_memory {_mb(m.redis_used)}, engine heap "
        f"{_mb(m.outside_redis)}, heaps {_mb(m.heaps)}, code, stacks and fragmentation "
        f"{_mb(m.unexplained)}; mem_fragmentation_ratio {m.fragmentation_ratio:.2f} counts the engine",
        f"engine memory    weights {_mb(m.model_weights)} ({m.models} models), "
        f"run tensors {_mb(m.run_tensors)} (peak {_mb(m.run_tensors_peak)}), "
        f"block cache {_mb(m.cache)} of {_mb(m.cache_limit)}, limit {limit}"
        + (f", {m.refused_allocations} refused" if m.refused_allocations else ""),
    ]
