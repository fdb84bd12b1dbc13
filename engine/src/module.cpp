/*
 * module.cpp: the module's entry point, its three data types (RDB, AOF rewrite, MEMORY USAGE,
 * free), load-time arguments and the INFO MODULES sections.
 */
#include <dlfcn.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <cstdio>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend.h"
#include "exec.h"
#include "commands.h"
#include "memory.h"
#include "objects.h"
#include "rm_api.h"
#include "rdb_legacy.h"
#include "serialization.h"
#include "tensor.h"

#ifndef GW_GIT_SHA
#define GW_GIT_SHA "unknown"
#endif

namespace gw {

/* ==== Globals ================================================================================= */

Config config;
LoadedCounts torch_loaded;
RedisModuleType *TensorType = nullptr;
RedisModuleType *ModelType = nullptr;
RedisModuleType *ScriptType = nullptr;

/* The RedisAI version whose protocol we speak, as Redis reports module versions. */
constexpr int kModuleVersion = 10207;

namespace {

/* ==== RDB adaptors ============================================================================ */

struct IOWriter : RdbWriter {
  RedisModuleIO *io;
  explicit IOWriter(RedisModuleIO *i) : io(i) {}
  void u64(uint64_t v) override { RedisModule_SaveUnsigned(io, v); }
  void i64(int64_t v) override { RedisModule_SaveSigned(io, v); }
  void bytes(const char *p, size_t n) override { RedisModule_SaveStringBuffer(io, p, n); }
};

/* With REDISMODULE_OPTIONS_HANDLE_IO_ERRORS a short read or an opcode mismatch returns 0/NULL
 * and sets the IO's error flag; after one, nothing more is read from the stream. */
struct IOReader : RdbReader {
  RedisModuleIO *io;
  bool failed = false;
  explicit IOReader(RedisModuleIO *i) : io(i) {}
  bool check() {
    if (!failed && RedisModule_IsIOError(io)) failed = true;
    return !failed;
  }
  bool u64(uint64_t *v) override {
    if (failed) return false;
    *v = RedisModule_LoadUnsigned(io);
    return check();
  }
  bool i64(int64_t *v) override {
    if (failed) return false;
    *v = RedisModule_LoadSigned(io);
    return check();
  }
  char *bytes(size_t *n) override {
    if (failed) return nullptr;
    char *p = RedisModule_LoadStringBuffer(io, n);
    if (!check() || !p) {
      if (p) RedisModule_Free(p);
      failed = true;
      return nullptr;
    }
    return p;
  }
};

/* Server start, DEBUG RELOAD and a replica's full sync load with Redis "loading"; RESTORE does
 * not. Data being loaded is already held by this server or its master, so only a client's
 * RESTORE is held to TENSOR_MAX_BYTES (docs/engine-limits.md). */
bool io_loading(RedisModuleIO *io) {
  RedisModuleCtx *ctx = RedisModule_GetContextFromIO(io);
  return ctx && (RedisModule_GetContextFlags(ctx) & REDISMODULE_CTX_FLAGS_LOADING);
}

/* Encodings 0-3 (RedisAI 1.0-1.2.4) go to the legacy decoders (rdb_legacy.h); above 4 a value
 * is refused with RedisAI's message. */
bool supported_encver(RedisModuleIO *io, int encver, const char *what) {
  if (encver_known(encver)) return true;
  RedisModule_LogIOError(io, "warning", "%s", encver_refusal(what).c_str());
  return false;
}

/* Emits one command whose arguments are all strings. */
void emit(RedisModuleIO *aof, const char *cmd, std::vector<RedisModuleString *> &args) {
  RedisModule_EmitAOF(aof, cmd, "v", args.data(), args.size());
  for (RedisModuleString *s : args) RedisModule_FreeString(nullptr, s);
  args.clear();
}

RedisModuleString *mkstr(const std::string &s) {
  return RedisModule_CreateString(nullptr, s.data(), s.size());
}
RedisModuleString *mkstr(const char *p, size_t n) { return RedisModule_CreateString(nullptr, p, n); }

/* ==== AI_TENSOR =============================================================================== */

void *tensor_rdb_load(RedisModuleIO *io, int encver) {
  if (!supported_encver(io, encver, "tensor")) return nullptr;
  IOReader r(io);
  std::string err;
  bool loading = io_loading(io);
  uint64_t limit = static_cast<uint64_t>(config.tensor_max_bytes);
  Tensor *t = load_tensor_any(r, encver, &err, loading ? kTensorBytesCeiling : limit);
  if (!t) {
    RedisModule_LogIOError(io, "warning", "AI_TENSOR: %s", err.c_str());
  } else if (t->nbytes > limit) {
    RedisModule_LogIOError(io, "warning",
                           "AI_TENSOR: loaded a tensor of %zu bytes, over TENSOR_MAX_BYTES (%llu)",
                           t->nbytes, static_cast<unsigned long long>(limit));
  }
  return t;
}

void tensor_rdb_save(RedisModuleIO *io, void *value) {
  IOWriter w(io);
  save_tensor(w, *static_cast<Tensor *>(value));
}

void tensor_aof_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
  size_t klen;
  const char *k = RedisModule_StringPtrLen(key, &klen);
  std::vector<RedisModuleString *> args = tensorset_args(nullptr, k, klen, *static_cast<Tensor *>(value));
  emit(aof, "AI.TENSORSET", args);
}

size_t tensor_mem_usage(const void *value) {
  const Tensor *t = static_cast<const Tensor *>(value);
  return sizeof(Tensor) + t->nbytes + t->shape.capacity() * sizeof(int64_t);
}

void tensor_free(void *value) { static_cast<Tensor *>(value)->release(); }

/* COPY: tensors never change once built, so the copy shares the data. */
void *tensor_copy(RedisModuleString *fromkey, RedisModuleString *tokey, const void *value) {
  (void)fromkey;
  (void)tokey;
  return const_cast<Tensor *>(static_cast<const Tensor *>(value))->retain();
}

/* ==== AI__MODEL =============================================================================== */

void *model_rdb_load(RedisModuleIO *io, int encver) {
  if (!supported_encver(io, encver, "model")) return nullptr;
  IOReader r(io);
  ModelRecord rec;
  std::string err;
  if (!load_model_any(r, encver, &rec, &err)) {
    RedisModule_LogIOError(io, "warning", "AI__MODEL: %s", err.c_str());
    return nullptr;
  }
  if (rec.backend != kBackendTorch) {
    RedisModule_LogIOError(io, "warning", "AI__MODEL: backend %llu is not supported",
                           static_cast<unsigned long long>(rec.backend));
    return nullptr;
  }
  /* At start-up, DEBUG RELOAD or a full sync (loading), a record the backend cannot turn into a
   * model (a blob this libtorch cannot read, a device this host lacks) becomes a model that
   * reports why on every use and is saved back as it came: the rest of the data comes up. A
   * client's RESTORE is refused instead, as MODELSTORE would be. The device is kept as stored
   * (RedisAI keeps the client's case). */
  bool loading = io_loading(io);
  std::string device = rec.device;
  bool device_ok = valid_device(device);
  Model *m = nullptr;
  char *blob = rec.blob;
  rec.blob = nullptr;
  if (device_ok) {
    err = create_model(device, rec.tag, rec.batchsize, rec.minbatchsize, rec.minbatchtimeout, blob,
                       rec.bloblen, &m, rec.optimize, loading);
  } else {
    err = "ERR Invalid DEVICE " + rec.device;
    if (loading) {
      m = failed_model(rec.device, rec.tag, rec.batchsize, rec.minbatchsize, rec.minbatchtimeout,
                       blob, rec.bloblen, rec.optimize, err);
    } else {
      mem_free(blob);
    }
  }
  if (!err.empty() && !m) {
    RedisModule_LogIOError(io, "warning", "AI__MODEL: %s", err.c_str());
    return nullptr;
  }
  if (!err.empty()) {
    m->device = rec.device; /* verbatim, so it is saved back as it came */
    m->inputs = rec.inputs;
    m->noutputs = rec.outputs.size();
    m->record_outputs = rec.outputs;
    RedisModule_LogIOError(io, "warning",
                           "AI__MODEL: kept a model that cannot run (it reports why on use): %s",
                           err.c_str());
  }
  return m;
}

ModelRecord model_record(const Model &m) {
  ModelRecord rec;
  rec.device = m.device;
  rec.tag = m.tag;
  rec.batchsize = m.batchsize;
  rec.minbatchsize = m.minbatchsize;
  rec.minbatchtimeout = m.minbatchtimeout;
  rec.optimize = m.optimize;
  rec.inputs = m.inputs;
  if (m.load_error.empty()) {
    rec.outputs.assign(m.noutputs, std::string());
  } else {
    rec.outputs = m.record_outputs;
  }
  return rec;
}

void model_rdb_save(RedisModuleIO *io, void *value) {
  const Model *m = static_cast<const Model *>(value);
  ModelRecord rec = model_record(*m);
  rec.blob = m->blob; /* borrowed: released below before the record's destructor runs */
  rec.bloblen = m->bloblen;
  IOWriter w(io);
  save_model(w, rec, static_cast<size_t>(config.model_chunk_size));
  rec.blob = nullptr;
}

void model_aof_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
  const Model *m = static_cast<const Model *>(value);
  std::vector<RedisModuleString *> args;
  size_t klen;
  const char *k = RedisModule_StringPtrLen(key, &klen);
  args.push_back(mkstr(k, klen));
  args.push_back(mkstr("TORCH"));
  args.push_back(mkstr(m->device));
  args.push_back(mkstr("TAG"));
  args.push_back(mkstr(m->tag));
  args.push_back(mkstr("BATCHSIZE"));
  args.push_back(mkstr(std::to_string(m->batchsize)));
  args.push_back(mkstr("MINBATCHSIZE"));
  args.push_back(mkstr(std::to_string(m->minbatchsize)));
  args.push_back(mkstr("MINBATCHTIMEOUT"));
  args.push_back(mkstr(std::to_string(m->minbatchtimeout)));
  if (m->optimize) args.push_back(mkstr("OPTIMIZE"));
  args.push_back(mkstr("BLOB"));
  size_t chunk = static_cast<size_t>(config.model_chunk_size);
  for (size_t off = 0; off < m->bloblen || off == 0; off += chunk) {
    size_t len = m->bloblen - off < chunk ? m->bloblen - off : chunk;
    args.push_back(mkstr(m->blob + off, len));
    if (m->bloblen == 0) break;
  }
  emit(aof, "AI.MODELSTORE", args);
}

