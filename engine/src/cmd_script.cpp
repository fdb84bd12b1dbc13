/*
 * cmd_script.cpp: AI.SCRIPTSTORE, AI.SCRIPTSET (deprecated), AI.SCRIPTGET, AI.SCRIPTDEL,
 * AI.SCRIPTEXECUTE, AI.SCRIPTRUN (deprecated) and AI._SCRIPTSCAN. Scripts are built by
 * create_script (objects.h), which RDB loading uses too.
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

/* ==== Execute-op parsing ====================================================================== */

namespace {

/* The arity check, then the script the op names at argv[1] when it can run (it may be one kept
 * from data the backend could not load). */
std::string runnable_script(RedisModuleCtx *ctx, const Args &a, int min_argc, Script **script) {
  if (a.argc < min_argc) return wrong_arity(a);
  std::string err = get_script(ctx, a.argv[1], script);
  if (err.empty()) err = script_unusable(**script);
  return err;
}

/* The op runs the script (a reference of its own) on the script's queue. */
void bind_script(Op *op, Script *script) {
  op->kind = OpKind::ScriptExecute;
  op->script = script->retain();
  op->device = script->queue;
}

}  // namespace

/* AI.SCRIPTEXECUTE key fn [KEYS n k...] [INPUTS n t...] [ARGS n a...] [OUTPUTS n o...] [TIMEOUT ms]
 * Error texts are RedisAI 1.2's, so clients matching on them keep working. */
std::string parse_scriptexecute(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                                long long *timeout) {
  Script *script = nullptr;
  std::string err = runnable_script(ctx, a, 3, &script);
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
  bind_script(op, script);
  return {};
}

/* AI.SCRIPTRUN key fn [TIMEOUT t] INPUTS k... [$ k...] OUTPUTS k... */
std::string parse_scriptrun(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                            long long *timeout) {
  Script *script = nullptr;
  std::string err = runnable_script(ctx, a, 4, &script);
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
  bind_script(op, script);
  return {};
}

/* ==== Commands ================================================================================ */

namespace {

/* AI.SCRIPTSTORE key device [TAG t] ENTRY_POINTS n fn... SOURCE src;
 * deprecated = AI.SCRIPTSET key device [TAG t] SOURCE src. */
int script_store(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, bool deprecated) {
  /* The smallest SCRIPTSTORE: key device ENTRY_POINTS 1 fn SOURCE src. */
  if (argc < (deprecated ? 5 : 8)) return reply_arity(ctx, argv);
  Args a{argv, argc};
  /* As model_store: replayed or replicated scripts that do not compile here are kept. */
  bool trusted = replayed(ctx);
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

}  // namespace

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
  return delete_and_reply(ctx, argv[1]);
}

int ScriptExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_scriptexecute, RunKind::ScriptExecute);
}
int ScriptRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_scriptrun, RunKind::ScriptExecute);
}

int ScriptScan_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  if (argc != 1) return reply_arity(ctx, argv);
  return reply_scan(ctx, ScriptType);
}

}  // namespace gw
