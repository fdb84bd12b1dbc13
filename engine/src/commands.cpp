/*
 * commands.cpp: the AI.* commands. Every command validates all of its arguments before it
 * changes anything; `...OrReply` helpers send the error themselves and return false so the
 * caller only has to return.
 */
#include <strings.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "backend.h"
#include "exec.h"
#include "glue.h"
#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Argument helpers ======================================================================== */

namespace {

const char kTxError[] = "ERR Cannot run RedisAI command within a transaction or a LUA script";

struct Args {
  RedisModuleString **argv;
  int argc;
  std::string str(int i) const {
    size_t len;
    const char *p = RedisModule_StringPtrLen(argv[i], &len);
    return std::string(p, len);
  }
  bool is(int i, const char *kw) const {
    if (i >= argc) return false;
    size_t len;
    const char *p = RedisModule_StringPtrLen(argv[i], &len);
    return strlen(kw) == len && strncasecmp(p, kw, len) == 0;
  }
  /* An integer argument, false when it is not one. */
  bool ll(int i, long long *v) const {
    return i < argc && RedisModule_StringToLongLong(argv[i], v) == REDISMODULE_OK;
  }
  Args sub(int from, int to) const { return Args{argv + from, to - from}; }
};

int reply_err(RedisModuleCtx *ctx, const std::string &err) {
  return RedisModule_ReplyWithError(ctx, err.c_str());
}

/* Redis 6's arity error, which quotes argv[0] as the client sent it (Redis 7's
 * RedisModule_WrongArity quotes the registered lower-case name instead). */
std::string wrong_arity(const Args &a) {
  return "ERR wrong number of arguments for '" + a.str(0) + "' command";
}

int reply_arity(RedisModuleCtx *ctx, RedisModuleString **argv) {
  return reply_err(ctx, wrong_arity(Args{argv, 1}));
}

/* ==== Keyspace access =========================================================================
 * A lookup either finds the value of the wanted type, finds nothing, or finds a key of another
 * type. */
enum class Lookup { Found, Empty, WrongType };

template <typename T>
Lookup lookup(RedisModuleCtx *ctx, RedisModuleString *name, RedisModuleType *type, T **out) {
  RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_READ);
  Lookup res = Lookup::Empty;
  if (key) {
    int kt = RedisModule_KeyType(key);
    if (kt == REDISMODULE_KEYTYPE_EMPTY) {
      res = Lookup::Empty;
    } else if (kt == REDISMODULE_KEYTYPE_MODULE && RedisModule_ModuleTypeGetType(key) == type) {
      *out = static_cast<T *>(RedisModule_ModuleTypeGetValue(key));
      res = Lookup::Found;
    } else {
      res = Lookup::WrongType;
    }
    RedisModule_CloseKey(key);
  }
  return res;
}

const char kWrongType[] = "WRONGTYPE Operation against a key holding the wrong kind of value";

/* A key may be written with a tensor when it is empty or already holds one. */
bool tensor_writable(RedisModuleCtx *ctx, RedisModuleString *name) {
  Tensor *t = nullptr;
  return lookup(ctx, name, TensorType, &t) != Lookup::WrongType;
}

std::string get_tensor(RedisModuleCtx *ctx, RedisModuleString *name, Tensor **out) {
  switch (lookup(ctx, name, TensorType, out)) {
    case Lookup::Found: return {};
    case Lookup::Empty: return "ERR tensor key is empty or in a different shard";
    default: return kWrongType;
  }
}

std::string get_model(RedisModuleCtx *ctx, RedisModuleString *name, Model **out) {
  switch (lookup(ctx, name, ModelType, out)) {
    case Lookup::Found: return {};
    case Lookup::Empty: return "ERR model key is empty";
    default: return kWrongType;
  }
}

std::string get_script(RedisModuleCtx *ctx, RedisModuleString *name, Script **out) {
  switch (lookup(ctx, name, ScriptType, out)) {
    case Lookup::Found: return {};
    case Lookup::Empty: return "ERR script key is empty";
    default: return kWrongType;
  }
}

void set_value(RedisModuleCtx *ctx, RedisModuleString *name, RedisModuleType *type, void *value) {
  RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_READ | REDISMODULE_WRITE);
  RedisModule_ModuleTypeSetValue(key, type, value);
  RedisModule_CloseKey(key);
}

/* ==== Memory and ACL context of the caller ==================================================== */

/* Bytes that may still be allocated before used memory reaches maxmemory, or -1 when there is
 * no maxmemory. Redis's deny-oom only refuses a command once memory is already over the limit;
 * commands that allocate much at once (a large TENSORSET, a DAG) use this to refuse before. */
long long memory_headroom(RedisModuleCtx *ctx) {
  float ratio = RedisModule_GetUsedMemoryRatio();
  if (ratio <= 0) return -1;
  RedisModuleServerInfoData *info = RedisModule_GetServerInfo(ctx, "memory");
  int e = 0;
  unsigned long long max = info ? RedisModule_ServerInfoGetFieldUnsigned(info, "maxmemory", &e) : 0;
  if (info) RedisModule_FreeServerInfo(ctx, info);
  if (e || max == 0) return -1;
  double left = static_cast<double>(max) * (1.0 - static_cast<double>(ratio));
  return left > 0 ? static_cast<long long>(left) : 0;
}

std::string oom_reply(long long need, long long left) {
  return "OOM command not allowed: it needs " + std::to_string(need) + " bytes and only " +
         std::to_string(left < 0 ? 0 : left) + " are left under 'maxmemory'";
}

/* Takes bytes out of a headroom from memory_headroom (nullptr or -1: unlimited); the OOM
 * reply when they do not fit. */
std::string charge_headroom(long long *budget, size_t bytes) {
  if (!budget || *budget < 0) return {};
  long long b = static_cast<long long>(bytes);
  if (b > *budget) return oom_reply(b, *budget);
  *budget -= b;
  return {};
}

/* The ACL user of the calling client, for the checks its request's scripts make later on a
 * worker thread (whose context has no user). */
void capture_user(RedisModuleCtx *ctx, Run *run) {
  RedisModuleString *name = RedisModule_GetCurrentUserName(ctx);
  if (!name) return;
  size_t len;
  const char *p = RedisModule_StringPtrLen(name, &len);
  run->user.assign(p, len);
  run->has_user = true;
  RedisModule_FreeString(ctx, name);
}

/* Execute commands block their client, which MULTI, Lua and RM_Call cannot allow. */
bool can_block_or_reply(RedisModuleCtx *ctx) {
  int flags = RedisModule_GetContextFlags(ctx);
  if (flags & (REDISMODULE_CTX_FLAGS_MULTI | REDISMODULE_CTX_FLAGS_LUA |
               REDISMODULE_CTX_FLAGS_DENY_BLOCKING)) {
    RedisModule_ReplyWithError(ctx, kTxError);
    return false;
  }
  return true;
}

}  // namespace

/* ==== Models and scripts through the backend ================================================== */

bool valid_device(const std::string &device) {
  if (device.size() >= 10) return false;
  std::string d = device;
  for (char &c : d) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  if (d == "CPU" || d == "GPU") return true;
  if (d.compare(0, 4, "CPU:") != 0 && d.compare(0, 4, "GPU:") != 0) return false;
  for (size_t i = 4; i < d.size(); i++)
    if (!isdigit(static_cast<unsigned char>(d[i]))) return false;
  return true;
}

Model *failed_model(const std::string &device, const std::string &tag, long long batchsize,
                    long long minbatchsize, long long minbatchtimeout, char *blob, size_t bloblen,
                    bool optimize, const std::string &err) {
  Model *m = new Model();
  m->device = device;
  m->queue = device_queue(device);
  m->tag = tag;
  m->batchsize = batchsize;
  m->minbatchsize = minbatchsize;
  m->minbatchtimeout = minbatchtimeout;
  m->blob = blob;
  m->bloblen = bloblen;
  m->optimize = optimize;
  m->load_error = err.compare(0, 4, "ERR ") == 0 ? err.substr(4) : err;
  if (optimize) m->optimize_status = "the model did not load";
  return m;
}

std::string model_unusable(const Model &m) {
  if (m.load_error.empty()) return {};
  return "ERR this model did not load and cannot run: " + m.load_error +
         " (store it again with AI.MODELSTORE)";
}

std::string device_queue(const std::string &device) {
  std::string d = device;
  for (char &c : d) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  /* One spelling per device ("CPU:007" is "CPU:7"): each distinct name gets a queue and
   * threads of its own. */
  if (d.size() > 4 && d[3] == ':') {
    size_t nz = d.find_first_not_of('0', 4);
    d = d.substr(0, 4) + (nz == std::string::npos ? std::string("0") : d.substr(nz));
  }
  return d;
}