size_t model_mem_usage(const void *value) {
  const Model *m = static_cast<const Model *>(value);
  size_t backend = m->handle && torch_backend() ? torch_backend()->model_memory(m->handle) : 0;
  return sizeof(Model) + m->bloblen + backend + m->device.size() + m->tag.size();
}

void model_free(void *value) { static_cast<Model *>(value)->release(); }

/* ==== AI_SCRIPT =============================================================================== */

void *script_rdb_load(RedisModuleIO *io, int encver) {
  if (!supported_encver(io, encver, "script")) return nullptr;
  IOReader r(io);
  ScriptRecord rec;
  std::string err;
  if (!load_script_any(r, encver, &rec, &err)) {
    RedisModule_LogIOError(io, "warning", "AI_SCRIPT: %s", err.c_str());
    return nullptr;
  }
  /* As models (model_rdb_load): at load, a script that does not compile here (another
   * libtorch, a device this host lacks, no backend) is kept and reports why; RESTORE refuses it. */
  bool loading = io_loading(io);
  Script *s = nullptr;
  if (valid_device(rec.device)) {
    err = create_script(rec.device, rec.tag, rec.source, rec.entry_points, &s, loading);
  } else {
    err = "ERR Invalid DEVICE " + rec.device;
    if (loading) {
      s = new Script();
      s->tag = rec.tag;
      s->source = rec.source;
      s->entry_points = rec.entry_points;
      s->load_error = err.substr(4);
    }
  }
  if (!err.empty() && !s) {
    RedisModule_LogIOError(io, "warning", "AI_SCRIPT: %s", err.c_str());
    return nullptr;
  }
  if (!err.empty()) {
    s->device = rec.device; /* verbatim, so it is saved back as it came */
    RedisModule_LogIOError(io, "warning",
                           "AI_SCRIPT: kept a script that cannot run (it reports why on use): %s",
                           err.c_str());
  }
  return s;
}

