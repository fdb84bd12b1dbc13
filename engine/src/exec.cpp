/*
 * exec.cpp: device queues, worker threads, and running ops.
 */
#include "exec.h"

#include <pthread.h>
#include <time.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>

#include "backend.h"

namespace gw {

/* ==== Data structures ========================================================================= */

namespace {

struct Queue {
  std::string device;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Run *> items;
  std::vector<std::thread> threads;
  long long batches = 0;        /* under mu */
  long long batch_samples = 0;  /* under mu: sum of dim 0 over those batches */
};

/* Never destroyed: the workers live as long as the process, and destroying joinable threads
 * from exit()'s static destructors would abort Redis on shutdown. */
std::mutex &g_queues_mu = *new std::mutex();
std::map<std::string, std::unique_ptr<Queue>> &g_queues =
    *new std::map<std::string, std::unique_ptr<Queue>>();

/* What a script's host callbacks need: the blocked client gives a thread-safe context on the
 * client's database; the run carries the caller's ACL user. */
struct ScriptCallCtx {
  RedisModuleBlockedClient *bc;
  const Run *run;
};

char *host_strdup(const std::string &s) {
  char *p = static_cast<char *>(RedisModule_Alloc(s.size() + 1));
  memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

}  // namespace

Op::Op(Op &&o) noexcept
    : kind(o.kind), name(std::move(o.name)), set_tensor(o.set_tensor), meta(o.meta),
      format(o.format), model(o.model), script(o.script), fn(std::move(o.fn)),
      inputs(std::move(o.inputs)), outputs(std::move(o.outputs)), keys(std::move(o.keys)),
      args(std::move(o.args)), device(std::move(o.device)), done(o.done),
      error(std::move(o.error)), result(o.result) {
  o.set_tensor = nullptr;
  o.model = nullptr;
  o.script = nullptr;
  o.result = nullptr;
}

Op::~Op() {
  if (set_tensor) set_tensor->release();
  if (model) model->release();
  if (script) script->release();
  if (result) result->release();
}

Run::~Run() {
  for (auto &kv : tensors) kv.second->release();
}

void Run::put(const std::string &name, Tensor *t) {
  auto it = tensors.find(name);
  if (it != tensors.end()) {
    it->second->release();
    it->second = t;
  } else {
    tensors.emplace(name, t);
  }
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/* ==== Queues ================================================================================== */

namespace {

void worker_main(Queue *q);

/* The queue of a device, created with its workers on first use. Queues and their threads live
 * as long as the process, so their number is capped (MAX_DEVICE_QUEUES): device names are
 * user input. nullptr with *err set when the cap is reached or no worker could be started. */
Queue *get_queue(const std::string &device, std::string *err) {
  std::lock_guard<std::mutex> g(g_queues_mu);
  auto it = g_queues.find(device);
  if (it != g_queues.end()) return it->second.get();
  if (static_cast<long long>(g_queues.size()) >= config.max_device_queues) {
    *err = "ERR too many device queues: " + device + " would be queue number " +
           std::to_string(g_queues.size() + 1) + " but MAX_DEVICE_QUEUES is " +
           std::to_string(config.max_device_queues) +
           " (use a device already in use, or raise MAX_DEVICE_QUEUES at load time)";
    return nullptr;
  }
  auto q = std::make_unique<Queue>();
  q->device = device;
  Queue *raw = q.get();
  std::string why;
  for (long long i = 0; i < config.threads_per_queue; i++) {
    try {
      raw->threads.emplace_back(worker_main, raw);
    } catch (const std::system_error &e) {
      why = e.what();
      break;
    }
    std::string tname = ("ai_" + device).substr(0, 15);
    pthread_setname_np(raw->threads.back().native_handle(), tname.c_str());
  }
  if (raw->threads.empty()) {
    /* Nothing runs on the queue yet, so it can go. */
    *err = "ERR could not start a worker thread for device " + device + ": " + why;
    return nullptr;
  }
  if (!why.empty())
    RedisModule_Log(nullptr, "warning", "device %s runs with %zu of %lld worker threads: %s",
                    device.c_str(), raw->threads.size(), config.threads_per_queue, why.c_str());
  g_queues.emplace(device, std::move(q));
  return raw;
}

/* Describes the run's current op for the batch picker. */
void fill_candidate(Run *run, int64_t now) {
  BatchCandidate &c = run->cand;
  c = BatchCandidate();
  c.queued_ms = now;
  c.expires_ms = run->timeout_ms > 0 ? run->start_ms + run->timeout_ms : 0;
  if (run->cur >= run->ops.size()) return;
  const Op &op = run->ops[run->cur];
  if (op.kind != OpKind::ModelExecute || op.model->batchsize <= 0) return;
  std::vector<const Tensor *> ins;
  for (const std::string &n : op.inputs) {
    auto it = run->tensors.find(n);
    if (it == run->tensors.end()) return; /* not batchable; execute() reports it */
    ins.push_back(it->second);
  }
  if (ins.empty()) return;
  c.signature = batch_signature(ins);
  if (c.signature.empty()) return;
  c.model = op.model;
  c.batchsize = op.model->batchsize;
  c.minbatchsize = op.model->minbatchsize;
  c.minbatchtimeout = op.model->minbatchtimeout;
  c.size = ins[0]->shape[0];
}

/* False when the queue already holds MAX_QUEUE_LENGTH requests. */
bool push(Queue *q, Run *run) {
  fill_candidate(run, now_ms());
  {
    std::lock_guard<std::mutex> g(q->mu);
    if (static_cast<long long>(q->items.size()) >= config.max_queue_length) return false;
    q->items.push_back(run);
  }
  q->cv.notify_all();
  return true;
}

void finish(Run *run) { RedisModule_UnblockClient(run->bc, run); }

void fail(Run *run, const std::string &err) {
  run->ops[run->cur].error = err;
  run->failed = true;
}

/* Queues the run on the device's queue, or finishes it with the reason it cannot be. */
void enqueue(const std::string &device, Run *run) {
  std::string err;
  Queue *q = get_queue(device, &err);
  if (q && push(q, run)) return;
  if (q)
    err = "ERR the queue of device " + device + " is full (MAX_QUEUE_LENGTH " +
          std::to_string(config.max_queue_length) + " requests); retry later";
  run->fatal = err;
  run->failed = true;
  finish(run);
}

std::string oom_error(long long need, long long left) {
  return "OOM command not allowed: this request needs " + std::to_string(need) +
         " more bytes and only " + std::to_string(left < 0 ? 0 : left) +
         " are left under 'maxmemory'";
}

/* Counts bytes the run allocates (outputs) against what was left under maxmemory when it was
 * accepted. False, with the op failed, when they do not fit. */
bool charge(Run *run, size_t bytes) {
  if (run->mem_budget < 0) return true;
  long long b = static_cast<long long>(bytes);
  if (b > run->mem_budget) {
    fail(run, oom_error(b, run->mem_budget));
    return false;
  }
  run->mem_budget -= b;
  return true;
}

/* ==== Running ops ============================================================================= */

/* Outputs are held to the same invariants as TENSORSET (tensor.h): one that breaks them fails
 * this execution instead of becoming a key that could not be saved and loaded back. */
std::string output_fault(const GwTensor &o, size_t k) {
  uint64_t limit = static_cast<uint64_t>(config.tensor_max_bytes);
  size_t ndim = o.ndim < 0 ? kMaxRank + 1 : static_cast<size_t>(o.ndim);
  TensorFault f = check_tensor(o.dtype, o.shape, ndim, static_cast<const char *>(o.data),
                               o.nbytes, limit);
  if (f == TensorFault::None) return {};
  return "ERR output " + std::to_string(k) + " cannot be stored: " + tensor_fault_text(f, limit);
}

Tensor *adopt_output(GwTensor *o) {
  std::vector<int64_t> shape(o->shape, o->shape + o->ndim);
  RedisModule_Free(o->shape);
  o->shape = nullptr;
  char *data = static_cast<char *>(o->data);
  o->data = nullptr;
  if (!data) {
    data = static_cast<char *>(mem_alloc(1));
  }
  return tensor_adopt(o->dtype, std::move(shape), data, o->nbytes);
}

void run_model_batch(Queue *q, std::vector<Run *> &batch) {
  const Op &first = batch[0]->ops[batch[0]->cur];
  Model *model = first.model;
  const GwBackendApi *be = torch_backend();
  size_t ninputs = first.inputs.size();
  size_t noutputs = first.outputs.size();

  std::vector<GwTensor> views(ninputs);
  std::vector<Tensor *> merged;
  std::vector<int64_t> sizes;
  for (Run *r : batch) {
    const Op &op = r->ops[r->cur];
    const Tensor *t0 = op.inputs.empty() ? nullptr : r->tensors.at(op.inputs[0]);
    sizes.push_back(t0 == nullptr || t0->shape.empty() ? 0 : t0->shape[0]);
  }
  if (batch.size() == 1) {
    for (size_t i = 0; i < ninputs; i++) views[i] = batch[0]->tensors.at(first.inputs[i])->view();
  } else {
    for (size_t i = 0; i < ninputs; i++) {
      std::vector<const Tensor *> parts;
      for (Run *r : batch) parts.push_back(r->tensors.at(r->ops[r->cur].inputs[i]));
      merged.push_back(concat_dim0(parts));
      views[i] = merged.back()->view();
    }
  }

  std::vector<GwTensor> outs(noutputs);
  memset(outs.data(), 0, sizeof(GwTensor) * noutputs);
  auto t0 = std::chrono::steady_clock::now();
  char *err = be->model_run(model->handle, views.data(), ninputs, outs.data(), noutputs);
  long long us = std::chrono::duration_cast<std::chrono::microseconds>(
                     std::chrono::steady_clock::now() - t0)
                     .count();
  for (Tensor *t : merged) t->release();

  std::string error;
  if (err) error = "ERR " + take_backend_error(err);
  for (size_t k = 0; k < noutputs && error.empty(); k++) error = output_fault(outs[k], k);
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  if (error.empty() && batch.size() > 1) {
    for (size_t k = 0; k < noutputs; k++)
      if (outs[k].ndim < 1 || outs[k].shape[0] != total)
        error = "ERR Model did not generate the expected batch size";
  }

  if (!error.empty()) {
    for (size_t k = 0; k < noutputs; k++) free_backend_tensor(&outs[k]);
    for (Run *r : batch) fail(r, error);
  } else if (batch.size() == 1) {
    Run *r = batch[0];
    size_t bytes = 0;
    for (size_t k = 0; k < noutputs; k++) {
      bytes += outs[k].nbytes;
      r->put(first.outputs[k], adopt_output(&outs[k]));
    }
    charge(r, bytes);
  } else {
    int64_t off = 0;
    for (size_t b = 0; b < batch.size(); b++) {
      Run *r = batch[b];
      const Op &op = r->ops[r->cur];
      size_t bytes = 0;
      for (size_t k = 0; k < noutputs; k++) {
        Tensor *t = slice_dim0(outs[k], off, sizes[b]);
        bytes += t->nbytes;
        r->put(op.outputs[k], t);
      }
      charge(r, bytes);
      off += sizes[b];
    }
    for (size_t k = 0; k < noutputs; k++) free_backend_tensor(&outs[k]);
  }

  {
    std::lock_guard<std::mutex> g(model->stats.mu);
    model->stats.duration_us += us;
    model->stats.calls += 1;
    if (!error.empty()) {
      model->stats.errors += 1;
    } else {
      model->stats.samples += total;
      model->stats.batches += 1;
      model->stats.batch_requests += static_cast<long long>(batch.size());
    }
  }
  if (error.empty()) {
    std::lock_guard<std::mutex> g(q->mu);
    q->batches += 1;
    q->batch_samples += total;
  }
  for (Run *r : batch) {
    if (!r->failed) {
      r->ops[r->cur].done = true;
      r->cur++;
    }
  }
}

void run_script(Run *run) {
  Op &op = run->ops[run->cur];
  Script *script = op.script;
  const GwBackendApi *be = torch_backend();
  std::vector<GwTensor> views;
  for (const std::string &n : op.inputs) views.push_back(run->tensors.at(n)->view());
  std::vector<const char *> keys, args;
  for (const std::string &k : op.keys) keys.push_back(k.c_str());
  for (const std::string &a : op.args) args.push_back(a.c_str());
  ScriptCallCtx cc{run->bc, run};
  GwTensor *outs = nullptr;
  size_t nouts = 0;
  auto t0 = std::chrono::steady_clock::now();
  char *err = be->script_run(script->handle, op.fn.c_str(), views.data(), views.size(), keys.data(),
                             keys.size(), args.data(), args.size(), &cc, &outs, &nouts);
  long long us = std::chrono::duration_cast<std::chrono::microseconds>(
                     std::chrono::steady_clock::now() - t0)
                     .count();
  std::string error;
  if (err) error = "ERR " + take_backend_error(err);
  if (error.empty() && !op.outputs.empty() && nouts != op.outputs.size())
    error = "ERR Number of tensors returned by the script does not match the number of OUTPUTS";
  for (size_t k = 0; k < nouts && k < op.outputs.size() && error.empty(); k++)
    error = output_fault(outs[k], k);
  size_t out_bytes = 0;
  for (size_t k = 0; k < nouts; k++) {
    if (error.empty() && k < op.outputs.size()) {
      out_bytes += outs[k].nbytes;
      run->put(op.outputs[k], adopt_output(&outs[k]));
    } else {
      free_backend_tensor(&outs[k]);
    }
  }
  if (outs) RedisModule_Free(outs);
  {
    std::lock_guard<std::mutex> g(script->stats.mu);
    script->stats.duration_us += us;
    script->stats.calls += 1;
    if (!error.empty()) script->stats.errors += 1;
  }
  if (!error.empty()) {
    fail(run, error);
  } else if (charge(run, out_bytes)) {
    op.done = true;
    run->cur++;
  }
}

/* Runs the TENSORSET/TENSORGET ops that follow, then hands the run to the queue of its next
 * model/script op, or back to its client when it is done. */
void advance(Run *run) {
  while (!run->failed && run->cur < run->ops.size()) {
    Op &op = run->ops[run->cur];
    if (op.kind == OpKind::TensorSet) {
      run->put(op.name, op.set_tensor->retain());
    } else if (op.kind == OpKind::TensorGet) {
      auto it = run->tensors.find(op.name);
      if (it == run->tensors.end()) {
        fail(run, "ERR INPUT key cannot be found in DAG");
        break;
      }
      /* Replies are built on the main thread from these references, so what bounds them is
       * counted here: MAX_REPLY_BYTES per request, and maxmemory. */
      size_t bytes = reply_size(*it->second, op.format);
      run->reply_bytes += static_cast<long long>(bytes);
      if (run->reply_bytes > config.max_reply_bytes) {
        fail(run, "ERR the replies of this request would take more than MAX_REPLY_BYTES (" +
                      std::to_string(config.max_reply_bytes) + " bytes); fetch fewer or smaller tensors");
        break;
      }
      if (!charge(run, bytes)) break;
      op.result = it->second->retain();
    } else {
      enqueue(op.device, run);
      return;
    }
    op.done = true;
    run->cur++;
  }
  finish(run);
}

void execute(Queue *q, std::vector<Run *> &batch) {
  int64_t now = now_ms();
  std::vector<Run *> live;
  for (Run *r : batch) {
    if (r->timeout_ms > 0 && now - r->start_ms >= r->timeout_ms) {
      r->timed_out = true;
      finish(r);
    } else {
      live.push_back(r);
    }
  }
  /* Parsing guarantees every input name exists; checked again so a bug there fails one
   * request instead of throwing on a worker thread. */
  std::vector<Run *> ready;
  for (Run *r : live) {
    bool ok = true;
    if (r->cur < r->ops.size())
      for (const std::string &n : r->ops[r->cur].inputs) ok = ok && r->tensors.count(n) > 0;
    if (ok) {
      ready.push_back(r);
    } else {
      fail(r, "ERR INPUT key cannot be found in DAG");
      finish(r);
    }
  }
  live.swap(ready);
  if (live.empty()) return;
  Run *r0 = live[0];
  if (r0->cur < r0->ops.size()) {
    const Op &op = r0->ops[r0->cur];
    if (op.kind == OpKind::ModelExecute) {
      run_model_batch(q, live);
    } else if (op.kind == OpKind::ScriptExecute) {
      run_script(r0);
    }
  }
  for (Run *r : live) advance(r);
}

void worker_main(Queue *q) {
  std::unique_lock<std::mutex> lk(q->mu);
  std::vector<const BatchCandidate *> cands;
  for (;;) {
    if (q->items.empty()) {
      q->cv.wait(lk);
      continue;
    }
    cands.clear();
    for (Run *r : q->items) cands.push_back(&r->cand);
    BatchPick pick = pick_batch(cands, now_ms());
    if (pick.members.empty()) {
      if (pick.wake_ms < 0) {
        q->cv.wait(lk);
      } else {
        auto when = std::chrono::steady_clock::time_point(std::chrono::milliseconds(pick.wake_ms));
        q->cv.wait_until(lk, when);
      }
      continue;
    }
    std::vector<Run *> batch;
    for (size_t idx : pick.members) batch.push_back(q->items[idx]);
    for (auto it = pick.members.rbegin(); it != pick.members.rend(); ++it)
      q->items.erase(q->items.begin() + static_cast<long>(*it));
    lk.unlock();
    execute(q, batch);
    lk.lock();
  }
}

}  // namespace

std::string start_queue(const std::string &device) {
  std::string err;
  get_queue(device, &err);
  return err;
}

void submit(Run *run) {
  run->start_ms = now_ms();
  std::string device = "CPU";
  for (size_t i = run->cur; i < run->ops.size(); i++) {
    if (!run->ops[i].device.empty()) {
      device = run->ops[i].device;
      break;
    }
  }
  enqueue(device, run);
}

size_t reply_size(const Tensor &t, GetFormat fmt) {
  /* Meta and RESP framing; VALUES: a bulk string per float of up to 15 digits plus exponent,
   * an integer reply per integer, framing included (an upper bound). */
  size_t n = 64 + 24 * t.shape.size();
  if (fmt == GetFormat::Blob) return n + t.nbytes;
  if (fmt != GetFormat::Values) return n;
  if (t.dtype == GW_DTYPE_STRING) return n + t.nbytes + 16 * static_cast<size_t>(t.elements());
  size_t per = t.dtype == GW_DTYPE_FLOAT || t.dtype == GW_DTYPE_DOUBLE ? 32 : 24;
  return n + per * static_cast<size_t>(t.elements());
}

/* ==== Observability =========================================================================== */

std::vector<QueueInfo> queue_infos() {
  std::vector<QueueInfo> out;
  std::lock_guard<std::mutex> g(g_queues_mu);
  for (auto &kv : g_queues) {
    Queue *q = kv.second.get();
    QueueInfo info;
    info.device = q->device;
    {
      std::lock_guard<std::mutex> gq(q->mu);
      info.depth = q->items.size();
      info.batches = q->batches;
      info.batch_samples = q->batch_samples;
    }
    for (std::thread &t : q->threads) {
      clockid_t cid;
      struct timespec ts = {0, 0};
      if (pthread_getcpuclockid(t.native_handle(), &cid) == 0) clock_gettime(cid, &ts);
      info.cpu_seconds.push_back(static_cast<double>(ts.tv_sec) + ts.tv_nsec / 1e9);
    }
    out.push_back(std::move(info));
  }
  return out;
}

/* ==== Script callbacks ======================================================================== */

namespace {

void convert_reply(RedisModuleCallReply *rep, GwReply *out) {
  memset(out, 0, sizeof *out);
  switch (RedisModule_CallReplyType(rep)) {
    case REDISMODULE_REPLY_STRING:
    case REDISMODULE_REPLY_ERROR: {
      size_t len = 0;
      const char *s = RedisModule_CallReplyStringPtr(rep, &len);
      out->type = RedisModule_CallReplyType(rep) == REDISMODULE_REPLY_ERROR ? GW_REPLY_ERROR
                                                                            : GW_REPLY_STRING;
      out->str = host_strdup(std::string(s ? s : "", len));
      out->len = len;
      break;
    }
    case REDISMODULE_REPLY_INTEGER:
      out->type = GW_REPLY_INTEGER;
      out->integer = RedisModule_CallReplyInteger(rep);
      break;
    case REDISMODULE_REPLY_ARRAY: {
      out->type = GW_REPLY_ARRAY;
      size_t n = RedisModule_CallReplyLength(rep);
      out->nelements = n;
      out->elements = static_cast<GwReply *>(RedisModule_Calloc(n ? n : 1, sizeof(GwReply)));
      for (size_t i = 0; i < n; i++)
        convert_reply(RedisModule_CallReplyArrayElement(rep, i), &out->elements[i]);
      break;
    }
    default:
      out->type = GW_REPLY_NIL;
  }
}

/* Commands a script may not run whatever its caller's rights: server administration (a script
 * runs inside Redis, so these would hand out more than the script's key needs), connection and
 * transaction state of the worker's internal client, blocking and pub/sub (a script cannot wait),
 * nested scripting, and the engine's own configuration. */
const std::set<std::string> &forbidden_in_scripts() {
  static const std::set<std::string> &names = *new std::set<std::string>{
      "ACL", "AUTH", "BGREWRITEAOF", "BGSAVE", "BLMOVE", "BLMPOP", "BLPOP", "BRPOP", "BRPOPLPUSH",
      "BZMPOP", "BZPOPMAX", "BZPOPMIN", "CLIENT", "CLUSTER", "CONFIG", "DEBUG", "DISCARD", "EVAL",
      "EVALSHA", "EVALSHA_RO", "EVAL_RO", "EXEC", "FAILOVER", "FCALL", "FCALL_RO", "FUNCTION",
      "HELLO", "MODULE", "MONITOR", "MULTI", "PSUBSCRIBE", "PSYNC", "PUNSUBSCRIBE", "QUIT",
      "REPLCONF", "REPLICAOF", "RESET", "SAVE", "SCRIPT", "SELECT", "SHUTDOWN", "SLAVEOF",
      "SSUBSCRIBE", "SUBSCRIBE", "SUNSUBSCRIBE", "SWAPDB", "SYNC", "UNSUBSCRIBE", "UNWATCH", "WAIT",
      "WAITAOF", "WATCH", "AI.CONFIG"};
  return names;
}

/* The caller's ACL user (nullptr with *err set when it has been deleted meanwhile), or nullptr
 * and no error when the run has no user. Under the GIL; free with RedisModule_FreeModuleUser. */
RedisModuleUser *run_user(RedisModuleCtx *ctx, const Run *run, std::string *err) {
  if (!run->has_user) return nullptr;
  RedisModuleString *name = RedisModule_CreateString(ctx, run->user.data(), run->user.size());
  RedisModuleUser *u = RedisModule_GetModuleUserFromUserName(name);
  RedisModule_FreeString(ctx, name);
  if (!u) *err = "NOPERM the user '" + run->user + "' that ran this script no longer exists";
  return u;
}

}  // namespace

extern "C" char *script_redis_execute(void *call_ctx, int argc, const char *const *argv,
                                      const size_t *argvlen, GwReply *reply) {
  auto *cc = static_cast<ScriptCallCtx *>(call_ctx);
  if (argc < 1) return host_strdup("redis.execute needs a command name");
  std::string cmd(argv[0], argvlen[0]);
  std::string upper = cmd;
  for (char &c : upper) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  if (forbidden_in_scripts().count(upper))
    return host_strdup("redis.execute " + cmd + ": this command is not allowed from a script");
  RedisModuleCtx *ctx = RedisModule_GetThreadSafeContext(cc->bc);
  RedisModule_ThreadSafeContextLock(ctx);
  std::vector<RedisModuleString *> args;
  for (int i = 0; i < argc; i++) args.push_back(RedisModule_CreateString(ctx, argv[i], argvlen[i]));
  std::string why;
  int no_reply = 0; /* the errno of a call that gave no reply */
  /* The worker's context runs commands as Redis itself; the caller's rights are checked here,
   * with Redis's own ACL rules (command, subcommand, keys and channels). */
  RedisModuleUser *user = run_user(ctx, cc->run, &why);
  if (user) {
    errno = 0;
    if (RedisModule_ACLCheckCommandPermissions(user, args.data(), argc) != REDISMODULE_OK) {
      if (errno == ENOENT) {
        no_reply = ENOENT;
        why = "unknown command";
      } else {
        why = "NOPERM the user '" + cc->run->user +
              "' has no permissions to run this command or access its keys";
      }
    }
    RedisModule_FreeModuleUser(user);
  }
  char *err = nullptr;
  if (why.empty()) {
    errno = 0;
    /* S: refuse what Redis refuses in scripts (deny-script commands, writes a replica set or a
     * failed disk does not allow); M: deny-oom commands fail when over maxmemory. */
    RedisModuleCallReply *rep = RedisModule_Call(ctx, cmd.c_str(), "!SMv", args.data() + 1,
                                                 static_cast<size_t>(args.size() - 1));
    if (!rep) {
      no_reply = errno;
      why = errno == EBADF || errno == ENOENT ? "unknown command"
            : errno == EINVAL                 ? "wrong number of arguments"
            : errno == ENOSPC                 ? "OOM command not allowed when used memory > 'maxmemory'"
            : errno == ESPIPE                 ? "this command is not allowed from a script"
            : errno == EROFS                  ? "write commands are not allowed now (replicas or disk)"
                                              : "command failed";
    } else {
      convert_reply(rep, reply);
      RedisModule_FreeCallReply(rep);
    }
  }
  if (no_reply) {
    /* RedisAI's words for a call without a reply, strerror(errno) ("Invalid argument" for a
     * wrong argument count; error replies get the same prefix in the backend), then ours. */
    err = host_strdup(std::string("Redis command returned an error: ") + strerror(no_reply) +
                      " (redis.execute " + cmd + ": " + why + ")");
  } else if (!why.empty()) {
    err = host_strdup("redis.execute " + cmd + ": " + why);
  }
  for (RedisModuleString *s : args) RedisModule_FreeString(ctx, s);
  RedisModule_ThreadSafeContextUnlock(ctx);
  RedisModule_FreeThreadSafeContext(ctx);
  return err;
}

extern "C" char *script_model_execute(void *call_ctx, const char *key, size_t keylen,
                                      const GwTensor *inputs, size_t ninputs, size_t noutputs,
                                      GwTensor *outputs) {
  auto *cc = static_cast<ScriptCallCtx *>(call_ctx);
  Model *model = nullptr;
  RedisModuleCtx *ctx = RedisModule_GetThreadSafeContext(cc->bc);
  RedisModule_ThreadSafeContextLock(ctx);
  RedisModuleString *k = RedisModule_CreateString(ctx, key, keylen);
  std::string denied;
  RedisModuleUser *user = run_user(ctx, cc->run, &denied);
  if (user) {
    if (RedisModule_ACLCheckKeyPermissions(user, k, REDISMODULE_CMD_KEY_ACCESS) != REDISMODULE_OK)
      denied = "NOPERM the user '" + cc->run->user + "' has no permissions to read the model key";
    RedisModule_FreeModuleUser(user);
  }
  RedisModuleKey *kp = denied.empty() ? RedisModule_OpenKey(ctx, k, REDISMODULE_READ) : nullptr;
  if (kp && RedisModule_KeyType(kp) == REDISMODULE_KEYTYPE_MODULE &&
      RedisModule_ModuleTypeGetType(kp) == ModelType) {
    model = static_cast<Model *>(RedisModule_ModuleTypeGetValue(kp))->retain();
  }
  if (kp) RedisModule_CloseKey(kp);
  RedisModule_FreeString(ctx, k);
  RedisModule_ThreadSafeContextUnlock(ctx);
  RedisModule_FreeThreadSafeContext(ctx);
  if (!denied.empty()) return host_strdup(denied);
  if (!model) return host_strdup("model key is empty");
  if (!model->handle) {
    std::string why = model_unusable(*model);
    model->release();
    return host_strdup(why.substr(4));
  }
  auto t0 = std::chrono::steady_clock::now();
  char *err = torch_backend()->model_run(model->handle, inputs, ninputs, outputs, noutputs);
  long long us = std::chrono::duration_cast<std::chrono::microseconds>(
                     std::chrono::steady_clock::now() - t0)
                     .count();
  {
    std::lock_guard<std::mutex> g(model->stats.mu);
    model->stats.duration_us += us;
    model->stats.calls += 1;
    if (err) {
      model->stats.errors += 1;
    } else if (noutputs > 0 && outputs[0].ndim > 0) {
      model->stats.samples += outputs[0].shape[0];
    }
  }
  model->release();
  return err;
}

}  // namespace gw
