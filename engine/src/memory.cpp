/*
 * memory.cpp: process figures for INFO MODULES and the block cache's default size.
 */
#include "memory.h"

#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdio>

namespace gw {

namespace {

bool malloc_is_libc() {
  static const bool is_libc = [] {
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    if (!libc) return false;
    void *theirs = dlsym(libc, "malloc");
    dlclose(libc);
    return theirs && dlsym(RTLD_DEFAULT, "malloc") == theirs;
  }();
  return is_libc;
}

}  // namespace

ProcessMemory process_memory() {
  ProcessMemory m;
  if (FILE *f = std::fopen("/proc/self/statm", "r")) {
    unsigned long long size = 0, resident = 0;
    if (std::fscanf(f, "%llu %llu", &size, &resident) == 2)
      m.rss_bytes = resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    std::fclose(f);
  }
  m.malloc_is_libc = malloc_is_libc();
  if (!m.malloc_is_libc) return m;
  /* mallinfo2 walks every arena under its lock: microseconds, fine for an INFO call. hblkhd is
   * the blocks malloc mapped on their own (>= its mmap threshold), in use by definition. */
  struct mallinfo2 mi = mallinfo2();
  m.malloc_in_use_bytes = mi.uordblks + mi.hblkhd;
  m.malloc_free_bytes = mi.fordblks;
  return m;
}

uint64_t default_cpu_cache_bytes(uint64_t maxmemory) {
  if (maxmemory == 0) return kDefaultCpuCacheBytes;
  uint64_t quarter = maxmemory / 4 / (1 << 20) * (1 << 20); /* whole MiB */
  return quarter < kDefaultCpuCacheBytes ? quarter : kDefaultCpuCacheBytes;
}

}  // namespace gw
