/*
 * tensor.cpp: dtype table, tensor lifetime, and the TENSORSET/TENSORGET value rules.
 */
#include "tensor.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <strings.h>

namespace gw {

void *(*mem_alloc)(size_t) = malloc;
void (*mem_free)(void *) = free;

/* ==== Data types ============================================================================== */

namespace {
/* DLPack codes: 0 int, 1 uint, 2 float, 6 bool (8 bits). DLPack has no string type; RedisAI's
 * fork added one after bool, which we take to be 7. */
const DTypeInfo kDTypes[kNumDTypes] = {
    {"FLOAT", 4, 2, 32}, {"DOUBLE", 8, 2, 64}, {"INT8", 1, 0, 8},   {"INT16", 2, 0, 16},
    {"INT32", 4, 0, 32}, {"INT64", 8, 0, 64},  {"UINT8", 1, 1, 8},  {"UINT16", 2, 1, 16},
    {"BOOL", 1, 6, 8},   {"STRING", 0, 7, 8},
};
}  // namespace

const DTypeInfo &dtype_info(int dtype) { return kDTypes[dtype]; }

int dtype_from_name(const char *name, size_t len) {
  for (int i = 0; i < kNumDTypes; i++) {
    if (strlen(kDTypes[i].name) == len && strncasecmp(kDTypes[i].name, name, len) == 0) return i;
  }
  return -1;
}

int dtype_from_dlpack(uint64_t code, uint64_t bits) {
  for (int i = 0; i < kNumDTypes; i++) {
    if (kDTypes[i].dl_code == code && kDTypes[i].dl_bits == bits) return i;
  }
  return -1;
}

/* ==== Tensor ================================================================================== */

Tensor::~Tensor() {
  if (data) mem_free(data);
}

int64_t Tensor::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

GwTensor Tensor::view() const {
  GwTensor t;
  t.dtype = dtype;
  t.ndim = static_cast<int32_t>(shape.size());
  t.shape = const_cast<int64_t *>(shape.data());
  t.data = data;
  t.nbytes = nbytes;
  return t;
}

std::vector<uint64_t> Tensor::string_offsets() const {
  std::vector<uint64_t> offs;
  size_t start = 0;
  for (size_t i = 0; i < nbytes; i++) {
    if (data[i] == '\0') {
      offs.push_back(start);
      start = i + 1;
    }
  }
  return offs;
}

/* ==== Invariants ============================================================================== */

TensorFault check_shape(int dtype, const int64_t *shape, size_t ndim, uint64_t max_bytes,
                        uint64_t *elements) {
  if (dtype < 0 || dtype >= kNumDTypes) return TensorFault::DType;
  if (ndim > kMaxRank) return TensorFault::Rank;
  if (max_bytes > kTensorBytesCeiling) max_bytes = kTensorBytesCeiling;
  /* STRING elements take at least their NUL, so one byte each is a lower bound. */
  uint64_t elem = dtype_info(dtype).size ? dtype_info(dtype).size : 1;
  uint64_t n = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (shape[i] < 1) return TensorFault::Dim;
  }
  for (size_t i = 0; i < ndim; i++) {
    uint64_t next;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(shape[i]), &next) || next > max_bytes)
      return TensorFault::TooLarge;
    n = next;
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(n, elem, &bytes) || bytes > max_bytes) return TensorFault::TooLarge;
  *elements = n;
  return TensorFault::None;
}

TensorFault check_data(int dtype, uint64_t elements, const char *data, size_t nbytes,
                       uint64_t max_bytes) {
  if (max_bytes > kTensorBytesCeiling) max_bytes = kTensorBytesCeiling;
  if (nbytes > 0 && !data) return TensorFault::Length;
  if (dtype == GW_DTYPE_STRING) {
    if (nbytes > max_bytes) return TensorFault::TooLarge;
    if (nbytes == 0 || data[nbytes - 1] != '\0') return TensorFault::Strings;
    uint64_t nuls = 0;
    for (const char *p = data, *end = data + nbytes; p < end; p++) {
      p = static_cast<const char *>(memchr(p, '\0', static_cast<size_t>(end - p)));
      if (!p) break;
      nuls++;
    }
    return nuls == elements ? TensorFault::None : TensorFault::Strings;
  }
  uint64_t want;
  if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dtype_info(dtype).size), &want) ||
      want > max_bytes)
    return TensorFault::TooLarge;
  if (nbytes != want) return TensorFault::Length;
  if (dtype == GW_DTYPE_BOOL) {
    for (size_t i = 0; i < nbytes; i++)
      if (static_cast<unsigned char>(data[i]) > 1) return TensorFault::Bool;
  }
  return TensorFault::None;
}

