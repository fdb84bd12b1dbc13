/*
 * objects.h: the values the three data types hold (tensors live in tensor.h), the engine's
 * configuration and the handles Redis gave us at load time; making models and scripts through
 * the backend (objects.cpp), for the store commands and RDB/AOF loading alike.
 */
#ifndef GROUNDWATCH_OBJECTS_H
#define GROUNDWATCH_OBJECTS_H

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Configuration =========================================================================== */
struct Config {
  std::string backends_path;
  long long threads_per_queue = 1;
  long long intra_op_parallelism = 0;
  long long inter_op_parallelism = 0;
  long long model_chunk_size = 511LL * 1024 * 1024;
  long long model_execution_timeout = 5000;
  long long backend_memory_limit = 0; /* MB, as in RedisAI; enforced for TORCH runs; 0: none */
  /* MB of the TORCH block cache (a groundwatch argument); -1: the default rule of memory.h,
   * which follows maxmemory (read at load and after every CONFIG SET). */
  long long torch_cpu_cache_mb = -1;
  unsigned long long maxmemory = 0; /* Redis's, as last read */
  /* TENSOR_MAX_BYTES: the largest tensor a client can make (see tensor.h's invariants). */
  long long tensor_max_bytes = static_cast<long long>(kDefaultTensorMaxBytes);
  /* Bounds (docs/engine-limits.md). Distinct device queues, each with threads_per_queue
   * workers; requests waiting in one queue; reply bytes of one DAG or TENSORGET. */
  long long max_device_queues = 16;
  long long max_queue_length = 4096;
  long long max_reply_bytes = 128LL * 1024 * 1024;
  /* Where LOADBACKEND may load from: the BACKENDSPATH given at load time and the module's own
   * backends folder, both resolved with realpath once at load. AI.CONFIG BACKENDSPATH changes
   * where names are looked up, never these. */
  std::vector<std::string> backend_roots;
};
extern Config config;
/* The largest MB value the memory settings take (1 PiB), so that bytes fit in 64 bits. */
constexpr long long kMaxMemoryMb = 1LL << 30;

/* ==== Loaded models and scripts ==================================================================
 * How many the TORCH backend holds and the bytes it reports for them (weights; tensor constants
 * of scripts), for INFO MODULES. Counted from creation to release: a model that a run still
 * holds after MODELDEL counts until the run ends, which is when its memory goes. */
struct LoadedCount {
  std::atomic<long long> n{0};
  std::atomic<long long> bytes{0};
  void add(size_t b) {
    n++;
    bytes += static_cast<long long>(b);
  }
  void remove(size_t b) {
    n--;
    bytes -= static_cast<long long>(b);
  }
};
struct LoadedCounts {
  LoadedCount models, scripts;
};
extern LoadedCounts torch_loaded;

extern RedisModuleType *TensorType;
extern RedisModuleType *ModelType;
extern RedisModuleType *ScriptType;

/* ==== Run statistics =============================================================================
 * Updated by workers, read by AI.INFO on the main thread. */
struct RunStats {
  mutable std::mutex mu;
  long long duration_us = 0;
  long long samples = 0;
  long long calls = 0;
  long long errors = 0;
  long long batches = 0;       /* model runs that merged requests or ran them alone */
  long long batch_requests = 0; /* requests those runs served */

  void reset() {
    std::lock_guard<std::mutex> g(mu);
    duration_us = samples = calls = errors = batches = batch_requests = 0;
  }
};

/* ==== Model and script ===========================================================================
 * Shared by reference count like tensors: a running request keeps its model alive even when
 * MODELDEL or a new MODELSTORE replaces the key meanwhile. */
