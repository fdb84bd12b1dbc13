/*
 * tensor.h: tensors as the engine stores them, and the protocol's rules for building and
 * printing them. Pure C++: no Redis types, so every rule here can be exercised on its own.
 */
#ifndef GROUNDWATCH_TENSOR_H
#define GROUNDWATCH_TENSOR_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "backend_api.h"

namespace gw {

/* ==== Memory hooks ============================================================================
 * Tensor data goes through these so that, inside Redis, it counts against maxmemory. They
 * default to malloc/free and the module points them at RedisModule_Alloc/Free on load. */
extern void *(*mem_alloc)(size_t);
extern void (*mem_free)(void *);

/* ==== Data types ============================================================================== */
struct DTypeInfo {
  const char *name;   /* protocol TYPE name */
  size_t size;        /* bytes per element; 0 for STRING (variable) */
  uint32_t dl_code;   /* DLPack type code, used by the RDB encoding */
  uint32_t dl_bits;
};
constexpr int kNumDTypes = 10;
const DTypeInfo &dtype_info(int dtype);
/* Case-insensitive; -1 when unknown. */
int dtype_from_name(const char *name, size_t len);
/* From the RDB (code, bits) pair; -1 when unknown. */
int dtype_from_dlpack(uint64_t code, uint64_t bits);

/* ==== Tensor =================================================================================
 * Immutable once built and shared by reference count: a key, a DAG and a worker can hold the
 * same tensor without copying it, and a key deleted meanwhile frees nothing in use. */
struct Tensor {
  std::atomic<int> refs{1};
  int dtype = GW_DTYPE_FLOAT;
  std::vector<int64_t> shape;
  char *data = nullptr; /* mem_alloc'd */
  size_t nbytes = 0;

  Tensor() = default;
  Tensor(const Tensor &) = delete;
  Tensor &operator=(const Tensor &) = delete;
  ~Tensor();

  Tensor *retain() {
    refs.fetch_add(1, std::memory_order_relaxed);
    return this;
  }
  void release() {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  int64_t elements() const;
  /* A borrowed view for the backend. */
  GwTensor view() const;
  /* Byte offsets of each element of a STRING tensor. */
  std::vector<uint64_t> string_offsets() const;
};

/* Largest tensor accepted from a command, so a typo in a shape cannot take the server down. */
constexpr size_t kMaxTensorBytes = size_t(1) << 32;

/* Checks a shape and returns the element count, or -1 on a bad or oversized shape. */
int64_t checked_elements(const std::vector<int64_t> &shape, int dtype);

/* A new zero-filled tensor (nbytes from shape; for STRING, one empty string per element). */
Tensor *tensor_zeros(int dtype, const std::vector<int64_t> &shape);
/* A new tensor taking ownership of mem_alloc'd data. */
Tensor *tensor_adopt(int dtype, std::vector<int64_t> shape, char *data, size_t nbytes);

/* ==== Building from protocol arguments ========================================================
 * Each returns an empty string on success, or the full error reply ("ERR ..."). */
std::string tensor_from_blob(int dtype, const std::vector<int64_t> &shape, const char *blob,
                             size_t len, Tensor **out);
struct Arg {
  const char *ptr;
  size_t len;
};
std::string tensor_from_values(int dtype, const std::vector<int64_t> &shape,
                               const std::vector<Arg> &values, Tensor **out);

/* ==== Printing ================================================================================ */
/* Shortest text that reads back to the same float/double ("4", "0.5"). */
std::string format_float(float v);
std::string format_double(double v);

}  // namespace gw

#endif