TensorFault check_tensor(int dtype, const int64_t *shape, size_t ndim, const char *data,
                         size_t nbytes, uint64_t max_bytes) {
  uint64_t n = 0;
  TensorFault f = check_shape(dtype, shape, ndim, max_bytes, &n);
  return f != TensorFault::None ? f : check_data(dtype, n, data, nbytes, max_bytes);
}

std::string tensor_fault_text(TensorFault f, uint64_t max_bytes) {
  switch (f) {
    case TensorFault::None: return "valid";
    case TensorFault::DType: return "unknown tensor data type";
    case TensorFault::Rank:
      return "tensor has more than " + std::to_string(kMaxRank) + " dimensions";
    case TensorFault::Dim:
      return "tensor has a zero-sized or negative dimension (every dimension must be at least 1)";
    case TensorFault::TooLarge:
      return "tensor is larger than TENSOR_MAX_BYTES (" + std::to_string(max_bytes) +
             " bytes; raise it with the module's TENSOR_MAX_BYTES load-time argument)";
    case TensorFault::Length: return "tensor data length does not match its shape and type";
    case TensorFault::Strings:
      return "STRING tensor data does not hold one NUL-terminated string per element";
    case TensorFault::Bool: return "BOOL tensor elements must be 0 or 1";
  }
  return "invalid tensor";
}

std::string tensorset_fault_reply(TensorFault f, uint64_t max_bytes) {
  switch (f) {
    case TensorFault::None: return {};
    case TensorFault::DType: return "ERR invalid data type";
    case TensorFault::Dim: return "ERR invalid or negative value found in tensor shape";
    case TensorFault::Length: return "ERR data length does not match tensor shape and type";
    case TensorFault::Strings:
      return "ERR Number of string elements in data blob does not match tensor length";
    case TensorFault::Bool: return "ERR BOOL tensor elements must be 0 or 1";
    default: return "ERR " + tensor_fault_text(f, max_bytes);
  }
}

int64_t checked_elements(const std::vector<int64_t> &shape, int dtype) {
  uint64_t n = 0;
  if (check_shape(dtype, shape.data(), shape.size(), kTensorBytesCeiling, &n) != TensorFault::None)
    return -1;
  return static_cast<int64_t>(n);
}

Tensor *tensor_adopt(int dtype, std::vector<int64_t> shape, char *data, size_t nbytes) {
  Tensor *t = new Tensor();
  t->dtype = dtype;
  t->shape = std::move(shape);
  t->data = data;
  t->nbytes = nbytes;
  return t;
}

Tensor *tensor_zeros(int dtype, const std::vector<int64_t> &shape) {
  uint64_t n = static_cast<uint64_t>(checked_elements(shape, dtype)); /* callers checked it */
  size_t elem = dtype_info(dtype).size ? dtype_info(dtype).size : 1; /* STRING: "" per element */
  size_t nbytes = static_cast<size_t>(n) * elem;
  char *data = static_cast<char *>(mem_alloc(nbytes ? nbytes : 1));
  memset(data, 0, nbytes ? nbytes : 1);
  return tensor_adopt(dtype, shape, data, nbytes);
}

/* ==== Building from protocol arguments ======================================================== */

std::string tensor_from_blob(int dtype, const std::vector<int64_t> &shape, const char *blob,
                             size_t len, Tensor **out, uint64_t max_bytes) {
  uint64_t n = 0;
  TensorFault f = check_shape(dtype, shape.data(), shape.size(), max_bytes, &n);
  if (f == TensorFault::None) f = check_data(dtype, n, blob, len, max_bytes);
  if (f != TensorFault::None) return tensorset_fault_reply(f, max_bytes);
  char *data = static_cast<char *>(mem_alloc(len ? len : 1));
  memcpy(data, blob, len);
  *out = tensor_adopt(dtype, shape, data, len);
  return {};
}