void script_rdb_save(RedisModuleIO *io, void *value) {
  const Script *s = static_cast<const Script *>(value);
  ScriptRecord rec{s->device, s->tag, s->source, s->entry_points};
  IOWriter w(io);
  save_script(w, rec);
}

void script_aof_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
  const Script *s = static_cast<const Script *>(value);
  std::vector<RedisModuleString *> args;
  size_t klen;
  const char *k = RedisModule_StringPtrLen(key, &klen);
  args.push_back(mkstr(k, klen));
  args.push_back(mkstr(s->device));
  args.push_back(mkstr("TAG"));
  args.push_back(mkstr(s->tag));
  if (s->entry_points.empty()) {
    /* Stored through the deprecated AI.SCRIPTSET, which has no entry points. */
    args.push_back(mkstr("SOURCE"));
    args.push_back(mkstr(s->source));
    emit(aof, "AI.SCRIPTSET", args);
    return;
  }
  args.push_back(mkstr("ENTRY_POINTS"));
  args.push_back(mkstr(std::to_string(s->entry_points.size())));
  for (const std::string &e : s->entry_points) args.push_back(mkstr(e));
  args.push_back(mkstr("SOURCE"));
  args.push_back(mkstr(s->source));
  emit(aof, "AI.SCRIPTSTORE", args);
}

