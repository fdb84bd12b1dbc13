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

/* ==== Invariants =============================================================================
 * One set of rules for every tensor the engine holds, checked here and nowhere else: by
 * TENSORSET (plain and in DAGs), on model and script outputs, on RESTORE and RDB load (and so on
 * AOF replay, which is TENSORSET). Whatever passes can be saved, reloaded, AOF-rewritten as a
 * TENSORSET and replayed. All arithmetic is overflow-checked.
 *   - dtype: one of the ten of the table
 *   - rank: 0 (a scalar, one element) to kMaxRank
 *   - every dimension at least 1 (the protocol's "every dim > 0"; a zero-sized dimension would
 *     be an AOF TENSORSET that replay refuses)
 *   - bytes: elements x element size for numeric types; STRING: one NUL-terminated element per
 *     element, the last byte a NUL; BOOL bytes 0 or 1
 *   - at most max_bytes bytes (TENSOR_MAX_BYTES; for STRING also elements <= max_bytes, since
 *     each takes at least its NUL) */
constexpr size_t kMaxRank = 64;
/* Default of TENSOR_MAX_BYTES: 512 MiB, the size of Redis' own largest string (proto-max-bulk-len),
 * so any tensor a client can send as one BLOB fits, and a typo in a shape cannot ask for more. */
constexpr uint64_t kDefaultTensorMaxBytes = uint64_t(512) << 20;
/* The largest TENSOR_MAX_BYTES may be set to; also the bound used for data the server already
 * holds (RDB load, AOF replay), whose bytes are present whatever the limit. Far below SIZE_MAX, so
 * no size derived from a checked shape can wrap. */
constexpr uint64_t kTensorBytesCeiling = uint64_t(1) << 48;

enum class TensorFault { None, DType, Rank, Dim, TooLarge, Length, Strings, Bool };

/* Checks dtype, rank and dimensions; *elements gets the element count. */
TensorFault check_shape(int dtype, const int64_t *shape, size_t ndim, uint64_t max_bytes,
                        uint64_t *elements);
/* Checks the bytes of a tensor of `elements` elements (its shape already checked). */
TensorFault check_data(int dtype, uint64_t elements, const char *data, size_t nbytes,
                       uint64_t max_bytes);
/* Both. */
TensorFault check_tensor(int dtype, const int64_t *shape, size_t ndim, const char *data,
                         size_t nbytes, uint64_t max_bytes);
/* A sentence for logs and error replies ("tensor has a zero-sized dimension ..."). */
std::string tensor_fault_text(TensorFault f, uint64_t max_bytes);

/* Element count of a shape that passes check_shape with the ceiling, or -1. */
int64_t checked_elements(const std::vector<int64_t> &shape, int dtype);

/* A new zero-filled tensor (nbytes from shape; for STRING, one empty string per element). */
Tensor *tensor_zeros(int dtype, const std::vector<int64_t> &shape);
/* A new tensor taking ownership of mem_alloc'd data. */
Tensor *tensor_adopt(int dtype, std::vector<int64_t> shape, char *data, size_t nbytes);

/* ==== Building from protocol arguments ========================================================
 * Each returns an empty string on success, or the full error reply ("ERR ..."). The shape must
 * have passed check_shape; max_bytes is the limit the data is held to. */
std::string tensor_from_blob(int dtype, const std::vector<int64_t> &shape, const char *blob,
                             size_t len, Tensor **out, uint64_t max_bytes = kDefaultTensorMaxBytes);
struct Arg {
  const char *ptr;
  size_t len;
};
std::string tensor_from_values(int dtype, const std::vector<int64_t> &shape,
                               const std::vector<Arg> &values, Tensor **out,
                               uint64_t max_bytes = kDefaultTensorMaxBytes);
/* The TENSORSET error reply for a fault of the shape or data. */
std::string tensorset_fault_reply(TensorFault f, uint64_t max_bytes);

/* ==== Printing ================================================================================ */
/* Shortest text that reads back to the same float/double ("4", "0.5"). */
std::string format_float(float v);
std::string format_double(double v);

}  // namespace gw

#endif