namespace {

/* Whole-argument numeric parsing: no leading/trailing junk, no NaN (as Redis' own parsers). */
bool parse_double(const Arg &a, double *v) {
  if (a.len == 0 || a.len > 400) return false;
  char buf[401];
  memcpy(buf, a.ptr, a.len);
  buf[a.len] = '\0';
  if (isspace(static_cast<unsigned char>(buf[0]))) return false;
  char *end = nullptr;
  errno = 0;
  double d = strtod(buf, &end);
  if (end != buf + a.len || std::isnan(d) || (errno == ERANGE && std::isinf(d))) return false;
  *v = d;
  return true;
}

bool parse_ll(const Arg &a, long long *v) {
  auto res = std::from_chars(a.ptr, a.ptr + a.len, *v);
  return res.ec == std::errc() && res.ptr == a.ptr + a.len && a.len > 0;
}

/* IEEE narrowing with overflow to +-inf, spelled out so it is defined behaviour: from half a
 * unit in the last place above FLT_MAX on, a double rounds to infinity. */
float narrow_float(double d) {
  const double halfway = static_cast<double>(std::numeric_limits<float>::max()) + std::ldexp(1.0, 103);
  if (std::isfinite(d) && std::fabs(d) >= halfway)
    return d > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  return static_cast<float>(d);
}

template <typename T>
bool store_int(const Arg &a, char *dst) {
  long long v;
  if (!parse_ll(a, &v)) return false;
  if (v < static_cast<long long>(std::numeric_limits<T>::min()) ||
      v > static_cast<long long>(std::numeric_limits<T>::max()))
    return false;
  T t = static_cast<T>(v);
  memcpy(dst, &t, sizeof(T));
  return true;
}

}  // namespace

std::string tensor_from_values(int dtype, const std::vector<int64_t> &shape,
                               const std::vector<Arg> &values, Tensor **out,
                               uint64_t max_bytes) {
  uint64_t n = 0;
  TensorFault f = check_shape(dtype, shape.data(), shape.size(), max_bytes, &n);
  if (f != TensorFault::None) return tensorset_fault_reply(f, max_bytes);
  if (values.size() != n) return "ERR wrong number of values was given in 'AI.TENSORSET' command";

  if (dtype == GW_DTYPE_STRING) {
    /* As RedisAI: a value may carry its own terminating NUL (not stored twice); a NUL anywhere
     * else is refused. */
    auto text_len = [](const Arg &a) {
      return a.len > 0 && a.ptr[a.len - 1] == '\0' ? a.len - 1 : a.len;
    };
    uint64_t total = 0;
    for (const Arg &a : values) {
      if (memchr(a.ptr, '\0', text_len(a))) return "ERR C-string value contains null character";
      total += text_len(a) + 1; /* each argument is held in memory already, so this cannot wrap */
    }
    if (total > max_bytes) return tensorset_fault_reply(TensorFault::TooLarge, max_bytes);
    char *data = static_cast<char *>(mem_alloc(total ? total : 1));
    size_t off = 0;
    for (const Arg &a : values) {
      memcpy(data + off, a.ptr, text_len(a));
      off += text_len(a);
      data[off++] = '\0';
    }
    *out = tensor_adopt(dtype, shape, data, total);
    return {};
  }

  size_t elem = dtype_info(dtype).size;
  size_t nbytes = static_cast<size_t>(n) * elem;
  char *data = static_cast<char *>(mem_alloc(nbytes ? nbytes : 1));
  std::string err;
  for (size_t i = 0; i < values.size() && err.empty(); i++) {
    const Arg &a = values[i];
    char *dst = data + i * elem;
    bool ok = true;
    switch (dtype) {
      case GW_DTYPE_FLOAT: {
        double d;
        /* As RedisAI: parsed as a double, then narrowed (beyond float range: inf). */
        ok = parse_double(a, &d);
        float narrowed = ok ? narrow_float(d) : 0.0f;
        if (ok) memcpy(dst, &narrowed, 4);
        break;
      }
      case GW_DTYPE_DOUBLE: {
        double d;
        ok = parse_double(a, &d);
        if (ok) memcpy(dst, &d, 8);
        break;
      }
      case GW_DTYPE_INT8: ok = store_int<int8_t>(a, dst); break;
      case GW_DTYPE_INT16: ok = store_int<int16_t>(a, dst); break;
      case GW_DTYPE_INT32: ok = store_int<int32_t>(a, dst); break;
      case GW_DTYPE_INT64: ok = store_int<int64_t>(a, dst); break;
      case GW_DTYPE_UINT8: ok = store_int<uint8_t>(a, dst); break;
      case GW_DTYPE_UINT16: ok = store_int<uint16_t>(a, dst); break;
      case GW_DTYPE_BOOL: {
        /* "BOOL tensor elements must be 0 or 1" is the BLOB path's text; VALUES says invalid. */
        long long v;
        ok = parse_ll(a, &v) && (v == 0 || v == 1);
        if (ok) *dst = static_cast<char>(v);
        break;
      }
      default: ok = false;
    }
    if (!ok) err = "ERR invalid value";
  }
  if (!err.empty()) {
    mem_free(data);
    return err;
  }
  *out = tensor_adopt(dtype, shape, data, nbytes);
  return {};
}

/* ==== Printing ================================================================================ */

std::string format_float(float v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

std::string format_double(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

}  // namespace gw
