/*
 * exec.h: execution off the main thread. A request (MODELEXECUTE, SCRIPTEXECUTE or a DAG) is
 * parsed on the main thread into a Run, its client blocked, and the Run handed to the queue of
 * the device its next model/script op needs. Workers sleep on the queue's condition variable,
 * take the next ready request (merging compatible MODELEXECUTEs into one batch), run it, and
 * unblock the client; the reply and the keyspace writes happen back on the main thread.
 */
#ifndef GROUNDWATCH_EXEC_H
#define GROUNDWATCH_EXEC_H

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend_api.h"
#include "batching.h"
#include "objects.h"
#include "rm_api.h"

namespace gw {

/* ==== Requests ================================================================================ */
enum class OpKind { TensorSet, TensorGet, ModelExecute, ScriptExecute };
enum class GetFormat { None, Blob, Values };

struct Op {
  OpKind kind = OpKind::TensorSet;
  /* TENSORSET: target name and the tensor built at parse time; TENSORGET: source name. */
  std::string name;
  Tensor *set_tensor = nullptr;
  bool meta = false;
  GetFormat format = GetFormat::None;
  /* MODELEXECUTE / SCRIPTEXECUTE */
  Model *model = nullptr;
  Script *script = nullptr;
  std::string fn;
  std::vector<std::string> inputs, outputs, keys, args;
  std::string device; /* queue it runs on; empty for TENSORSET/TENSORGET */
  /* Outcome */
  bool done = false;
  std::string error;
  Tensor *result = nullptr; /* TENSORGET */

  Op() = default;
  Op(Op &&o) noexcept;
  Op(const Op &) = delete;
  ~Op();
};

enum class RunKind { ModelExecute, ScriptExecute, Dag };

struct Run {
  RunKind kind = RunKind::Dag;
  RedisModuleBlockedClient *bc = nullptr;
  std::vector<Op> ops;
  size_t cur = 0;
  /* Tensors by name: LOADed keys and op outputs (the DAG's local namespace). */
  std::unordered_map<std::string, Tensor *> tensors;
  /* Names written to the keyspace on success (OUTPUTS, or a DAG's PERSIST). */
  std::vector<std::string> persist;
  long long timeout_ms = 0;
  int64_t start_ms = 0;
  bool timed_out = false;
  bool failed = false;
  BatchCandidate cand; /* filled when queued */
  /* The ACL user of the client that sent the request, captured on the main thread (a worker's
   * context has no user): script callbacks check their commands and keys against it.
   * has_user false: a client without a user (Redis's own), which ACLs do not restrict. */
  std::string user;
  bool has_user = false;
  /* Bytes this run may still allocate under maxmemory (-1: no maxmemory), counted against its
   * TENSORSETs, model and script outputs and TENSORGET replies. */
  long long mem_budget = -1;
  long long reply_bytes = 0;
  /* An error for the whole request (queue full, too many queues, out of memory): replied
   * instead of the per-op results. */
  std::string fatal;

  ~Run();
  void put(const std::string &name, Tensor *t); /* takes the reference */
};

int64_t now_ms();

/* Creates the run queue of a (normalised) device and its workers if it does not exist yet; the
 * error reply when it cannot. */
std::string start_queue(const std::string &device);

/* Main thread, client already blocked. A run that cannot be queued is finished with
 * run->fatal set. */
void submit(Run *run);

/* Bytes a TENSORGET reply of t in this format takes in the client's output buffer (an upper
 * bound for VALUES). */
size_t reply_size(const Tensor &t, GetFormat fmt);

/* ==== Observability =========================================================================== */
struct QueueInfo {
  std::string device;
  size_t depth = 0;
  long long batches = 0;
  long long batch_samples = 0;
  std::vector<double> cpu_seconds; /* one per worker thread */
};
std::vector<QueueInfo> queue_infos();

/* ==== Callbacks a running script makes (see GwHostApi) ======================================== */
extern "C" char *script_redis_execute(void *call_ctx, int argc, const char *const *argv,
                                      const size_t *argvlen, GwReply *reply);
extern "C" char *script_model_execute(void *call_ctx, const char *key, size_t keylen,
                                      const GwTensor *inputs, size_t ninputs, size_t noutputs,
                                      GwTensor *outputs);

}  // namespace gw

#endif