struct Model {
  std::atomic<int> refs{1};
  std::string device; /* as the client sent it: replies, RDB and AOF show it unchanged */
  std::string queue;  /* upper-cased device: the run queue and what the backend was given */
  std::string tag;
  long long batchsize = 0;
  long long minbatchsize = 0;
  long long minbatchtimeout = 0;
  std::vector<std::string> inputs;
  size_t noutputs = 0;
  char *blob = nullptr; /* mem_alloc'd, so it counts against maxmemory */
  size_t bloblen = 0;
  void *handle = nullptr; /* backend model */
  size_t weights = 0;     /* what the backend reported once loaded (and optimised) */
  /* Stored with OPTIMIZE (a groundwatch extension): the backend froze and optimised the loaded
   * module. optimize_status is "ok" or why the passes could not run (the model then runs as
   * loaded). The flag, not the status, persists: loading optimises again. */
  bool optimize = false;
  std::string optimize_status;
  /* Set when the record was loaded (RDB, AOF replay, replication) but the backend could not
   * load it: a blob this libtorch cannot read, a device this host lacks, no backend. The model
   * has no handle, every use answers this reason, and it is saved back as it came (blob, device,
   * and the output names of the record), so the rest of the data still comes up. */
  std::string load_error;
  std::vector<std::string> record_outputs;
  RunStats stats;

  Model *retain() {
    refs.fetch_add(1, std::memory_order_relaxed);
    return this;
  }
  void release();
};

struct Script {
  std::atomic<int> refs{1};
  std::string device; /* as sent (see Model) */
  std::string queue;
  std::string tag;
  std::string source;
  std::vector<std::string> entry_points;
  void *handle = nullptr; /* backend script */
  /* As Model::load_error: loaded data the backend could not compile (no handle); every use
   * answers this reason, and the script is saved back as it came. */
  std::string load_error;
  size_t weights = 0;     /* tensor constants, as the backend reported them */
  RunStats stats;

  Script *retain() {
    refs.fetch_add(1, std::memory_order_relaxed);
    return this;
  }
  void release();
};

/* ==== Devices ================================================================================= */

/* RedisAI's device rule: CPU or GPU, optionally followed by ':' and digits (none allowed),
 * case-insensitive, under 10 characters in all. */
bool valid_device(const std::string &device);
/* The upper-cased copy that names the run queue and is given to the backend; the device
 * itself is kept as sent. */
std::string device_queue(const std::string &device);

/* ==== Making models and scripts ==================================================================
 * Through the backend (loaded on first use). */

/* Takes ownership of blob (mem_alloc'd) whatever the outcome. "" on success. With optimize the
 * backend also freezes and optimises the model; when it cannot, the model is still created
 * (unoptimised) and the reason is logged and kept in Model::optimize_status. With keep_failed
 * (data being loaded, never a client's store) a model the backend cannot load is still made, with
 * no handle and Model::load_error set, and returned in *out along with the error. */
std::string create_model(const std::string &device, const std::string &tag, long long batchsize,
                         long long minbatchsize, long long minbatchtimeout, char *blob,
                         size_t bloblen, Model **out, bool optimize = false,
                         bool keep_failed = false);
/* A model the backend could not load (see Model::load_error), made from its record; takes blob. */
Model *failed_model(const std::string &device, const std::string &tag, long long batchsize,
                    long long minbatchsize, long long minbatchtimeout, char *blob, size_t bloblen,
                    bool optimize, const std::string &err);
/* The error reply for using a model that did not load, or "" when it can run. */
std::string model_unusable(const Model &m);
/* keep_failed: as create_model's (a script that does not compile is kept with load_error). */
std::string create_script(const std::string &device, const std::string &tag,
                          const std::string &source, const std::vector<std::string> &entry_points,
                          Script **out, bool keep_failed = false);
/* The error reply for using a script that did not load, or "" when it can run. */
std::string script_unusable(const Script &s);

/* ==== The command form of a tensor ============================================================ */

/* Builds the `AI.TENSORSET key TYPE dims... BLOB data` argument vector (strings to be freed by
 * the caller with RedisModule_FreeString(ctx, ...)): how the AOF rewrite and replication write a
 * tensor. */
std::vector<RedisModuleString *> tensorset_args(RedisModuleCtx *ctx, const char *key, size_t keylen,
                                                const Tensor &t);

}  // namespace gw

#endif
