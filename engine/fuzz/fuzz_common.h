/*
 * fuzz_common.h: what the libFuzzer targets share. Each target feeds one pure part of the engine
 * (no Redis) and checks, beyond "no crash and no sanitizer report", the property that part owes
 * the rest: whatever is accepted satisfies the tensor invariants and survives a re-encode.
 */
#ifndef GROUNDWATCH_FUZZ_COMMON_H
#define GROUNDWATCH_FUZZ_COMMON_H

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "serialization.h"
#include "tensor.h"

/* A broken property is a crash, so libFuzzer keeps the input. */
#define FUZZ_REQUIRE(cond)                                                           \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

/* Reads fixed-size values off the front of the input; zeros once it runs out. */
struct Taker {
  const uint8_t *p;
  size_t n;
  uint64_t u64(size_t bytes = 8) {
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; i++) v = (v << 8) | (i < n ? p[i] : 0);
    size_t used = bytes < n ? bytes : n;
    p += used;
    n -= used;
    return v;
  }
  uint8_t byte() { return static_cast<uint8_t>(u64(1)); }
};

inline bool same_tensor(const gw::Tensor &a, const gw::Tensor &b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.nbytes == b.nbytes &&
         (a.nbytes == 0 || std::memcmp(a.data, b.data, a.nbytes) == 0);
}

inline void require_valid(const gw::Tensor &t, uint64_t max_bytes) {
  FUZZ_REQUIRE(gw::check_tensor(t.dtype, t.shape.data(), t.shape.size(), t.data, t.nbytes,
                                max_bytes) == gw::TensorFault::None);
}

/* Encodes t, decodes it back: the same tensor, every field consumed. */
inline void require_round_trip(const gw::Tensor &t) {
  gw::BufferWriter w;
  gw::save_tensor(w, t);
  gw::BufferReader r(w.out.data(), w.out.size());
  std::string err;
  gw::Tensor *back = gw::load_tensor(r, &err);
  FUZZ_REQUIRE(back != nullptr);
  FUZZ_REQUIRE(r.at_end());
  FUZZ_REQUIRE(same_tensor(t, *back));
  back->release();
}

#endif
