/*
 * cmd_tensor.cpp: AI.TENSORSET and AI.TENSORGET, and their parsing and reply, which DAG ops use
 * too.
 */
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "exec.h"
#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Parsing ================================================================================= */

std::string parse_tensorset(const Args &a, bool trusted, Tensor **out, long long *budget) {
  if (a.argc < 4) return wrong_arity(a);
  size_t tlen;
  const char *tname = RedisModule_StringPtrLen(a.argv[2], &tlen);
  int dtype = dtype_from_name(tname, tlen);
  if (dtype < 0) return "ERR invalid data type";
  std::vector<int64_t> shape;
  int i = 3;
  for (; i < a.argc && !a.is(i, "BLOB") && !a.is(i, "VALUES"); i++) {
    long long d;
    if (!a.ll(i, &d) || d <= 0) return "ERR invalid or negative value found in tensor shape";
    if (shape.size() == kMaxRank) return tensorset_fault_reply(TensorFault::Rank, 0);
    shape.push_back(d);
  }
  /* No dimensions before BLOB/VALUES: a scalar (rank 0, one element), as script outputs can be. */
  bool has_data = i < a.argc;
  uint64_t limit = static_cast<uint64_t>(config.tensor_max_bytes);
  if (trusted && has_data) limit = kTensorBytesCeiling;
  uint64_t elements = 0;
  TensorFault f = check_shape(dtype, shape.data(), shape.size(), limit, &elements);
  if (f != TensorFault::None) return tensorset_fault_reply(f, limit);
  {
    size_t bytes = static_cast<size_t>(elements) *
                   (dtype_info(dtype).size ? dtype_info(dtype).size : 1);
    if (a.is(i, "BLOB") && i + 1 < a.argc) {
      size_t len;
      RedisModule_StringPtrLen(a.argv[i + 1], &len);
      if (len > bytes) bytes = len;
    }
    std::string oom = charge_headroom(budget, bytes);
    if (!oom.empty()) return oom;
  }
  if (!has_data) {
    *out = tensor_zeros(dtype, shape);
    return {};
  }
  if (a.is(i, "BLOB")) {
    if (a.argc - i - 1 != 1)
      return "ERR a single binary string should come after the BLOB argument in 'AI.TENSORSET' "
             "command";
    size_t len;
    const char *blob = RedisModule_StringPtrLen(a.argv[i + 1], &len);
    return tensor_from_blob(dtype, shape, blob, len, out, limit);
  }
  std::vector<Arg> values;
  for (int j = i + 1; j < a.argc; j++) {
    Arg v;
    v.ptr = RedisModule_StringPtrLen(a.argv[j], &v.len);
    values.push_back(v);
  }
  return tensor_from_values(dtype, shape, values, out, limit);
}

std::string parse_tensorget(const Args &a, bool *meta, GetFormat *fmt) {
  if (a.argc < 2 || a.argc > 4) return wrong_arity(a);
  *meta = false;
  *fmt = GetFormat::None;
  for (int i = 2; i < a.argc; i++) {
    if (a.is(i, "META")) {
      *meta = true;
    } else if (a.is(i, "BLOB") || a.is(i, "VALUES")) {
      GetFormat f = a.is(i, "BLOB") ? GetFormat::Blob : GetFormat::Values;
      if (*fmt != GetFormat::None && *fmt != f) return "ERR both BLOB and VALUES specified";
      *fmt = f;
    } else {
      return "ERR unsupported data format";
    }
  }
  if (!*meta && *fmt == GetFormat::None) {
    *meta = true;
    *fmt = GetFormat::Blob;
  }
  return {};
}

/* ==== Replies ================================================================================= */