namespace {

/* RedisAI 1.2's checks of one entry point, in its order and words. A backend before ABI 4 cannot
 * report parameters, so only existence is checked then. */
std::string check_entry_point(const GwBackendApi *be, const void *script, const std::string &fn) {
  if (be->abi_version < 4 || !be->script_function_params) {
    if (be->script_has_function(script, fn.c_str())) return {};
    return "ERR Function " + fn + " does not exist in the given script.";
  }
  int32_t kinds[3] = {GW_PARAM_OTHER, GW_PARAM_OTHER, GW_PARAM_OTHER};
  long long n = be->script_function_params(script, fn.c_str(), kinds, 3);
  if (n < 0) return "ERR Function " + fn + " does not exist in the given script.";
  if (n != 3)
    return "ERR Wrong number of inputs in function " + fn + ". Expected 3 but was " +
           std::to_string(n);
  if (kinds[0] != GW_PARAM_TENSOR_LIST || kinds[1] != GW_PARAM_STRING_LIST ||
      kinds[2] != GW_PARAM_STRING_LIST)
    return "ERR Wrong inputs type in function " + fn +
           ". Expected signature similar to: def " + fn +
           "(tensors: List[Tensor], keys: List[str], args: List[str])";
  return {};
}

}  // namespace

std::string create_model(const std::string &device, const std::string &tag, long long batchsize,
                         long long minbatchsize, long long minbatchtimeout, char *blob,
                         size_t bloblen, Model **out, bool optimize, bool keep_failed) {
  std::string err;
  const GwBackendApi *be = require_torch(&err);
  void *handle = nullptr;
  std::string queue = device_queue(device);
  char *e = be ? be->model_load(blob, bloblen, queue.c_str(), &handle) : nullptr;
  if (e) err = "ERR " + take_backend_error(e);
  if (!be || e) {
    if (keep_failed) {
      *out = failed_model(device, tag, batchsize, minbatchsize, minbatchtimeout, blob, bloblen,
                          optimize, err);
    } else {
      mem_free(blob);
    }
    return err;
  }
  Model *m = new Model();
  m->device = device;
  m->queue = queue;
  m->tag = tag;
  m->batchsize = batchsize;
  m->minbatchsize = minbatchsize;
  m->minbatchtimeout = minbatchtimeout;
  m->blob = blob;
  m->bloblen = bloblen;
  m->handle = handle;
  size_t nin = be->model_ninputs(handle);
  for (size_t i = 0; i < nin; i++) {
    const char *n = be->model_input_name(handle, i);
    m->inputs.push_back(n ? n : "");
  }
  m->noutputs = be->model_noutputs(handle);
  if (optimize) {
    m->optimize = true;
    if (be->abi_version < 2 || !be->model_optimize) {
      m->optimize_status = "the TORCH backend cannot optimise models";
    } else {
      char *why = be->model_optimize(handle);
      m->optimize_status = why ? take_backend_error(why) : "ok";
    }
    if (m->optimize_status != "ok")
      RedisModule_Log(nullptr, "warning", "model stored unoptimised: %s",
                      m->optimize_status.c_str());
  }
  m->weights = be->model_memory(handle);
  torch_loaded.models++;
  torch_loaded.model_bytes += static_cast<long long>(m->weights);
  *out = m;
  return {};
}

std::string script_unusable(const Script &s) {
  if (s.load_error.empty()) return {};
  return "ERR this script did not load and cannot run: " + s.load_error +
         " (store it again with AI.SCRIPTSTORE)";
}

std::string create_script(const std::string &device, const std::string &tag,
                          const std::string &source, const std::vector<std::string> &entry_points,
                          Script **out, bool keep_failed) {
  std::string err;
  const GwBackendApi *be = require_torch(&err);
  void *handle = nullptr;
  std::string queue = device_queue(device);
  if (be) {
    char *e = be->script_compile(source.data(), source.size(), queue.c_str(), &handle);
    if (e) err = "ERR " + take_backend_error(e);
  }
  for (size_t i = 0; handle && i < entry_points.size(); i++) {
    std::string why = check_entry_point(be, handle, entry_points[i]);
    if (!why.empty()) {
      be->script_free(handle);
      handle = nullptr;
      err = why;
    }
  }
  if (!handle && !keep_failed) return err;
  Script *s = new Script();
  s->device = device;
  s->queue = queue;
  s->tag = tag;
  s->source = source;
  s->entry_points = entry_points;
  s->handle = handle;
  if (!handle) s->load_error = err.compare(0, 4, "ERR ") == 0 ? err.substr(4) : err;
  if (handle) {
    s->weights = be->abi_version >= 5 ? be->script_memory(handle) : 0;
    torch_loaded.scripts++;
    torch_loaded.script_bytes += static_cast<long long>(s->weights);
  }
  *out = s;
  return err;
}

/* ==== Tensors ================================================================================= */

namespace {

/* argv[0] is the command, argv[1] the key. Every tensor invariant is checked (tensor.h) before
 * anything is allocated. `trusted`: the command is replayed from the AOF or comes from our master,
 * so its data is already held and is checked against the ceiling, not TENSOR_MAX_BYTES (a lower
 * limit must not drop keys on restart); a zero-filled tensor has no data and is always limited.
 * The tensor's bytes are also taken from *budget (see charge_headroom) before anything is
 * allocated. */
std::string parse_tensorset(const Args &a, bool trusted, Tensor **out, long long *budget = nullptr) {
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

/* argv[0] is the command, argv[1] the key. */
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

int TensorSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 4) return reply_arity(ctx, argv);
  Args a{argv, argc};
  if (!tensor_writable(ctx, argv[1])) return reply_err(ctx, kWrongType);
  Tensor *t = nullptr;
  bool trusted = RedisModule_GetContextFlags(ctx) &
                 (REDISMODULE_CTX_FLAGS_LOADING | REDISMODULE_CTX_FLAGS_REPLICATED);
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

}  // namespace

std::vector<RedisModuleString *> tensorset_args(RedisModuleCtx *ctx, const char *key, size_t keylen,
                                                const Tensor &t) {
  std::vector<RedisModuleString *> v;
  v.push_back(RedisModule_CreateString(ctx, key, keylen));
  const char *tn = dtype_info(t.dtype).name;
  v.push_back(RedisModule_CreateString(ctx, tn, strlen(tn)));
  for (int64_t d : t.shape) {
    std::string s = std::to_string(d);
    v.push_back(RedisModule_CreateString(ctx, s.data(), s.size()));
  }
  v.push_back(RedisModule_CreateString(ctx, "BLOB", 4));
  v.push_back(RedisModule_CreateString(ctx, t.data, t.nbytes));
  return v;
}

/* ==== Models ================================================================================== */

