/*
 * cmd_dag.cpp: AI.DAGEXECUTE, AI.DAGEXECUTE_RO and the deprecated AI.DAGRUN, AI.DAGRUN_RO. A
 * DAG's ops are parsed by their families (commands.h) into one run.
 */
#include <set>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "exec.h"
#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

namespace {

/* ==== Parsing ================================================================================= */

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

/* ==== Key positions =========================================================================== */

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

/* ==== Commands ================================================================================ */

int dag_command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, DagMode mode) {
  Args a{argv, argc};
  if (RedisModule_IsKeysPositionRequest(ctx)) {
    dag_keys(ctx, a);
    return REDISMODULE_OK;
  }
  if (argc < 2 && mode.legacy)
    return reply_arity(ctx, argv);
  Run *run = new_run_or_reply(ctx, RunKind::Dag);
  if (!run) return REDISMODULE_OK;
  std::string err = parse_dag(ctx, a, mode, run);
  if (!err.empty()) {
    delete run;
    return reply_err(ctx, err);
  }
  return block_and_submit(ctx, run);
}

}  // namespace

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

}  // namespace gw