namespace {

void reply_values(RedisModuleCtx *ctx, const Tensor &t) {
  if (t.dtype == GW_DTYPE_STRING) {
    std::vector<uint64_t> offs = t.string_offsets();
    RedisModule_ReplyWithArray(ctx, static_cast<long>(offs.size()));
    for (uint64_t off : offs) {
      const char *s = t.data + off;
      RedisModule_ReplyWithStringBuffer(ctx, s, strlen(s));
    }
    return;
  }
  int64_t n = t.elements();
  RedisModule_ReplyWithArray(ctx, static_cast<long>(n));
  for (int64_t i = 0; i < n; i++) {
    const char *p = t.data + i * static_cast<int64_t>(dtype_info(t.dtype).size);
    switch (t.dtype) {
      case GW_DTYPE_FLOAT: {
        float f;
        memcpy(&f, p, 4);
        std::string s = format_float(f);
        RedisModule_ReplyWithStringBuffer(ctx, s.data(), s.size());
        break;
      }
      case GW_DTYPE_DOUBLE: {
        double d;
        memcpy(&d, p, 8);
        std::string s = format_double(d);
        RedisModule_ReplyWithStringBuffer(ctx, s.data(), s.size());
        break;
      }
      case GW_DTYPE_INT8: RedisModule_ReplyWithLongLong(ctx, *reinterpret_cast<const int8_t *>(p)); break;
      case GW_DTYPE_INT16: {
        int16_t v;
        memcpy(&v, p, 2);
        RedisModule_ReplyWithLongLong(ctx, v);
        break;
      }
      case GW_DTYPE_INT32: {
        int32_t v;
        memcpy(&v, p, 4);
        RedisModule_ReplyWithLongLong(ctx, v);
        break;
      }
      case GW_DTYPE_INT64: {
        int64_t v;
        memcpy(&v, p, 8);
        RedisModule_ReplyWithLongLong(ctx, v);
        break;
      }
      case GW_DTYPE_UINT16: {
        uint16_t v;
        memcpy(&v, p, 2);
        RedisModule_ReplyWithLongLong(ctx, v);
        break;
      }
      default: /* UINT8, BOOL */
        RedisModule_ReplyWithLongLong(ctx, *reinterpret_cast<const uint8_t *>(p));
    }
  }
}

}  // namespace

void reply_tensor(RedisModuleCtx *ctx, const Tensor &t, bool meta, GetFormat fmt) {
  if (meta) {
    RedisModule_ReplyWithArray(ctx, fmt == GetFormat::None ? 4 : 6);
    RedisModule_ReplyWithSimpleString(ctx, "dtype");
    RedisModule_ReplyWithSimpleString(ctx, dtype_info(t.dtype).name);
    RedisModule_ReplyWithSimpleString(ctx, "shape");
    RedisModule_ReplyWithArray(ctx, static_cast<long>(t.shape.size()));
    for (int64_t d : t.shape) RedisModule_ReplyWithLongLong(ctx, d);
  }
  if (fmt == GetFormat::Blob) {
    if (meta) RedisModule_ReplyWithSimpleString(ctx, "blob");
    RedisModule_ReplyWithStringBuffer(ctx, t.data, t.nbytes);
  } else if (fmt == GetFormat::Values) {
    if (meta) RedisModule_ReplyWithSimpleString(ctx, "values");
    reply_values(ctx, t);
  }
}

/* ==== Commands ================================================================================ */

int TensorSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 4) return reply_arity(ctx, argv);
  Args a{argv, argc};
  if (!tensor_writable(ctx, argv[1])) return reply_err(ctx, kWrongType);
  Tensor *t = nullptr;
  bool trusted = replayed(ctx);
  /* Data from the AOF or our master is already held: only clients' tensors are refused. */
  long long headroom = trusted ? -1 : memory_headroom(ctx);
  std::string err = parse_tensorset(a, trusted, &t, &headroom);
  if (!err.empty()) return reply_err(ctx, err);
  set_value(ctx, argv[1], TensorType, t);
  RedisModule_ReplicateVerbatim(ctx);
  return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

int TensorGet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 2 || argc > 4) return reply_arity(ctx, argv);
  /* As RedisAI: the key first, the options after. */
  Tensor *t = nullptr;
  std::string err = get_tensor(ctx, argv[1], &t);
  if (!err.empty()) return reply_err(ctx, err);
  bool meta;
  GetFormat fmt;
  err = parse_tensorget(Args{argv, argc}, &meta, &fmt);
  if (!err.empty()) return reply_err(ctx, err);
  /* VALUES expands each element into a reply of its own (up to ~30 bytes for 1 to 8). BLOB
   * is the tensor's own size, which TENSOR_MAX_BYTES already bounds. */
  if (fmt == GetFormat::Values && reply_size(*t, fmt) > static_cast<size_t>(config.max_reply_bytes))
    return reply_err(ctx, "ERR the VALUES reply of this tensor would take more than MAX_REPLY_BYTES (" +
                              std::to_string(config.max_reply_bytes) + " bytes); use BLOB");
  reply_tensor(ctx, *t, meta, fmt);
  return REDISMODULE_OK;
}

}  // namespace gw