namespace {

/* RedisAI's backend names, in its numbering (also the RDB's); only TORCH exists here. */
int backend_code(const Args &a, int i) {
  const char *names[] = {"TF", "TFLITE", "TORCH", "ONNX"};
  for (int k = 0; k < 4; k++)
    if (a.is(i, names[k])) return k;
  return -1;
}
constexpr int kTF = 0, kTFLite = 1, kTorch = 2;

/* A count argument: an unsigned integer. */
bool unsigned_arg(const Args &a, int i, long long *v) { return a.ll(i, v) && *v >= 0; }

/* The total size of the blob's chunks argv[from..argc). */
size_t blob_size(const Args &a, int from) {
  size_t total = 0;
  for (int j = from; j < a.argc; j++) {
    size_t n;
    RedisModule_StringPtrLen(a.argv[j], &n);
    total += n;
  }
  return total;
}

/* The chunks concatenated into one mem_alloc'd buffer of *len bytes. */
char *concat_blob(const Args &a, int from, size_t *len) {
  size_t total = blob_size(a, from);
  char *blob = static_cast<char *>(mem_alloc(total ? total : 1));
  size_t off = 0;
  for (int j = from; j < a.argc; j++) {
    size_t n;
    const char *p = RedisModule_StringPtrLen(a.argv[j], &n);
    memcpy(blob + off, p, n);
    off += n;
  }
  *len = total;
  return blob;
}

/* What both store commands parse before the model is built. */
struct ModelArgs {
  int backend = kTorch;
  std::string device, tag;
  long long batchsize = 0, minbatchsize = 0, minbatchtimeout = 0;
  bool optimize = false;
  int blob_from = 0; /* first blob argument */
  /* Replayed from the AOF or sent by our master: the model is data this server already holds,
   * so one the backend cannot load (another libtorch, a device this host lacks) is kept as a
   * model that reports why (Model::load_error) rather than dropped; so is a bad device. */
  bool trusted = false;
};

/* AI.MODELSTORE key backend device [TAG t] [BATCHSIZE n] [MINBATCHSIZE m] [MINBATCHTIMEOUT ms]
 *   [OPTIMIZE] BLOB chunk..., checked in RedisAI 1.2's order. OPTIMIZE is a groundwatch
 *   extension RedisAI clients never send: freeze and optimise the loaded module for inference
 *   (see create_model). */
std::string parse_modelstore(const Args &a, ModelArgs *m) {
  if (a.argc < 6) return wrong_arity(a);
  m->backend = backend_code(a, 2);
  if (m->backend < 0) return "ERR unsupported backend";
  m->device = a.str(3);
  if (!valid_device(m->device) && !m->trusted) return "ERR Invalid DEVICE";
  int i = 4;
  if (a.is(i, "TAG")) {
    if (i + 1 >= a.argc) return "ERR Insufficient arguments, missing model BLOB";
    m->tag = a.str(i + 1);
    i += 2;
  }
  if (a.is(i, "BATCHSIZE")) {
    if (!unsigned_arg(a, i + 1, &m->batchsize)) return "ERR Invalid argument for BATCHSIZE";
    i += 2;
  }
  if (a.is(i, "MINBATCHSIZE")) {
    if (!unsigned_arg(a, i + 1, &m->minbatchsize)) return "ERR Invalid argument for MINBATCHSIZE";
    if (m->batchsize == 0 && m->minbatchsize > 0)
      return "ERR MINBATCHSIZE specified without BATCHSIZE";
    i += 2;
  }
  if (a.is(i, "MINBATCHTIMEOUT")) {
    if (!unsigned_arg(a, i + 1, &m->minbatchtimeout))
      return "ERR Invalid argument for MINBATCHTIMEOUT";
    if (m->minbatchsize == 0 && m->minbatchtimeout > 0)
      return "ERR MINBATCHTIMEOUT specified without MINBATCHSIZE";
    i += 2;
  }
  if (a.is(i, "OPTIMIZE")) {
    m->optimize = true;
    i++;
  }
  if (i >= a.argc) return "ERR Insufficient arguments, missing model BLOB";
  if (m->backend == kTF) {
    /* TF's INPUTS/OUTPUTS node lists: a TF model cannot be built here anyway. */
    while (i < a.argc && !a.is(i, "BLOB")) i++;
  } else if (a.is(i, "INPUTS")) {
    return "ERR INPUTS argument should not be specified for this backend";
  } else if (a.is(i, "OUTPUTS")) {
    return "ERR OUTPUTS argument should not be specified for this backend";
  }
  if (!a.is(i, "BLOB")) return "ERR Invalid argument, expected BLOB";
  if (i + 1 >= a.argc) return "ERR Insufficient arguments, missing model BLOB";
  m->blob_from = i + 1;
  return {};
}

/* AI.MODELSET key backend device [TAG t] [BATCHSIZE n [MINBATCHSIZE m [MINBATCHTIMEOUT ms]]]
 *   [INPUTS name... OUTPUTS name...] BLOB blob (deprecated), checked as RedisAI 1.2 did: every
 *   parse check whatever the backend, a looser device rule, the TF node lists. */
std::string parse_modelset(const Args &a, ModelArgs *m) {
  if (a.argc < 4) return wrong_arity(a);
  m->backend = backend_code(a, 2);
  if (m->backend < 0) return "ERR unsupported backend";
  m->device = a.str(3);
  const char *keywords[] = {"INPUTS",       "OUTPUTS",         "TAG", "BATCHSIZE",
                            "MINBATCHSIZE", "MINBATCHTIMEOUT", "BLOB"};
  bool keyword = false;
  for (const char *kw : keywords) keyword = keyword || a.is(3, kw);
  if (m->device.size() > 10 || keyword) return "ERR Invalid DEVICE";
  int i = 4;
  if (a.is(i, "TAG")) {
    if (i + 1 >= a.argc) return "ERR Insufficient arguments, missing model BLOB";
    m->tag = a.str(i + 1);
    i += 2;
  }
  if (a.is(i, "BATCHSIZE")) {
    if (m->backend == kTFLite) return "ERR Auto-batching not supported by the TFLITE backend";
    if (!unsigned_arg(a, i + 1, &m->batchsize)) return "ERR Invalid argument for BATCHSIZE";
    i += 2;
  }
  if (a.is(i, "MINBATCHSIZE")) {
    if (m->batchsize == 0) return "ERR MINBATCHSIZE specified without BATCHSIZE";
    if (!unsigned_arg(a, i + 1, &m->minbatchsize)) return "ERR Invalid argument for MINBATCHSIZE";
    i += 2;
  }
  if (a.is(i, "MINBATCHTIMEOUT")) {
    if (m->batchsize == 0) return "ERR MINBATCHTIMEOUT specified without BATCHSIZE";
    if (m->minbatchsize == 0) return "ERR MINBATCHTIMEOUT specified without MINBATCHSIZE";
    if (!unsigned_arg(a, i + 1, &m->minbatchtimeout))
      return "ERR Invalid argument for MINBATCHTIMEOUT";
    i += 2;
  }
  int blob = i;
  while (blob < a.argc && !a.is(blob, "BLOB")) blob++;
  if (blob + 1 >= a.argc) return "ERR Insufficient arguments, missing model BLOB";
  if (m->backend == kTF) {
    /* TF needs its node lists; other backends' were ignored. */
    if (blob == i) return "ERR Insufficient arguments, INPUTS and OUTPUTS not specified";
    if (!a.is(i, "INPUTS")) return "ERR INPUTS not specified";
    bool outputs = false;
    for (int j = i + 1; j < blob; j++) outputs = outputs || a.is(j, "OUTPUTS");
    if (!outputs) return "ERR OUTPUTS not specified";
  }
  if (blob + 2 != a.argc) return "ERR Invalid argument, expected BLOB";
  m->blob_from = blob + 1;
  return {};
}

int model_store(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, bool deprecated) {
  Args a{argv, argc};
  ModelArgs m;
  m.trusted = RedisModule_GetContextFlags(ctx) &
              (REDISMODULE_CTX_FLAGS_LOADING | REDISMODULE_CTX_FLAGS_REPLICATED);
  std::string err = deprecated ? parse_modelset(a, &m) : parse_modelstore(a, &m);
  if (!err.empty()) return reply_err(ctx, err);
  /* A parse that succeeds for a backend this build does not have. */
  if (m.backend != kTorch) return reply_err(ctx, "ERR Could not load backend");
  std::string bad_device;
  if (!valid_device(m.device)) { /* MODELSET's looser rule let it through, or it is trusted */
    if (!m.trusted) return reply_err(ctx, "ERR Invalid DEVICE");
    bad_device = "ERR Invalid DEVICE " + m.device;
  }
  {
    long long headroom = memory_headroom(ctx);
    std::string oom = charge_headroom(&headroom, blob_size(a, m.blob_from));
    if (!oom.empty()) return reply_err(ctx, oom);
  }
  size_t total = 0;
  char *blob = concat_blob(a, m.blob_from, &total);
  Model *model = nullptr;
  if (bad_device.empty()) {
    err = create_model(m.device, m.tag, m.batchsize, m.minbatchsize, m.minbatchtimeout, blob,
                       total, &model, m.optimize, m.trusted);
  } else {
    err = bad_device;
    model = failed_model(m.device, m.tag, m.batchsize, m.minbatchsize, m.minbatchtimeout, blob,
                         total, m.optimize, err);
  }
  if (!err.empty() && !model) return reply_err(ctx, err);
  if (!err.empty())
    RedisModule_Log(ctx, "warning", "model kept without loading it: %s", err.c_str());
  /* As RedisAI: the key's type is checked last, once the model is built. */
  Model *existing = nullptr;
  if (lookup(ctx, argv[1], ModelType, &existing) == Lookup::WrongType) {
    model->release();
    return reply_err(ctx, kWrongType);
  }
  set_value(ctx, argv[1], ModelType, model);
  RedisModule_ReplicateVerbatim(ctx);
  return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

int ModelStore_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return model_store(ctx, argv, argc, false);
}
int ModelSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return model_store(ctx, argv, argc, true);
}

/* optimized: 1 when the passes ran, 0 when the model runs as loaded; optimize_status: "ok" or
 * the reason. Only for models stored with OPTIMIZE. */
void reply_optimize_meta(RedisModuleCtx *ctx, const Model &m) {
  RedisModule_ReplyWithSimpleString(ctx, "optimized");
  RedisModule_ReplyWithLongLong(ctx, m.optimize_status == "ok" ? 1 : 0);
  RedisModule_ReplyWithSimpleString(ctx, "optimize_status");
  RedisModule_ReplyWithStringBuffer(ctx, m.optimize_status.data(), m.optimize_status.size());
}

/* load_error: why a loaded model could not be made runnable; only for such models, after the
 * standard entries (clients read the reply as a flat key/value list). */
void reply_load_error(RedisModuleCtx *ctx, const Model &m) {
  if (m.load_error.empty()) return;
  RedisModule_ReplyWithSimpleString(ctx, "load_error");
  RedisModule_ReplyWithStringBuffer(ctx, m.load_error.data(), m.load_error.size());
}

void reply_model_blob(RedisModuleCtx *ctx, const Model &m) {
  size_t chunk = static_cast<size_t>(config.model_chunk_size);
  if (m.bloblen <= chunk) {
    RedisModule_ReplyWithStringBuffer(ctx, m.blob, m.bloblen);
    return;
  }
  size_t n = m.bloblen / chunk + 1;
  RedisModule_ReplyWithArray(ctx, static_cast<long>(n));
  for (size_t i = 0; i < n; i++) {
    size_t off = i * chunk;
    size_t len = m.bloblen - off < chunk ? m.bloblen - off : chunk;
    RedisModule_ReplyWithStringBuffer(ctx, m.blob + off, len);
  }
}