size_t script_mem_usage(const void *value) {
  const Script *s = static_cast<const Script *>(value);
  size_t n = sizeof(Script) + s->source.capacity() + s->device.size() + s->tag.size();
  for (const std::string &e : s->entry_points) n += e.size();
  return n;
}

void script_free(void *value) { static_cast<Script *>(value)->release(); }

/* ==== INFO MODULES ============================================================================ */

std::string field_name(std::string s) {
  for (char &c : s)
    if (c == ':') c = '_';
  return s;
}

/* The engine's memory outside Redis's allocator (a groundwatch section; docs/engine-limits.md
 * says how the figures relate to used_memory_rss). Every field is always present, 0 when it
 * does not apply, so that readers need no special cases. */
void info_memory(RedisModuleInfoCtx *ctx) {
  ProcessMemory pm = process_memory();
  GwBackendMemory bm = backend_memory();
  auto u = [ctx](const char *name, unsigned long long v) { RedisModule_InfoAddFieldULongLong(ctx, name, v); };
  auto n = [](const std::atomic<long long> &v) {
    long long x = v.load();
    return static_cast<unsigned long long>(x > 0 ? x : 0);
  };
  RedisModule_InfoAddSection(ctx, "memory");
  u("process_rss_bytes", pm.rss_bytes);
  u("malloc_is_libc", pm.malloc_is_libc ? 1 : 0);
  u("malloc_in_use_bytes", pm.malloc_in_use_bytes);
  u("malloc_free_bytes", pm.malloc_free_bytes);
  u("torch_models", n(torch_loaded.models.n));
  u("torch_model_weights_bytes", n(torch_loaded.models.bytes));
  u("torch_scripts", n(torch_loaded.scripts.n));
  u("torch_script_bytes", n(torch_loaded.scripts.bytes));
  u("torch_cpu_allocated_bytes", bm.allocated_bytes);
  u("torch_run_tensor_bytes", bm.run_bytes);
  u("torch_run_tensor_peak_bytes", bm.run_peak_bytes);
  u("torch_run_input_bytes", bm.run_input_bytes);
  u("torch_cpu_cache_bytes", bm.cache_bytes);
  u("torch_cpu_cache_limit_bytes", torch_backend() ? bm.cache_limit_bytes : cpu_cache_bytes());
  u("torch_cpu_cache_follows_maxmemory", config.torch_cpu_cache_mb < 0 ? 1 : 0);
  u("torch_memory_limit_bytes", static_cast<unsigned long long>(config.backend_memory_limit) << 20);
  u("torch_refused_allocations", bm.refused_allocations);
}

/* Seconds with 6 decimals, as RedisAI prints CPU times. */
std::string cpu_seconds(const struct timeval &tv) {
  char buf[64];
  snprintf(buf, sizeof buf, "%ld.%06ld", static_cast<long>(tv.tv_sec), static_cast<long>(tv.tv_usec));
  return buf;
}
std::string cpu_seconds(double s) {
  struct timeval tv;
  tv.tv_sec = static_cast<time_t>(s);
  tv.tv_usec = static_cast<suseconds_t>((s - static_cast<double>(tv.tv_sec)) * 1e6);
  return cpu_seconds(tv);
}

