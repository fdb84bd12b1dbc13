/*
 * cmd_info.cpp: AI.INFO (a model's or script's run statistics) and AI.CONFIG (the settings that
 * can change at run time). INFO MODULES is module.cpp's.
 */
#include <mutex>
#include <string>

#include "args.h"
#include "backend.h"
#include "commands.h"
#include "exec.h"
#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

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

}  // namespace gw