// AI.MODELGET / AI.SCRIPTGET options: META and the data keyword (BLOB or SOURCE), in any order;
// neither means both. False when an argument is neither (the caller replies the error).
bool parse_get_options(const Args &a, const char *data_kw, bool *meta, bool *data) {
  *meta = *data = false;
  for (int i = 2; i < a.argc; i++) {
    if (a.is(i, "META")) {
      *meta = true;
    } else if (a.is(i, data_kw)) {
      *data = true;
    } else {
      return false;
    }
  }
  if (!*meta && !*data) *meta = *data = true;
  return true;
}

int ModelGet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 2 || argc > 4) return reply_arity(ctx, argv);
  bool meta, blob;
  if (!parse_get_options(Args{argv, argc}, "BLOB", &meta, &blob)) {
    return reply_err(ctx, "ERR unsupported data format");
  }
  Model *m = nullptr;
  std::string err = get_model(ctx, argv[1], &m);
  if (!err.empty()) return reply_err(ctx, err);
  if (!meta) {
    reply_model_blob(ctx, *m);
    return REDISMODULE_OK;
  }
  /* Models stored with OPTIMIZE add two pairs after RedisAI's 16 (clients read the reply as a
   * flat key/value list); other models keep RedisAI's exact shape. */
  RedisModule_ReplyWithArray(ctx, (blob ? 18 : 16) + (m->optimize ? 4 : 0) +
                                      (m->load_error.empty() ? 0 : 2));
  RedisModule_ReplyWithSimpleString(ctx, "backend");
  RedisModule_ReplyWithSimpleString(ctx, "TORCH");
  RedisModule_ReplyWithSimpleString(ctx, "device");
  RedisModule_ReplyWithSimpleString(ctx, m->device.c_str());
  RedisModule_ReplyWithSimpleString(ctx, "tag");
  RedisModule_ReplyWithStringBuffer(ctx, m->tag.data(), m->tag.size());
  RedisModule_ReplyWithSimpleString(ctx, "batchsize");
  RedisModule_ReplyWithLongLong(ctx, m->batchsize);
  RedisModule_ReplyWithSimpleString(ctx, "minbatchsize");
  RedisModule_ReplyWithLongLong(ctx, m->minbatchsize);
  RedisModule_ReplyWithSimpleString(ctx, "inputs");
  RedisModule_ReplyWithArray(ctx, static_cast<long>(m->inputs.size()));
  for (const std::string &s : m->inputs) RedisModule_ReplyWithStringBuffer(ctx, s.data(), s.size());
  RedisModule_ReplyWithSimpleString(ctx, "outputs");
  RedisModule_ReplyWithArray(ctx, static_cast<long>(m->noutputs));
  for (size_t i = 0; i < m->noutputs; i++) RedisModule_ReplyWithStringBuffer(ctx, "", 0);
  RedisModule_ReplyWithSimpleString(ctx, "minbatchtimeout");
  RedisModule_ReplyWithLongLong(ctx, m->minbatchtimeout);
  if (m->optimize) reply_optimize_meta(ctx, *m);
  reply_load_error(ctx, *m);
  if (blob) {
    RedisModule_ReplyWithSimpleString(ctx, "blob");
    reply_model_blob(ctx, *m);
  }
  return REDISMODULE_OK;
}

int ModelDel_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return reply_arity(ctx, argv);
  Model *m = nullptr;
  std::string err = get_model(ctx, argv[1], &m);
  if (!err.empty()) return reply_err(ctx, err);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_WRITE);
  RedisModule_DeleteKey(key);
  RedisModule_CloseKey(key);
  RedisModule_ReplicateVerbatim(ctx);
  return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

/* ==== Scripts ================================================================================= */

/* AI.SCRIPTSTORE key device [TAG t] ENTRY_POINTS n fn... SOURCE src;
 * deprecated = AI.SCRIPTSET key device [TAG t] SOURCE src. */
int script_store(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, bool deprecated) {
  /* The smallest SCRIPTSTORE: key device ENTRY_POINTS 1 fn SOURCE src. */
  if (argc < (deprecated ? 5 : 8)) return reply_arity(ctx, argv);
  Args a{argv, argc};
  /* As model_store: replayed or replicated scripts that do not compile here are kept. */
  bool trusted = RedisModule_GetContextFlags(ctx) &
                 (REDISMODULE_CTX_FLAGS_LOADING | REDISMODULE_CTX_FLAGS_REPLICATED);
  std::string device = a.str(2);
  if (!valid_device(device)) return reply_err(ctx, "ERR Invalid DEVICE");
  int i = 3;
  std::string tag;
  if (a.is(i, "TAG")) {
    if (i + 1 >= argc) return reply_err(ctx, "ERR Insufficient arguments, missing script SOURCE");
    tag = a.str(i + 1);
    i += 2;
  }
  std::vector<std::string> entry_points;
  if (!deprecated) {
    if (!a.is(i, "ENTRY_POINTS"))
      return reply_err(ctx, "ERR Insufficient arguments, missing script entry points");
    long long n;
    if (!a.ll(i + 1, &n))
      return reply_err(ctx, "ERR Non numeric entry points number provided to AI.SCRIPTSTORE command");
    if (n <= 0 || n > argc - i - 2)
      return reply_err(ctx, "ERR Insufficient arguments, missing script entry points");
    for (long long k = 0; k < n; k++) entry_points.push_back(a.str(i + 2 + static_cast<int>(k)));
    i += 2 + static_cast<int>(n);
  }
  if (!a.is(i, "SOURCE") || i + 1 >= argc)
    return reply_err(ctx, "ERR Insufficient arguments, missing script SOURCE");
  if (i + 2 != argc) return reply_err(ctx, "ERR Invalid argument, a single SOURCE string is expected");
  std::string source = a.str(i + 1);
  {
    Script *existing = nullptr;
    if (lookup(ctx, argv[1], ScriptType, &existing) == Lookup::WrongType)
      return reply_err(ctx, kWrongType);
  }
  Script *s = nullptr;
  std::string err = create_script(device, tag, source, entry_points, &s, trusted);
  if (!err.empty() && !s) return reply_err(ctx, err);
  if (!err.empty())
    RedisModule_Log(ctx, "warning", "script kept without compiling it: %s", err.c_str());
  set_value(ctx, argv[1], ScriptType, s);
  RedisModule_ReplicateVerbatim(ctx);
  return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

int ScriptStore_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return script_store(ctx, argv, argc, false);
}
int ScriptSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return script_store(ctx, argv, argc, true);
}

int ScriptGet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 2 || argc > 4) return reply_arity(ctx, argv);
  bool meta, source;
  if (!parse_get_options(Args{argv, argc}, "SOURCE", &meta, &source)) {
    return reply_err(ctx, "ERR unsupported data format");
  }
  Script *s = nullptr;
  std::string err = get_script(ctx, argv[1], &s);
  if (!err.empty()) return reply_err(ctx, err);
  if (!meta) return RedisModule_ReplyWithStringBuffer(ctx, s->source.data(), s->source.size());
  RedisModule_ReplyWithArray(ctx, (source ? 8 : 6) + (s->load_error.empty() ? 0 : 2));
  RedisModule_ReplyWithSimpleString(ctx, "device");
  RedisModule_ReplyWithSimpleString(ctx, s->device.c_str());
  RedisModule_ReplyWithSimpleString(ctx, "tag");
  RedisModule_ReplyWithStringBuffer(ctx, s->tag.data(), s->tag.size());
  RedisModule_ReplyWithSimpleString(ctx, "Entry Points");
  RedisModule_ReplyWithArray(ctx, static_cast<long>(s->entry_points.size()));
  for (const std::string &e : s->entry_points) RedisModule_ReplyWithStringBuffer(ctx, e.data(), e.size());
  if (!s->load_error.empty()) {
    /* After the standard entries, as for models. */
    RedisModule_ReplyWithSimpleString(ctx, "load_error");
    RedisModule_ReplyWithStringBuffer(ctx, s->load_error.data(), s->load_error.size());
  }
  if (source) {
    RedisModule_ReplyWithSimpleString(ctx, "source");
    RedisModule_ReplyWithStringBuffer(ctx, s->source.data(), s->source.size());
  }
  return REDISMODULE_OK;
}

int ScriptDel_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return reply_arity(ctx, argv);
  Script *s = nullptr;
  std::string err = get_script(ctx, argv[1], &s);
  if (!err.empty()) return reply_err(ctx, err);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_WRITE);
  RedisModule_DeleteKey(key);
  RedisModule_CloseKey(key);
  RedisModule_ReplicateVerbatim(ctx);
  return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

/* ==== Execute-op parsing ======================================================================
 * Shared by the stand-alone commands and DAG ops. argv[0] is the op's command name. In a DAG
 * the tensor names are the DAG's, so existence is checked by the caller. */

bool parse_timeout(const Args &a, int i, long long *timeout) {
  return a.ll(i, timeout) && *timeout > 0;
}

