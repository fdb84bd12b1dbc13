/*
 * memory.h: what the engine's memory outside Redis's allocator amounts to, and the rule that
 * sizes the TORCH block cache (pure C++: no Redis types).
 *
 * Redis allocates with its own jemalloc (`used_memory`, `allocator_*` in INFO memory). libtorch
 * and the engine's C++ objects allocate with the C library's malloc, which Redis never sees: the
 * figures here are what an operator needs to explain `used_memory_rss` and
 * `mem_fragmentation_ratio` with the engine loaded (docs/engine-limits.md).
 */
#ifndef GROUNDWATCH_MEMORY_H
#define GROUNDWATCH_MEMORY_H

#include <stddef.h>
#include <stdint.h>

namespace gw {

struct ProcessMemory {
  uint64_t rss_bytes = 0; /* resident set of the process (/proc/self/statm) */
  /* Whether malloc() in this process is the C library's. It is not when redis-server links a
   * jemalloc that exports malloc (Debian's package links the system libjemalloc), or under
   * AddressSanitizer: libtorch's memory is then inside Redis's allocator_* figures. */
  bool malloc_is_libc = false;
  uint64_t malloc_in_use_bytes = 0; /* C-library malloc: blocks in use (mallinfo2); 0 if not libc */
  uint64_t malloc_free_bytes = 0;   /* C-library malloc: freed blocks it keeps; 0 if not libc */
};
ProcessMemory process_memory();

/* The block cache's cap when TORCH_CPU_CACHE_MB is not given: 512 MiB, or a quarter of
 * maxmemory when that is less (maxmemory 0: no maxmemory, 512 MiB). The cache lives outside
 * maxmemory, so a server sized with maxmemory keeps the engine's share in proportion. */
uint64_t default_cpu_cache_bytes(uint64_t maxmemory);

constexpr uint64_t kDefaultCpuCacheBytes = uint64_t(512) << 20;

}  // namespace gw

#endif