/* RedisAI's sections, names and order first (clients and dashboards read them); ours after. */
void info_func(RedisModuleInfoCtx *ctx, int for_crash_report) {
  RedisModule_InfoAddSection(ctx, "versions");
  RedisModule_InfoAddFieldCString(ctx, "RedisAI_version", "1.2.7");
  RedisModule_InfoAddFieldCString(ctx, "low_level_API_version", "1");
  RedisModule_InfoAddFieldLongLong(ctx, "rdb_version", kEncodingVersion);

  RedisModule_InfoAddSection(ctx, "git");
  RedisModule_InfoAddFieldCString(ctx, "git_sha", GW_GIT_SHA);

  RedisModule_InfoAddSection(ctx, "load_time_configs");
  RedisModule_InfoAddFieldLongLong(ctx, "threads_per_queue", config.threads_per_queue);
  RedisModule_InfoAddFieldLongLong(ctx, "inter_op_parallelism", config.inter_op_parallelism);
  RedisModule_InfoAddFieldLongLong(ctx, "intra_op_parallelism", config.intra_op_parallelism);
  RedisModule_InfoAddFieldLongLong(ctx, "model_execution_timeout", config.model_execution_timeout);
  RedisModule_InfoAddFieldLongLong(ctx, "backend_memory_limit", config.backend_memory_limit);
  RedisModule_InfoAddFieldLongLong(ctx, "tensor_max_bytes", config.tensor_max_bytes);
  RedisModule_InfoAddFieldLongLong(ctx, "max_device_queues", config.max_device_queues);
  RedisModule_InfoAddFieldLongLong(ctx, "max_queue_length", config.max_queue_length);
  RedisModule_InfoAddFieldLongLong(ctx, "max_reply_bytes", config.max_reply_bytes);

  RedisModule_InfoAddSection(ctx, "backends_info");
  if (torch_backend()) RedisModule_InfoAddFieldCString(ctx, "Torch_version", torch_backend()->version());

  std::vector<QueueInfo> queues = queue_infos();
  RedisModule_InfoAddSection(ctx, "cpu");
  struct rusage self, children, main_thread;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &children);
  getrusage(RUSAGE_THREAD, &main_thread); /* INFO runs on the main thread */
  const std::pair<const char *, const struct timeval *> times[] = {
      {"self_used_cpu_sys", &self.ru_stime},
      {"self_used_cpu_user", &self.ru_utime},
      {"children_used_cpu_sys", &children.ru_stime},
      {"children_used_cpu_user", &children.ru_utime},
      {"main_thread_used_cpu_sys", &main_thread.ru_stime},
      {"main_thread_used_cpu_user", &main_thread.ru_utime},
  };
  for (const auto &t : times) RedisModule_InfoAddFieldCString(ctx, t.first, cpu_seconds(*t.second).c_str());
  for (const QueueInfo &q : queues) {
    for (size_t i = 0; i < q.cpu_seconds.size(); i++) {
      std::string f = field_name("queue_" + q.device + "_bthread_n" + std::to_string(i + 1) +
                                 "_used_cpu_total");
      RedisModule_InfoAddFieldCString(ctx, f.c_str(), cpu_seconds(q.cpu_seconds[i]).c_str());
    }
  }

  /* A crash report may run with an allocator lock held: mallinfo2 and the backend's allocator
   * would wait on it for ever. */
  if (!for_crash_report) info_memory(ctx);

  RedisModule_InfoAddSection(ctx, "queues");
  for (const QueueInfo &q : queues) {
    std::string d = field_name(q.device);
    RedisModule_InfoAddFieldLongLong(ctx, (d + "_queue_depth").c_str(), static_cast<long long>(q.depth));
    RedisModule_InfoAddFieldLongLong(ctx, (d + "_batches").c_str(), q.batches);
    double mean = q.batches ? static_cast<double>(q.batch_samples) / static_cast<double>(q.batches) : 0.0;
    RedisModule_InfoAddFieldDouble(ctx, (d + "_mean_batch_size").c_str(), mean);
  }
}

/* ==== Load-time arguments ===================================================================== */

std::string default_backends_path() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&default_backends_path), &info) && info.dli_fname) {
    std::string path = info.dli_fname;
    size_t slash = path.rfind('/');
    return (slash == std::string::npos ? std::string(".") : path.substr(0, slash)) + "/backends";
  }
  return "backends";
}