std::string parse_modelexecute(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                               long long *timeout) {
  if (a.argc < 8) return wrong_arity(a);
  Model *model = nullptr;
  std::string err = get_model(ctx, a.argv[1], &model);
  if (err.empty()) err = model_unusable(*model);
  if (!err.empty()) return err;
  if (!a.is(2, "INPUTS")) return "ERR INPUTS not specified";
  long long nin;
  if (!a.ll(3, &nin)) return "ERR Invalid argument for input_count";
  if (nin <= 0) return "ERR Input count must be a positive integer";
  /* As RedisAI: the count is checked against the model before against the arguments. */
  if (static_cast<size_t>(nin) != model->inputs.size())
    return "ERR Number of keys given as INPUTS here does not match model definition";
  int i = 4;
  if (nin > a.argc - i)
    return "ERR number of input keys to AI.MODELEXECUTE command does not match the number of given "
           "arguments";
  for (long long k = 0; k < nin; k++) op->inputs.push_back(a.str(i++));
  if (!a.is(i, "OUTPUTS")) return "ERR OUTPUTS not specified";
  long long nout;
  if (!a.ll(i + 1, &nout)) return "ERR Invalid argument for output_count";
  if (nout <= 0) return "ERR Output count must be a positive integer";
  if (model->noutputs > 0 && static_cast<size_t>(nout) != model->noutputs)
    return "ERR Number of keys given as OUTPUTS here does not match model definition";
  i += 2;
  if (nout > a.argc - i)
    return "ERR number of output keys to AI.MODELEXECUTE command does not match the number of "
           "given arguments";
  for (long long k = 0; k < nout; k++) op->outputs.push_back(a.str(i++));
  if (i < a.argc) {
    if (!a.is(i, "TIMEOUT")) return "ERR Invalid argument: " + a.str(i);
    if (in_dag) return "ERR TIMEOUT not allowed within a DAG command";
    if (!parse_timeout(a, i + 1, timeout)) return "ERR Invalid value for TIMEOUT";
    if (i + 2 != a.argc) return "ERR Invalid argument: " + a.str(i + 2 < a.argc ? i + 2 : i);
  }
  op->kind = OpKind::ModelExecute;
  op->model = model->retain();
  op->device = model->queue;
  return {};
}

/* AI.MODELRUN key [TIMEOUT t] INPUTS k... OUTPUTS k... */
std::string parse_modelrun(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                           long long *timeout) {
  if (a.argc < 6) return wrong_arity(a);
  Model *model = nullptr;
  std::string err = get_model(ctx, a.argv[1], &model);
  if (err.empty()) err = model_unusable(*model);
  if (!err.empty()) return err;
  int i = 2;
  if (a.is(i, "TIMEOUT")) {
    if (in_dag) return "ERR TIMEOUT not allowed within a DAG command";
    if (!parse_timeout(a, i + 1, timeout)) return "ERR Invalid value for TIMEOUT";
    i += 2;
  }
  if (!a.is(i, "INPUTS")) return "ERR INPUTS not specified";
  for (i++; i < a.argc && !a.is(i, "OUTPUTS"); i++) op->inputs.push_back(a.str(i));
  if (!a.is(i, "OUTPUTS")) return "ERR OUTPUTS not specified";
  for (i++; i < a.argc; i++) op->outputs.push_back(a.str(i));
  if (op->inputs.size() != model->inputs.size())
    return "ERR Number of keys given as INPUTS here does not match model definition";
  if (op->outputs.empty() || (model->noutputs > 0 && op->outputs.size() != model->noutputs))
    return "ERR Number of keys given as OUTPUTS here does not match model definition";
  op->kind = OpKind::ModelExecute;
  op->model = model->retain();
  op->device = model->queue;
  return {};
}

/* AI.SCRIPTEXECUTE key fn [KEYS n k...] [INPUTS n t...] [ARGS n a...] [OUTPUTS n o...] [TIMEOUT ms]
 * Error texts are RedisAI 1.2's, so clients matching on them keep working. */
std::string parse_scriptexecute(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                                long long *timeout) {
  if (a.argc < 3) return wrong_arity(a);
  Script *script = nullptr;
  std::string err = get_script(ctx, a.argv[1], &script);
  if (err.empty()) err = script_unusable(*script);
  if (!err.empty()) return err;
  op->fn = a.str(2);
  /* Outside a DAG the script needs tensors or keys to work on, given first. */
  if (!in_dag && !a.is(3, "KEYS") && !a.is(3, "INPUTS"))
    return "ERR KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command";
  bool seen[4] = {false, false, false, false};
  const char *kws[4] = {"KEYS", "INPUTS", "ARGS", "OUTPUTS"};
  const char *lower[4] = {"keys", "inputs", "args", "outputs"};
  std::vector<std::string> *lists[4] = {&op->keys, &op->inputs, &op->args, &op->outputs};
  int i = 3;
  while (i < a.argc) {
    int which = -1;
    for (int k = 0; k < 4; k++)
      if (a.is(i, kws[k])) which = k;
    if (which == 0) {
      /* KEYS gets its own checks (RedisAI validated them before anything else). */
      if (seen[0]) return "ERR Already Encountered KEYS scope in AI.SCRIPTEXECUTE command";
      long long n;
      if (i + 2 >= a.argc) return "ERR Missing arguments after KEYS keyword";
      if (!a.ll(i + 1, &n) || n <= 0) return "ERR Invalid or negative value found in number of KEYS";
      if (n > a.argc - i - 2)
        return "ERR Number of pre declared KEYS to be used in the command does not match the "
               "number of given arguments";
    }
    if (which >= 0) {
      if (seen[which])
        return std::string("ERR Already Encountered ") + kws[which] + " scope in AI.SCRIPTEXECUTE command";
      seen[which] = true;
      if (i + 1 >= a.argc) return "ERR Invalid arguments provided to AI.SCRIPTEXECUTE";
      long long n;
      if (!a.ll(i + 1, &n) || n < 0)
        return std::string("ERR Invalid argument for ") + (which == 2 ? "keys" : lower[which]) +
               " count in AI.SCRIPTEXECUTE";
      if (n > a.argc - i - 2)
        return std::string("ERR number of ") + lower[which] +
               " to AI.SCRIPTEXECUTE command does not match the number of given arguments";
      for (long long k = 0; k < n; k++) lists[which]->push_back(a.str(i + 2 + static_cast<int>(k)));
      i += 2 + static_cast<int>(n);
    } else if (a.is(i, "TIMEOUT")) {
      if (i + 1 >= a.argc) return "ERR No value provided for TIMEOUT in AI.SCRIPTEXECUTE";
      if (!parse_timeout(a, i + 1, timeout)) return "ERR Invalid value for TIMEOUT";
      if (in_dag) return "ERR TIMEOUT not allowed within a DAG command";
      if (i + 2 != a.argc) return "ERR Encountered problem parsing AI.SCRIPTEXECUTE";
      i += 2;
    } else {
      return "ERR Invalid AI.SCRIPTEXECUTE command. Unexpected argument: " + a.str(i);
    }
  }
  /* As RedisAI: the function is looked up when the script runs ("Function does not exist"),
   * and one that is not a declared entry point runs in best-effort mode (see script_run). */
  op->kind = OpKind::ScriptExecute;
  op->script = script->retain();
  op->device = script->queue;
  return {};
}

/* AI.SCRIPTRUN key fn [TIMEOUT t] INPUTS k... [$ k...] OUTPUTS k... */
std::string parse_scriptrun(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                            long long *timeout) {
  if (a.argc < 4) return wrong_arity(a);
  Script *script = nullptr;
  std::string err = get_script(ctx, a.argv[1], &script);
  if (err.empty()) err = script_unusable(*script);
  if (!err.empty()) return err;
  op->fn = a.str(2);
  /* Every argument is parsed before any tensor is fetched; RedisAI's texts, typos included. */
  enum { None, Inputs, Outputs } section = None;
  bool seen_inputs = false, seen_outputs = false, seen_timeout = false, seen_variadic = false;
  for (int i = 3; i < a.argc; i++) {
    if (a.is(i, "TIMEOUT")) {
      if (seen_timeout) return "ERR Already encountered an TIMEOUT section in SCRIPTRUN";
      if (in_dag) return "ERR TIMEOUT not allowed within a DAG command";
      if (!parse_timeout(a, i + 1, timeout)) return "ERR Invalid value for TIMEOUT";
      seen_timeout = true;
      section = None;
      i++;
    } else if (a.is(i, "INPUTS")) {
      if (section == Inputs) return "ERR Already encountered an INPUTS keyword in SCRIPTRUN";
      if (seen_inputs || seen_outputs) return "ERR Already encountered an INPUTS section in SCRIPTRUN";
      seen_inputs = true;
      section = Inputs;
    } else if (a.is(i, "OUTPUTS")) {
      if (seen_outputs) return "ERR Already encountered an OUTPUTS keyword in SCRIPTRUN";
      seen_outputs = true;
      section = Outputs;
    } else if (a.is(i, "$")) {
      if (section != Inputs)
        return "ERR Encountered a variable size list of tensors outside of input section";
      if (seen_variadic) return "ERR Already encountered a variable size list of tensors";
      seen_variadic = true; /* the binding is positional: the marker itself carries nothing */
    } else if (section == Inputs) {
      op->inputs.push_back(a.str(i));
    } else if (section == Outputs) {
      op->outputs.push_back(a.str(i));
    } else {
      return "ERR Unrecongnized parameter to SCRIPTRUN";
    }
  }
  if (!seen_inputs) return "ERR INPUTS not specified";
  op->kind = OpKind::ScriptExecute;
  op->script = script->retain();
  op->device = script->queue;
  return {};
}

