// torch_backend.h: what the two translation units of the TORCH backend share.
// Internal to engine/backend; the module only sees backend_api.h.
#pragma once

#include <torch/script.h>

#include <functional>
#include <string>
#include <vector>

#include "backend_api.h"

namespace gw {

// The host API given to gw_backend_init; set once, never changes afterwards.
extern const GwHostApi *host;

// An error message for the module: alloc'd with host->alloc, each CR and LF replaced by a space
// (Redis error replies are one line; RedisAI changes nothing else), never empty.
char *make_error(const std::string &message);
// The message of the exception currently being handled (call inside a catch block only).
std::string current_exception_message();

// Runs once per calling thread before torch work: applies the configured intra-op thread count
// to threads that libtorch did not create (the module's queue workers).
void init_thread();

// "CPU", "CPU:n", "GPU", "GPU:n" -> a torch device. GPU needs a CUDA build with a visible device.
c10::Device parse_device(const char *device);

// A borrowed GwTensor as a torch tensor over the same memory (no copy). Throws on STRING, an
// unknown dtype, or a byte count that does not match the shape.
at::Tensor tensor_from_gw(const GwTensor &in);
// Fills *out with host->alloc'd copies of t's shape and data (contiguous, on the CPU).
void tensor_to_gw(const at::Tensor &t, GwTensor *out);
// Frees what tensor_to_gw filled in.
void free_gw_tensor(GwTensor *t);
// GwDType for a torch dtype; throws for types that RedisAI tensors cannot hold.
int32_t gw_dtype_of(at::ScalarType type);

// Collects the tensors of a Tensor, Tuple or List value; what names the offending value in errors.
std::vector<at::Tensor> tensors_of(const c10::IValue &value, const char *what);

// Execution deadlines: MODEL_EXECUTION_TIMEOUT (torch_scripts.cpp). libtorch has no way to
// stop a running TorchScript graph from outside, so the backend puts interruption points into
// the graphs it loads (add_interruption_points: a gw::deadline() call at the start of every
// function and of every loop body) and those throw once the running call's deadline is past.
// A RunDeadline on the stack of model_run/script_run starts the clock, unless an outer run on
// this thread (a script calling redisAI.model_execute) already did: the outer deadline holds.
void set_execution_timeout(long long ms);  // 0: no limit
class RunDeadline {
 public:
  RunDeadline();
  ~RunDeadline();
  RunDeadline(const RunDeadline &) = delete;
  RunDeadline &operator=(const RunDeadline &) = delete;
  // Throws the timeout error when the deadline is past (for the end of a run that met no
  // interruption point in time).
  void check() const;

 private:
  bool owner_ = false;
};
// True when the exception being handled comes from a deadline (call inside a catch block).
bool deadline_was_hit();
std::string timeout_message();
void add_interruption_points(torch::jit::Module &module);
void add_interruption_points(torch::jit::CompilationUnit &unit);

// Calls fn on every tensor constant of block and the blocks nested in it.
void for_each_tensor_constant(torch::jit::Block *block,
                              const std::function<void(const at::Tensor &)> &fn);

// Bytes of the inputs given to a run.
size_t input_bytes(const GwTensor *inputs, size_t ninputs);

// Marks the calling thread as inside a run for the CPU allocator (torch_backend.cpp): what it
// allocates meanwhile counts as tensors of runs, and the run's inputs count against
// BACKEND_MEMORY_LIMIT. Throws when the inputs alone would pass the limit.
class RunScope {
 public:
  explicit RunScope(size_t input_bytes);
  ~RunScope();
  RunScope(const RunScope &) = delete;
  RunScope &operator=(const RunScope &) = delete;

 private:
  size_t inputs_;
};

// Scripts (torch_scripts.cpp). register_script_ops runs once, from gw_backend_init; throws on
// failure.
void register_script_ops();
char *script_compile(const char *source, size_t len, const char *device, void **script);
void script_free(void *script);
int script_has_function(const void *script, const char *name);
long long script_function_params(const void *script, const char *name, int32_t *kinds,
                                 size_t max);
size_t script_memory(const void *script);
char *script_run(void *script, const char *fn, const GwTensor *inputs, size_t ninputs,
                 const char *const *keys, size_t nkeys, const char *const *args, size_t nargs,
                 void *call_ctx, GwTensor **outputs, size_t *noutputs);

}  // namespace gw