bool parse_load_args(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, std::string *torch) {
  if (argc % 2 != 0) {
    RedisModule_Log(ctx, "warning", "load-time arguments come in NAME VALUE pairs");
    return false;
  }
  for (int i = 0; i < argc; i += 2) {
    size_t nlen, vlen;
    const char *name = RedisModule_StringPtrLen(argv[i], &nlen);
    const char *value = RedisModule_StringPtrLen(argv[i + 1], &vlen);
    std::string n(name, nlen), v(value, vlen);
    long long num = 0;
    bool is_num = RedisModule_StringToLongLong(argv[i + 1], &num) == REDISMODULE_OK;
    auto num_arg = [&](long long *dst, long long min) {
      if (!is_num || num < min) {
        RedisModule_Log(ctx, "warning", "invalid value for %s: %s", n.c_str(), v.c_str());
        return false;
      }
      *dst = num;
      return true;
    };
    bool ok = true;
    if (strcasecmp(n.c_str(), "BACKENDSPATH") == 0) {
      config.backends_path = v;
    } else if (strcasecmp(n.c_str(), "TORCH") == 0) {
      *torch = v;
    } else if (strcasecmp(n.c_str(), "THREADS_PER_QUEUE") == 0) {
      ok = num_arg(&config.threads_per_queue, 1);
    } else if (strcasecmp(n.c_str(), "INTRA_OP_PARALLELISM") == 0) {
      ok = num_arg(&config.intra_op_parallelism, 0);
    } else if (strcasecmp(n.c_str(), "INTER_OP_PARALLELISM") == 0) {
      ok = num_arg(&config.inter_op_parallelism, 0);
    } else if (strcasecmp(n.c_str(), "MODEL_CHUNK_SIZE") == 0) {
      ok = num_arg(&config.model_chunk_size, 1);
    } else if (strcasecmp(n.c_str(), "MODEL_EXECUTION_TIMEOUT") == 0) {
      ok = num_arg(&config.model_execution_timeout, 0);
    } else if (strcasecmp(n.c_str(), "BACKEND_MEMORY_LIMIT") == 0) {
      ok = num_arg(&config.backend_memory_limit, 0) && config.backend_memory_limit <= kMaxMemoryMb;
    } else if (strcasecmp(n.c_str(), "TORCH_CPU_CACHE_MB") == 0) {
      ok = num_arg(&config.torch_cpu_cache_mb, 0) && config.torch_cpu_cache_mb <= kMaxMemoryMb;
    } else if (strcasecmp(n.c_str(), "TENSOR_MAX_BYTES") == 0) {
      ok = num_arg(&config.tensor_max_bytes, 1);
      if (ok && static_cast<uint64_t>(config.tensor_max_bytes) > kTensorBytesCeiling) {
        RedisModule_Log(ctx, "warning", "TENSOR_MAX_BYTES is at most %llu",
                        static_cast<unsigned long long>(kTensorBytesCeiling));
        ok = false;
      }
    } else if (strcasecmp(n.c_str(), "MAX_DEVICE_QUEUES") == 0) {
      ok = num_arg(&config.max_device_queues, 1);
    } else if (strcasecmp(n.c_str(), "MAX_QUEUE_LENGTH") == 0) {
      ok = num_arg(&config.max_queue_length, 1);
    } else if (strcasecmp(n.c_str(), "MAX_REPLY_BYTES") == 0) {
      ok = num_arg(&config.max_reply_bytes, 1);
    } else {
      RedisModule_Log(ctx, "warning", "unknown load-time argument %s", n.c_str());
      ok = false;
    }
    if (!ok) return false;
  }
  return true;
}

/* ==== maxmemory ============================================================================== */

/* Reads maxmemory with CONFIG GET; 0 when unset or unreadable. */
unsigned long long read_maxmemory(RedisModuleCtx *ctx) {
  RedisModuleCallReply *r = RedisModule_Call(ctx, "CONFIG", "cc", "GET", "maxmemory");
  unsigned long long value = 0;
  if (r && RedisModule_CallReplyType(r) == REDISMODULE_REPLY_ARRAY && RedisModule_CallReplyLength(r) == 2) {
    size_t len;
    const char *p = RedisModule_CallReplyStringPtr(RedisModule_CallReplyArrayElement(r, 1), &len);
    if (p) value = std::strtoull(std::string(p, len).c_str(), nullptr, 10);
  }
  if (r) RedisModule_FreeCallReply(r);
  return value;
}

/* The default block cache follows maxmemory, which CONFIG SET can change at any time. Any
 * config change re-reads it: cheaper than decoding which names changed, and just as exact. */