/* ==== Blocking and unblocking ================================================================= */

void persist_outputs(RedisModuleCtx *ctx, Run *run) {
  for (const std::string &name : run->persist) {
    auto it = run->tensors.find(name);
    if (it == run->tensors.end()) continue;
    RedisModuleString *key = RedisModule_CreateString(ctx, name.data(), name.size());
    set_value(ctx, key, TensorType, it->second->retain());
    RedisModule_FreeString(ctx, key);
    std::vector<RedisModuleString *> args = tensorset_args(ctx, name.data(), name.size(), *it->second);
    RedisModule_Replicate(ctx, "AI.TENSORSET", "v", args.data(), args.size());
    for (RedisModuleString *s : args) RedisModule_FreeString(ctx, s);
  }
}

int Run_Reply(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  (void)argc;
  Run *run = static_cast<Run *>(RedisModule_GetBlockedClientPrivateData(ctx));
  if (run->timed_out) return RedisModule_ReplyWithSimpleString(ctx, "TIMEDOUT");
  if (!run->fatal.empty()) return reply_err(ctx, run->fatal);
  if (!run->failed) persist_outputs(ctx, run);
  if (run->kind != RunKind::Dag) {
    if (run->failed) return reply_err(ctx, run->ops[0].error);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
  }
  RedisModule_ReplyWithArray(ctx, static_cast<long>(run->ops.size()));
  for (const Op &op : run->ops) {
    if (op.done) {
      if (op.kind == OpKind::TensorGet) {
        reply_tensor(ctx, *op.result, op.meta, op.format);
      } else {
        RedisModule_ReplyWithSimpleString(ctx, "OK");
      }
    } else if (!op.error.empty()) {
      reply_err(ctx, op.error);
    } else {
      RedisModule_ReplyWithSimpleString(ctx, "NA");
    }
  }
  return REDISMODULE_OK;
}

void Run_Free(RedisModuleCtx *ctx, void *privdata) {
  (void)ctx;
  delete static_cast<Run *>(privdata);
}

int block_and_submit(RedisModuleCtx *ctx, Run *run) {
  run->bc = RedisModule_BlockClient(ctx, Run_Reply, nullptr, Run_Free, 0);
  submit(run);
  return REDISMODULE_OK;
}

/* ==== Key positions for cluster routing ======================================================= */

void key_at(RedisModuleCtx *ctx, int pos, int argc) {
  if (pos > 0 && pos < argc) RedisModule_KeyAtPos(ctx, pos);
}

/* Reports the keys of one execute op whose arguments start at `base` (its command name).
 * Inside a DAG only the model/script key and a script's KEYS are keyspace keys: TENSORSET and
 * TENSORGET names and the ops' INPUTS/OUTPUTS are local to the DAG (LOAD/PERSIST name the ones
 * that touch the keyspace), and reporting them would make a DAG that uses the plain names `in`
 * and `out` CROSSSLOT on a cluster and subject them to ACL key patterns. */
void op_keys(RedisModuleCtx *ctx, const Args &all, int base, int end, bool dag) {
  Args a = all.sub(base, end);
  int argc = all.argc;
  bool model = a.is(0, "AI.MODELEXECUTE") || a.is(0, "AI.MODELRUN");
  bool script = a.is(0, "AI.SCRIPTEXECUTE") || a.is(0, "AI.SCRIPTRUN");
  if (!model && !script) return;
  key_at(ctx, base + 1, argc);
  bool legacy = a.is(0, "AI.MODELRUN") || a.is(0, "AI.SCRIPTRUN");
  if (legacy) {
    if (dag) return;
    bool in_list = false;
    for (int i = 2; i < a.argc; i++) {
      if (a.is(i, "TIMEOUT")) {
        i++;
        continue;
      }
      if (a.is(i, "INPUTS") || a.is(i, "OUTPUTS")) {
        in_list = true;
        continue;
      }
      if (in_list && !a.is(i, "$")) key_at(ctx, base + i, argc);
    }
    return;
  }
  for (int i = 2; i < a.argc; i++) {
    bool tensors = a.is(i, "INPUTS") || a.is(i, "OUTPUTS");
    bool keys = a.is(i, "KEYS");
    if (tensors || keys || a.is(i, "ARGS")) {
      long long n;
      /* Counts beyond the arguments end the scan (and keep the index arithmetic in range). */
      if (!a.ll(i + 1, &n) || n < 0 || n > a.argc) return;
      for (long long k = 0; k < n && i + 2 + k < a.argc; k++)
        if (keys || (tensors && !dag)) key_at(ctx, base + i + 2 + static_cast<int>(k), argc);
      i += 1 + static_cast<int>(n);
    }
  }
}

void dag_keys(RedisModuleCtx *ctx, const Args &a) {
  int i = 1;
  while (i < a.argc && !a.is(i, "|>")) {
    if (a.is(i, "LOAD") || a.is(i, "PERSIST")) {
      long long n;
      if (!a.ll(i + 1, &n) || n < 0 || n > a.argc) return;
      for (long long k = 0; k < n && i + 2 + k < a.argc; k++) key_at(ctx, i + 2 + static_cast<int>(k), a.argc);
      i += 2 + static_cast<int>(n);
    } else if (a.is(i, "ROUTING")) {
      key_at(ctx, i + 1, a.argc);
      i += 2;
    } else {
      i++;
    }
  }
  while (i < a.argc) {
    int start = i + 1;
    int end = start;
    while (end < a.argc && !a.is(end, "|>")) end++;
    if (end > start) op_keys(ctx, a, start, end, true);
    i = end;
  }
}

/* ==== Execute commands ======================================================================== */

/* Loads the named tensors of the keyspace into the run (a reference each, taken under the GIL
 * so a later DEL cannot pull them from under a worker). */
std::string load_inputs(RedisModuleCtx *ctx, Run *run, const std::vector<std::string> &names) {
  for (const std::string &n : names) {
    if (run->tensors.count(n)) continue;
    RedisModuleString *k = RedisModule_CreateString(ctx, n.data(), n.size());
    Tensor *t = nullptr;
    std::string err = get_tensor(ctx, k, &t);
    RedisModule_FreeString(ctx, k);
    if (!err.empty()) return err;
    run->tensors.emplace(n, t->retain());
  }
  return {};
}

std::string check_outputs(RedisModuleCtx *ctx, const std::vector<std::string> &names) {
  for (const std::string &n : names) {
    RedisModuleString *k = RedisModule_CreateString(ctx, n.data(), n.size());
    bool ok = tensor_writable(ctx, k);
    RedisModule_FreeString(ctx, k);
    if (!ok) return kWrongType;
  }
  return {};
}

typedef std::string (*OpParser)(RedisModuleCtx *, const Args &, bool, Op *, long long *);

int single_execute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, OpParser parser,
                   RunKind kind) {
  Args a{argv, argc};
  if (RedisModule_IsKeysPositionRequest(ctx)) {
    op_keys(ctx, a, 0, argc, false);
    return REDISMODULE_OK;
  }
  if (!can_block_or_reply(ctx)) return REDISMODULE_OK;
  Run *run = new Run();
  run->kind = kind;
  capture_user(ctx, run);
  run->mem_budget = memory_headroom(ctx);
  run->ops.emplace_back();
  Op &op = run->ops.back();
  long long timeout = 0;
  std::string err = parser(ctx, a, false, &op, &timeout);
  if (err.empty()) err = load_inputs(ctx, run, op.inputs);
  if (err.empty()) err = check_outputs(ctx, op.outputs);
  if (!err.empty()) {
    delete run;
    return reply_err(ctx, err);
  }
  run->timeout_ms = timeout;
  run->persist = op.outputs;
  return block_and_submit(ctx, run);
}

int ModelExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_modelexecute, RunKind::ModelExecute);
}
int ModelRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_modelrun, RunKind::ModelExecute);
}
int ScriptExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_scriptexecute, RunKind::ScriptExecute);
}
int ScriptRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_scriptrun, RunKind::ScriptExecute);
}

/* ==== DAGs ==================================================================================== */

struct DagMode {
  bool readonly;
  bool legacy; /* AI.DAGRUN / AI.DAGRUN_RO */
};

