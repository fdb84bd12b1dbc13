/*
 * cmd_execute.cpp: the main-thread half of every execute command (AI.MODELEXECUTE,
 * AI.SCRIPTEXECUTE, their deprecated forms and the DAGs): the run, its inputs and outputs in the
 * keyspace, key positions, blocking the client and the reply once the workers are done
 * (exec.h runs it).
 */
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "exec.h"
#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== The run ================================================================================= */

namespace {

const char kTxError[] = "ERR Cannot run RedisAI command within a transaction or a LUA script";

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

Run *new_run_or_reply(RedisModuleCtx *ctx, RunKind kind) {
  if (!can_block_or_reply(ctx)) return nullptr;
  Run *run = new Run();
  run->kind = kind;
  capture_user(ctx, run);
  run->mem_budget = memory_headroom(ctx);
  return run;
}

/* ==== Inputs and outputs ====================================================================== */

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

/* ==== Blocking and unblocking ================================================================= */

namespace {

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

}  // namespace

int block_and_submit(RedisModuleCtx *ctx, Run *run) {
  run->bc = RedisModule_BlockClient(ctx, Run_Reply, nullptr, Run_Free, 0);
  submit(run);
  return REDISMODULE_OK;
}

/* ==== Stand-alone execute commands ============================================================ */

int single_execute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, OpParser parser,
                   RunKind kind) {
  Args a{argv, argc};
  if (RedisModule_IsKeysPositionRequest(ctx)) {
    op_keys(ctx, a, 0, argc, false);
    return REDISMODULE_OK;
  }
  Run *run = new_run_or_reply(ctx, kind);
  if (!run) return REDISMODULE_OK;
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

}  // namespace gw