void on_config_change(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent, void *data) {
  (void)eid;
  (void)subevent;
  (void)data;
  unsigned long long now = read_maxmemory(ctx);
  if (now == config.maxmemory) return;
  config.maxmemory = now;
  apply_memory_limits();
}

}  // namespace
}  // namespace gw

/* ==== Entry point ============================================================================= */

extern "C" __attribute__((visibility("default"))) int RedisModule_OnLoad(RedisModuleCtx *ctx,
                                                                         RedisModuleString **argv,
                                                                         int argc) {
  using namespace gw;
  if (rm_api_init(ctx) != REDISMODULE_OK) return REDISMODULE_ERR;
  if (RedisModule_IsModuleNameBusy("ai")) return REDISMODULE_ERR;
  RedisModule_SetModuleAttribs(ctx, "ai", kModuleVersion, REDISMODULE_APIVER_1);
  /* A truncated or crafted RESTORE payload or RDB must be an error, never a panic. */
  RedisModule_SetModuleOptions(ctx, REDISMODULE_OPTIONS_HANDLE_IO_ERRORS);
  mem_alloc = RedisModule_Alloc;
  mem_free = RedisModule_Free;

  config.backends_path = default_backends_path();
  std::string torch;
  if (!parse_load_args(ctx, argv, argc, &torch)) return REDISMODULE_ERR;
  /* Fixed here, before any client can change BACKENDSPATH. A folder that does not exist yet
   * is kept as given (nothing under it resolves until it does). */
  for (const std::string &root : {config.backends_path, default_backends_path()}) {
    std::string r = resolve_path(root);
    config.backend_roots.push_back(r.empty() ? root : r);
  }

  RedisModuleTypeMethods tm;
  memset(&tm, 0, sizeof tm);
  tm.version = REDISMODULE_TYPE_METHOD_VERSION_3;
  tm.rdb_load = tensor_rdb_load;
  tm.rdb_save = tensor_rdb_save;
  tm.aof_rewrite = tensor_aof_rewrite;
  tm.mem_usage = tensor_mem_usage;
  tm.free = tensor_free;
  tm.copy = tensor_copy;
  TensorType = RedisModule_CreateDataType(ctx, "AI_TENSOR", kEncodingVersion, &tm);
  /* Models and scripts carry run statistics per key, which a shared copy would mix up. */
  tm.copy = nullptr;
  tm.rdb_load = model_rdb_load;
  tm.rdb_save = model_rdb_save;
  tm.aof_rewrite = model_aof_rewrite;
  tm.mem_usage = model_mem_usage;
  tm.free = model_free;
  ModelType = RedisModule_CreateDataType(ctx, "AI__MODEL", kEncodingVersion, &tm);
  tm.rdb_load = script_rdb_load;
  tm.rdb_save = script_rdb_save;
  tm.aof_rewrite = script_aof_rewrite;
  tm.mem_usage = script_mem_usage;
  tm.free = script_free;
  ScriptType = RedisModule_CreateDataType(ctx, "AI_SCRIPT", kEncodingVersion, &tm);
  if (!TensorType || !ModelType || !ScriptType) {
    RedisModule_Log(ctx, "warning", "could not register the AI data types");
    return REDISMODULE_ERR;
  }

  if (register_commands(ctx) != REDISMODULE_OK) return REDISMODULE_ERR;
  RedisModule_RegisterInfoFunc(ctx, info_func);
  /* As RedisAI, the CPU queue and its workers exist from load (INFO lists them at once). */
  std::string queue_err = start_queue("CPU");
  if (!queue_err.empty()) RedisModule_Log(ctx, "warning", "%s", queue_err.c_str());
  config.maxmemory = read_maxmemory(ctx);
  if (RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent{REDISMODULE_EVENT_CONFIG, 1},
                                         on_config_change) != REDISMODULE_OK)
    RedisModule_Log(ctx, "warning", "cannot follow CONFIG SET maxmemory: the block cache keeps its load-time size");

  if (!torch.empty()) {
    std::string err = load_torch_backend(torch, true);
    if (!err.empty()) {
      RedisModule_Log(ctx, "warning", "could not load the TORCH backend from %s", torch.c_str());
      return REDISMODULE_ERR;
    }
  }
  return REDISMODULE_OK;
}