std::string parse_dag(RedisModuleCtx *ctx, const Args &a, DagMode mode, Run *run) {
  /* Everything the DAG allocates counts against what is left under maxmemory: its TENSORSETs
   * here, its outputs and replies on the workers (run->mem_budget). */
  long long *budget = &run->mem_budget;
  /* The smallest DAG: AI.DAGEXECUTE LOAD 1 k |> AI.TENSORGET k */
  if (!mode.legacy && a.argc < 6)
    return std::string("ERR missing arguments for '") +
           (mode.readonly ? "AI.DAGEXECUTE_RO" : "AI.DAGEXECUTE") + "' command";
  std::set<std::string> names;
  std::set<std::string> persist;
  bool keyword = false;
  bool seen_load = false, seen_persist = false, seen_routing = false, seen_timeout = false;
  int i = 1;
  while (i < a.argc && !(a.is(i, "|>") && i < a.argc - 1)) {
    bool load = a.is(i, "LOAD") && !seen_load;
    if (load || (a.is(i, "PERSIST") && !seen_persist)) {
      const char *kw = load ? "LOAD" : "PERSIST";
      if (!load && mode.readonly) return "ERR PERSIST cannot be specified in a read-only DAG";
      if (a.argc - i < 3)
        return std::string("ERR missing arguments after ") + kw + " keyword in DAG command";
      long long n;
      if (!a.ll(i + 1, &n) || n <= 0)
        return std::string("ERR invalid or negative value found in number of keys to ") + kw;
      if (load) {
        /* As RedisAI: each key given is fetched (and may fail) before the count is compared
         * with the keys given, which end at the first |>. */
        long long k = 0;
        for (; k < n && i + 2 + k < a.argc && !a.is(i + 2 + static_cast<int>(k), "|>"); k++) {
          std::vector<std::string> key{a.str(i + 2 + static_cast<int>(k))};
          std::string err = load_inputs(ctx, run, key);
          if (!err.empty()) return err;
          names.insert(key[0]);
        }
        if (k < n)
          return "ERR number of keys to LOAD into DAG does not match the number of given "
                 "arguments";
        seen_load = true;
      } else {
        if (n > a.argc - i - 2)
          return "ERR number of keys to PERSIST after DAG execution does not match the number "
                 "of given arguments";
        std::vector<std::string> keys;
        for (long long k = 0; k < n; k++) keys.push_back(a.str(i + 2 + static_cast<int>(k)));
        for (const std::string &k : keys) {
          if (!persist.insert(k).second) return "ERR PERSIST keys must be unique";
          run->persist.push_back(k);
        }
        seen_persist = true;
      }
      i += 2 + static_cast<int>(n);
      keyword = true;
    } else if (a.is(i, "ROUTING") && !seen_routing) {
      if (i + 1 >= a.argc) return "ERR Missing ROUTING value";
      i += 2;
      keyword = seen_routing = true;
    } else if (a.is(i, "TIMEOUT") && !seen_timeout) {
      if (i + 1 >= a.argc) return "ERR No value provided for TIMEOUT";
      if (!parse_timeout(a, i + 1, &run->timeout_ms)) return "ERR Invalid value for TIMEOUT";
      i += 2;
      seen_timeout = true;
    } else {
      /* RedisAI's text, double space included. */
      return "ERR Invalid DAG command. Unexpected argument:  " + a.str(i);
    }
  }
  if (!keyword && !mode.legacy)
    return "ERR AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one out of "
           "ROUTING, LOAD, PERSIST keywords";
  if (i >= a.argc) return "ERR DAG is empty";
  while (i < a.argc) {
    int start = i + 1;
    int end = start;
    while (end < a.argc && !a.is(end, "|>")) end++;
    i = end;
    if (end == start) return "ERR Unsupported command within DAG";
    Args oa = a.sub(start, end);
    Op op;
    long long unused_timeout = 0;
    std::string err;
    if (oa.is(0, "AI.TENSORSET")) {
      Tensor *t = nullptr;
      err = parse_tensorset(oa, false, &t, budget);
      if (err.empty()) {
        op.kind = OpKind::TensorSet;
        op.name = oa.str(1);
        op.set_tensor = t;
        names.insert(op.name);
      }
    } else if (oa.is(0, "AI.TENSORGET")) {
      err = parse_tensorget(oa, &op.meta, &op.format);
      if (err.empty()) {
        op.kind = OpKind::TensorGet;
        op.name = oa.str(1);
        if (!names.count(op.name)) err = "ERR INPUT key cannot be found in DAG";
      }
    } else if (oa.is(0, "AI.MODELEXECUTE") || oa.is(0, "AI.MODELRUN")) {
      bool legacy = oa.is(0, "AI.MODELRUN");
      if (legacy && !mode.legacy)
        return "ERR Deprecated AI.MODELRUN cannot be used in AI.DAGEXECUTE command";
      err = legacy ? parse_modelrun(ctx, oa, true, &op, &unused_timeout)
                   : parse_modelexecute(ctx, oa, true, &op, &unused_timeout);
    } else if (oa.is(0, "AI.SCRIPTEXECUTE") || oa.is(0, "AI.SCRIPTRUN")) {
      bool legacy = oa.is(0, "AI.SCRIPTRUN");
      if (legacy && !mode.legacy)
        return "ERR Deprecated AI.SCRIPTRUN cannot be used in AI.DAGEXECUTE command";
      if (mode.readonly)
        return legacy ? "ERR AI.SCRIPTRUN command cannot be specified in a read-only DAG"
                      : "ERR AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG";
      err = legacy ? parse_scriptrun(ctx, oa, true, &op, &unused_timeout)
                   : parse_scriptexecute(ctx, oa, true, &op, &unused_timeout);
    } else {
      return "ERR Unsupported command within DAG";
    }
    if (!err.empty()) return err;
    if (op.kind == OpKind::ModelExecute || op.kind == OpKind::ScriptExecute) {
      for (const std::string &n : op.inputs)
        if (!names.count(n)) return "ERR INPUT key cannot be found in DAG";
      for (const std::string &n : op.outputs) names.insert(n);
    }
    run->ops.push_back(std::move(op));
  }
  for (const std::string &p : run->persist)
    if (!names.count(p)) return "ERR PERSIST key cannot be found in DAG";
  return check_outputs(ctx, run->persist);
}

int dag_command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, DagMode mode) {
  Args a{argv, argc};
  if (RedisModule_IsKeysPositionRequest(ctx)) {
    dag_keys(ctx, a);
    return REDISMODULE_OK;
  }
  if (argc < 2 && mode.legacy)
    return reply_arity(ctx, argv);
  if (!can_block_or_reply(ctx)) return REDISMODULE_OK;
  Run *run = new Run();
  run->kind = RunKind::Dag;
  capture_user(ctx, run);
  run->mem_budget = memory_headroom(ctx);
  std::string err = parse_dag(ctx, a, mode, run);
  if (!err.empty()) {
    delete run;
    return reply_err(ctx, err);
  }
  return block_and_submit(ctx, run);
}

int DagExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return dag_command(ctx, argv, argc, DagMode{false, false});
}
int DagExecuteRO_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return dag_command(ctx, argv, argc, DagMode{true, false});
}
int DagRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return dag_command(ctx, argv, argc, DagMode{false, true});
}
int DagRunRO_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return dag_command(ctx, argv, argc, DagMode{true, true});
}

/* ==== AI.INFO ================================================================================= */

int Info_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 2 || argc > 3) return reply_arity(ctx, argv);
  Args a{argv, argc};
  /* As RedisAI: a third word other than RESETSTAT is ignored. */
  bool reset = argc == 3 && a.is(2, "RESETSTAT");
  Model *m = nullptr;
  Script *s = nullptr;
  RunStats *stats = nullptr;
  if (lookup(ctx, argv[1], ModelType, &m) == Lookup::Found) {
    stats = &m->stats;
  } else if (lookup(ctx, argv[1], ScriptType, &s) == Lookup::Found) {
    stats = &s->stats;
  } else {
    return reply_err(ctx, "ERR cannot find run info for key");
  }
  if (reset) {
    stats->reset();
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
  }
  long long duration, samples, calls, errors, batches;
  {
    std::lock_guard<std::mutex> g(stats->mu);
    duration = stats->duration_us;
    samples = stats->samples;
    calls = stats->calls;
    errors = stats->errors;
    batches = stats->batches;
  }
  /* Beyond RedisAI's 18 entries, models add their batching figures as further pairs;
   * clients read the reply as a flat key/value list, so the extra pairs are harmless. */
  RedisModule_ReplyWithArray(
      ctx, m ? (m->optimize ? 28 : 24) + (m->load_error.empty() ? 0 : 2)
             : 18 + (s->load_error.empty() ? 0 : 2));
  RedisModule_ReplyWithSimpleString(ctx, "key");
  RedisModule_ReplyWithString(ctx, argv[1]);
  RedisModule_ReplyWithSimpleString(ctx, "type");
  RedisModule_ReplyWithSimpleString(ctx, m ? "MODEL" : "SCRIPT");
  RedisModule_ReplyWithSimpleString(ctx, "backend");
  RedisModule_ReplyWithSimpleString(ctx, "TORCH");
  RedisModule_ReplyWithSimpleString(ctx, "device");
  RedisModule_ReplyWithSimpleString(ctx, m ? m->device.c_str() : s->device.c_str());
  RedisModule_ReplyWithSimpleString(ctx, "tag");
  const std::string &tag = m ? m->tag : s->tag;
  RedisModule_ReplyWithStringBuffer(ctx, tag.data(), tag.size());
  RedisModule_ReplyWithSimpleString(ctx, "duration");
  RedisModule_ReplyWithLongLong(ctx, duration);
  RedisModule_ReplyWithSimpleString(ctx, "samples");
  RedisModule_ReplyWithLongLong(ctx, m ? samples : -1);
  RedisModule_ReplyWithSimpleString(ctx, "calls");
  RedisModule_ReplyWithLongLong(ctx, calls);
  RedisModule_ReplyWithSimpleString(ctx, "errors");
  RedisModule_ReplyWithLongLong(ctx, errors);
  if (m) {
    long long depth = 0;
    for (const QueueInfo &q : queue_infos())
      if (q.device == m->queue) depth = static_cast<long long>(q.depth);
    RedisModule_ReplyWithSimpleString(ctx, "batches");
    RedisModule_ReplyWithLongLong(ctx, batches);
    RedisModule_ReplyWithSimpleString(ctx, "mean_batch_size");
    std::string mean = format_double(batches ? static_cast<double>(samples) / static_cast<double>(batches) : 0.0);
    RedisModule_ReplyWithStringBuffer(ctx, mean.data(), mean.size());
    RedisModule_ReplyWithSimpleString(ctx, "queue_depth");
    RedisModule_ReplyWithLongLong(ctx, depth);
    if (m->optimize) reply_optimize_meta(ctx, *m);
    reply_load_error(ctx, *m);
  } else if (!s->load_error.empty()) {
    RedisModule_ReplyWithSimpleString(ctx, "load_error");
    RedisModule_ReplyWithStringBuffer(ctx, s->load_error.data(), s->load_error.size());
  }
  return REDISMODULE_OK;
}

