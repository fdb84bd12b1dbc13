/*
 * cmd_model.cpp: AI.MODELSTORE, AI.MODELSET (deprecated), AI.MODELGET, AI.MODELDEL,
 * AI.MODELEXECUTE, AI.MODELRUN (deprecated) and AI._MODELSCAN. Models are built by create_model
 * (objects.h), which RDB loading uses too.
 */
#include <cstring>
#include <string>

#include "args.h"
#include "commands.h"
#include "exec.h"
#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Store arguments ========================================================================= */

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

}  // namespace

/* ==== Replies ================================================================================= */

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

namespace {

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

}  // namespace

/* ==== Execute-op parsing ====================================================================== */

namespace {

/* The arity check, then the model the op names at argv[1] when it can run (it may be one kept
 * from data the backend could not load). */
std::string runnable_model(RedisModuleCtx *ctx, const Args &a, int min_argc, Model **model) {
  if (a.argc < min_argc) return wrong_arity(a);
  std::string err = get_model(ctx, a.argv[1], model);
  if (err.empty()) err = model_unusable(**model);
  return err;
}

/* The op runs the model (a reference of its own) on the model's queue. */
void bind_model(Op *op, Model *model) {
  op->kind = OpKind::ModelExecute;
  op->model = model->retain();
  op->device = model->queue;
}

}  // namespace

/* AI.MODELEXECUTE key INPUTS n k... OUTPUTS n k... [TIMEOUT ms] */
std::string parse_modelexecute(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                               long long *timeout) {
  Model *model = nullptr;
  std::string err = runnable_model(ctx, a, 8, &model);
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
  bind_model(op, model);
  return {};
}

/* AI.MODELRUN key [TIMEOUT t] INPUTS k... OUTPUTS k... */
std::string parse_modelrun(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                           long long *timeout) {
  Model *model = nullptr;
  std::string err = runnable_model(ctx, a, 6, &model);
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
  bind_model(op, model);
  return {};
}

/* ==== Commands ================================================================================ */

namespace {

int model_store(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, bool deprecated) {
  Args a{argv, argc};
  ModelArgs m;
  m.trusted = replayed(ctx);
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

}  // namespace

int ModelStore_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return model_store(ctx, argv, argc, false);
}
int ModelSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return model_store(ctx, argv, argc, true);
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
  return delete_and_reply(ctx, argv[1]);
}

int ModelExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_modelexecute, RunKind::ModelExecute);
}
int ModelRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  return single_execute(ctx, argv, argc, parse_modelrun, RunKind::ModelExecute);
}

int ModelScan_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  if (argc != 1) return reply_arity(ctx, argv);
  return reply_scan(ctx, ModelType);
}

}  // namespace gw