/* ==== AI.CONFIG =============================================================================== */

int Config_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 2) return reply_arity(ctx, argv);
  Args a{argv, argc};
  if (a.is(1, "BACKENDSPATH")) {
    if (argc < 3) return reply_err(ctx, "ERR BACKENDSPATH: missing path argument");
    config.backends_path = a.str(2);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
  }
  if (a.is(1, "LOADBACKEND")) {
    if (argc < 4) return reply_arity(ctx, argv);
    if (!a.is(2, "TORCH")) return reply_err(ctx, "ERR unsupported backend");
    std::string err = load_torch_backend(a.str(3), false);
    if (!err.empty()) return reply_err(ctx, err);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
  }
  if (a.is(1, "MODEL_CHUNK_SIZE")) {
    long long n;
    if (!a.ll(2, &n) || n <= 0) return reply_err(ctx, "ERR MODEL_CHUNK_SIZE: invalid chunk size");
    config.model_chunk_size = n;
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
  }
  /* groundwatch extensions (RedisAI 1.2 takes these at load time only): the engine's memory
   * bounds, in MB, changed at run time. TORCH_CPU_CACHE_MB AUTO goes back to the default rule. */
  if (a.is(1, "BACKEND_MEMORY_LIMIT")) {
    long long n;
    if (!a.ll(2, &n) || n < 0 || n > kMaxMemoryMb)
      return reply_err(ctx, "ERR BACKEND_MEMORY_LIMIT: expected megabytes, 0 or more (0: no limit)");
    config.backend_memory_limit = n;
    apply_memory_limits();
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
  }
  if (a.is(1, "TORCH_CPU_CACHE_MB")) {
    long long n = -1;
    if (!a.is(2, "AUTO") && (!a.ll(2, &n) || n < 0 || n > kMaxMemoryMb))
      return reply_err(ctx, "ERR TORCH_CPU_CACHE_MB: expected megabytes, 0 or more, or AUTO");
    config.torch_cpu_cache_mb = n;
    apply_memory_limits();
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
  }
  if (a.is(1, "GET")) {
    if (argc < 3) return reply_arity(ctx, argv);
    if (a.is(2, "BACKEND_MEMORY_LIMIT")) return RedisModule_ReplyWithLongLong(ctx, config.backend_memory_limit);
    if (a.is(2, "TORCH_CPU_CACHE_MB"))
      return RedisModule_ReplyWithLongLong(ctx, static_cast<long long>(cpu_cache_bytes() >> 20));
    if (a.is(2, "BACKENDSPATH"))
      return RedisModule_ReplyWithStringBuffer(ctx, config.backends_path.data(),
                                               config.backends_path.size());
    if (a.is(2, "MODEL_CHUNK_SIZE")) return RedisModule_ReplyWithLongLong(ctx, config.model_chunk_size);
    return RedisModule_ReplyWithNull(ctx);
  }
  return reply_err(ctx, "ERR unsupported subcommand");
}

/* ==== AI._MODELSCAN / AI._SCRIPTSCAN ========================================================== */

/* Lists only the keys the caller may read: KEYS runs as Redis itself, so each key is checked
 * against the caller's ACL user. */
int scan(RedisModuleCtx *ctx, RedisModuleType *type) {
  RedisModuleUser *user = nullptr;
  if (RedisModuleString *name = RedisModule_GetCurrentUserName(ctx)) {
    user = RedisModule_GetModuleUserFromUserName(name);
    RedisModule_FreeString(ctx, name);
    if (!user) return reply_err(ctx, "NOPERM the current user no longer exists");
  }
  RedisModuleCallReply *keys = RedisModule_Call(ctx, "KEYS", "c", "*");
  if (!keys) {
    if (user) RedisModule_FreeModuleUser(user);
    return reply_err(ctx, "ERR could not list keys");
  }
  size_t n = RedisModule_CallReplyLength(keys);
  RedisModule_ReplyWithArray(ctx, REDISMODULE_POSTPONED_LEN);
  long found = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len;
    const char *p = RedisModule_CallReplyStringPtr(RedisModule_CallReplyArrayElement(keys, i), &len);
    RedisModuleString *k = RedisModule_CreateString(ctx, p, len);
    const std::string *tag = nullptr;
    Model *m = nullptr;
    Script *s = nullptr;
    if (user && RedisModule_ACLCheckKeyPermissions(user, k, REDISMODULE_CMD_KEY_ACCESS) != REDISMODULE_OK) {
      RedisModule_FreeString(ctx, k);
      continue;
    }
    if (type == ModelType && lookup(ctx, k, ModelType, &m) == Lookup::Found) tag = &m->tag;
    if (type == ScriptType && lookup(ctx, k, ScriptType, &s) == Lookup::Found) tag = &s->tag;
    if (tag) {
      RedisModule_ReplyWithArray(ctx, 2);
      RedisModule_ReplyWithStringBuffer(ctx, p, len);
      RedisModule_ReplyWithStringBuffer(ctx, tag->data(), tag->size());
      found++;
    }
    RedisModule_FreeString(ctx, k);
  }
  RedisModule_ReplySetArrayLength(ctx, found);
  RedisModule_FreeCallReply(keys);
  if (user) RedisModule_FreeModuleUser(user);
  return REDISMODULE_OK;
}

int ModelScan_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  if (argc != 1) return reply_arity(ctx, argv);
  return scan(ctx, ModelType);
}
int ScriptScan_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  if (argc != 1) return reply_arity(ctx, argv);
  return scan(ctx, ScriptType);
}

}  // namespace

/* ==== Registration ============================================================================ */

int register_commands(RedisModuleCtx *ctx) {
  struct Cmd {
    const char *name;
    RedisModuleCmdFunc fn;
    const char *flags;
    int first, last, step;
  };
  const Cmd cmds[] = {
      {"ai.tensorset", TensorSet_Command, "write deny-oom", 1, 1, 1},
      {"ai.tensorget", TensorGet_Command, "readonly", 1, 1, 1},
      {"ai.modelstore", ModelStore_Command, "write deny-oom", 1, 1, 1},
      {"ai.modelset", ModelSet_Command, "write deny-oom", 1, 1, 1},
      {"ai.modelget", ModelGet_Command, "readonly", 1, 1, 1},
      {"ai.modeldel", ModelDel_Command, "write", 1, 1, 1},
      {"ai.modelexecute", ModelExecute_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.modelrun", ModelRun_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.scriptstore", ScriptStore_Command, "write deny-oom", 1, 1, 1},
      {"ai.scriptset", ScriptSet_Command, "write deny-oom", 1, 1, 1},
      {"ai.scriptget", ScriptGet_Command, "readonly", 1, 1, 1},
      {"ai.scriptdel", ScriptDel_Command, "write", 1, 1, 1},
      {"ai.scriptexecute", ScriptExecute_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.scriptrun", ScriptRun_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.dagexecute", DagExecute_Command, "write deny-oom getkeys-api", 0, 0, 0},
      {"ai.dagexecute_ro", DagExecuteRO_Command, "readonly getkeys-api", 0, 0, 0},
      {"ai.dagrun", DagRun_Command, "write deny-oom getkeys-api", 0, 0, 0},
      {"ai.dagrun_ro", DagRunRO_Command, "readonly getkeys-api", 0, 0, 0},
      {"ai.info", Info_Command, "readonly", 1, 1, 1},
      {"ai.config", Config_Command, "admin", 0, 0, 0},
      {"ai._modelscan", ModelScan_Command, "readonly", 0, 0, 0},
      {"ai._scriptscan", ScriptScan_Command, "readonly", 0, 0, 0},
  };
  for (const Cmd &c : cmds) {
    if (RedisModule_CreateCommand(ctx, c.name, c.fn, c.flags, c.first, c.last, c.step) !=
        REDISMODULE_OK) {
      RedisModule_Log(ctx, "warning", "could not register %s", c.name);
      return REDISMODULE_ERR;
    }
  }
  return REDISMODULE_OK;
}

}  // namespace gw
