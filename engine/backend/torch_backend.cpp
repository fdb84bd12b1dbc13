// torch_backend.cpp: the TORCH backend's entry point, models and tensor conversion.
//
// Implements GwBackendApi (engine/src/backend_api.h) over the libtorch of the installed torch
// wheel. Every entry point catches every exception: nothing thrown by libtorch may reach the
// module (a C caller inside redis-server).
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <unordered_map>
#include <exception>
#include <functional>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include "torch_backend.h"

namespace gw {

const GwHostApi *host = nullptr;

namespace {

std::atomic<int> configured_intra_threads{0};

// Error replies are single lines: as RedisAI, each CR and each LF becomes one space and nothing
// else changes (clients compare these texts).
std::string one_line(const std::string &text) {
  std::string out = text;
  for (char &c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

}  // namespace

char *make_error(const std::string &message) {
  std::string text = one_line(message);
  if (text.empty()) text = "unknown error in the TORCH backend";
  char *err = static_cast<char *>(host->alloc(text.size() + 1));
  if (err) std::memcpy(err, text.c_str(), text.size() + 1);
  return err;
}

std::string current_exception_message() {
  try {
    throw;
  } catch (const c10::Error &e) {
    return e.what_without_backtrace();
  } catch (const std::exception &e) {
    return e.what();
  } catch (...) {
    return "unknown exception in the TORCH backend";
  }
}

void init_thread() {
  thread_local int applied = -1;
  int wanted = configured_intra_threads.load();
  if (applied == wanted) return;
  // Sets the calling thread's OpenMP/MKL thread count from the global setting.
  at::init_num_threads();
  applied = wanted;
}

c10::Device parse_device(const char *device) {
  std::string d = device ? device : "CPU";
  std::string kind = d;
  int index = -1;
  size_t colon = d.find(':');
  if (colon != std::string::npos) {
    kind = d.substr(0, colon);
    std::string num = d.substr(colon + 1);
    // RedisAI's rule (checked by the module too): digits only, possibly none, at most 5.
    if (num.size() > 5 || num.find_first_not_of("0123456789") != std::string::npos)
      throw std::runtime_error("Invalid DEVICE " + d);
    if (!num.empty()) index = std::stoi(num);
  }
  if (kind == "CPU") return c10::Device(c10::kCPU);
  if (kind == "GPU") {
    if (!torch::cuda::is_available())
      throw std::runtime_error("GPU device " + d +
                               " requested but this libtorch build has no CUDA support or no "
                               "CUDA device is visible");
    int count = static_cast<int>(torch::cuda::device_count());
    if (index >= count)
      throw std::runtime_error("GPU device " + d + " requested but only " +
                               std::to_string(count) + " CUDA device(s) are visible");
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index < 0 ? 0 : index));
  }
  throw std::runtime_error("Invalid DEVICE " + d);
}

namespace {

at::ScalarType scalar_type_of(int32_t dtype) {
  switch (dtype) {
    case GW_DTYPE_FLOAT: return at::kFloat;
    case GW_DTYPE_DOUBLE: return at::kDouble;
    case GW_DTYPE_INT8: return at::kChar;
    case GW_DTYPE_INT16: return at::kShort;
    case GW_DTYPE_INT32: return at::kInt;
    case GW_DTYPE_INT64: return at::kLong;
    case GW_DTYPE_UINT8: return at::kByte;
    case GW_DTYPE_UINT16: return at::kUInt16;
    case GW_DTYPE_BOOL: return at::kBool;
    case GW_DTYPE_STRING:
      throw std::runtime_error("STRING tensors are not supported by the TORCH backend");
    default:
      throw std::runtime_error("unknown tensor data type " + std::to_string(dtype));
  }
}

}  // namespace

int32_t gw_dtype_of(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return GW_DTYPE_FLOAT;
    case at::kDouble: return GW_DTYPE_DOUBLE;
    case at::kChar: return GW_DTYPE_INT8;
    case at::kShort: return GW_DTYPE_INT16;
    case at::kInt: return GW_DTYPE_INT32;
    case at::kLong: return GW_DTYPE_INT64;
    case at::kByte: return GW_DTYPE_UINT8;
    case at::kUInt16: return GW_DTYPE_UINT16;
    case at::kBool: return GW_DTYPE_BOOL;
    default:
      throw std::runtime_error(std::string("tensors of type ") + c10::toString(type) +
                               " cannot be stored (supported: FLOAT, DOUBLE, INT8, INT16, INT32, "
                               "INT64, UINT8, UINT16, BOOL)");
  }
}

at::Tensor tensor_from_gw(const GwTensor &in) {
  at::ScalarType type = scalar_type_of(in.dtype);
  if (in.ndim < 0) throw std::runtime_error("invalid tensor: negative number of dimensions");
  std::vector<int64_t> sizes(in.shape, in.shape + in.ndim);
  int64_t numel = 1;
  for (int64_t s : sizes) {
    if (s < 0) throw std::runtime_error("invalid tensor: negative dimension");
    numel *= s;
  }
  size_t expected = static_cast<size_t>(numel) * c10::elementSize(type);
  if (expected != in.nbytes)
    throw std::runtime_error("invalid tensor: " + std::to_string(in.nbytes) +
                             " bytes of data for a shape that needs " + std::to_string(expected));
  // from_blob needs a non-null pointer even for empty tensors.
  static char empty_blob[8];
  void *data = in.data ? in.data : static_cast<void *>(empty_blob);
  return torch::from_blob(data, sizes, torch::TensorOptions().dtype(type));
}

void tensor_to_gw(const at::Tensor &tensor, GwTensor *out) {
  std::memset(out, 0, sizeof(*out));
  int32_t dtype = gw_dtype_of(tensor.scalar_type());
  at::Tensor t = tensor.detach();
  if (!t.device().is_cpu()) t = t.to(at::kCPU);
  t = t.contiguous();
  if (t.is_conj()) t = t.resolve_conj();
  if (t.is_neg()) t = t.resolve_neg();
  size_t ndim = static_cast<size_t>(t.dim());
  size_t nbytes = t.nbytes();
  int64_t *shape = static_cast<int64_t *>(host->alloc(sizeof(int64_t) * (ndim ? ndim : 1)));
  void *data = host->alloc(nbytes ? nbytes : 1);
  if (!shape || !data) {
    if (shape) host->free(shape);
    if (data) host->free(data);
    throw std::runtime_error("out of memory copying an output tensor");
  }
  for (size_t i = 0; i < ndim; i++) shape[i] = t.size(static_cast<int64_t>(i));
  if (nbytes) std::memcpy(data, t.const_data_ptr(), nbytes);
  out->dtype = dtype;
  out->ndim = static_cast<int32_t>(ndim);
  out->shape = shape;
  out->data = data;
  out->nbytes = nbytes;
}

void free_gw_tensor(GwTensor *t) {
  if (t->shape) host->free(t->shape);
  if (t->data) host->free(t->data);
  t->shape = nullptr;
  t->data = nullptr;
}

std::vector<at::Tensor> tensors_of(const c10::IValue &value, const char *what) {
  std::vector<at::Tensor> out;
  auto bad = [&](const c10::IValue &v) {
    return std::runtime_error(std::string(what) + " returned a value of type " +
                              v.type()->repr_str() +
                              "; expected a Tensor, or a tuple or list of Tensors");
  };
  if (value.isTensor()) {
    out.push_back(value.toTensor());
  } else if (value.isTuple()) {
    for (const c10::IValue &e : value.toTupleRef().elements()) {
      if (!e.isTensor()) throw bad(value);
      out.push_back(e.toTensor());
    }
  } else if (value.isTensorList()) {
    for (const at::Tensor &t : value.toTensorVector()) out.push_back(t);
  } else if (value.isList()) {
    for (const c10::IValue &e : value.toListRef()) {
      if (!e.isTensor()) throw bad(value);
      out.push_back(e.toTensor());
    }
  } else if (value.isNone()) {
    // no outputs
  } else {
    throw bad(value);
  }
  return out;
}

void for_each_tensor_constant(torch::jit::Block *block,
                              const std::function<void(const at::Tensor &)> &fn) {
  for (torch::jit::Node *node : block->nodes()) {
    if (node->kind() == c10::prim::Constant &&
        node->output()->type()->kind() == c10::TypeKind::TensorType) {
      if (auto value = torch::jit::toIValue(node->output())) fn(value->toTensor());
    }
    for (torch::jit::Block *inner : node->blocks()) for_each_tensor_constant(inner, fn);
  }
}

namespace {

// ---------------------------------------------------------------------------------------------
// Models

struct Model {
  torch::jit::Module module;
  c10::Device device{c10::kCPU};
  std::vector<std::string> input_names;  // forward's arguments without self
  size_t required_inputs = 0;            // arguments without a default value
  bool list_input = false;               // forward(self, xs: List[Tensor]): inputs are packed
  size_t noutputs = 1;                   // 0: forward returns a List (count known at run time)
  size_t memory = 0;
};

size_t module_memory(const torch::jit::Module &module) {
  std::unordered_set<const void *> seen;
  size_t total = 0;
  auto add = [&](const at::Tensor &t) {
    if (!t.defined()) return;
    const void *key = t.storage().unsafeGetStorageImpl();
    if (!seen.insert(key).second) return;
    total += t.storage().nbytes();
  };
  for (const at::Tensor &p : module.parameters(/*recurse=*/true)) add(p);
  for (const at::Tensor &b : module.buffers(/*recurse=*/true)) add(b);
  // A frozen model (torch.jit.freeze) holds its weights as graph constants instead.
  for (const torch::jit::Method &method : module.get_methods())
    for_each_tensor_constant(method.graph()->block(), add);
  return total;
}

const char *backend_version() { return TORCH_VERSION; }

void backend_configure(int intra_op_threads, int inter_op_threads) {
  try {
    if (intra_op_threads > 0) {
      at::set_num_threads(intra_op_threads);
      configured_intra_threads.store(intra_op_threads);
    }
    if (inter_op_threads > 0) {
      // The inter-op pool can be sized only once, before it starts.
      static std::once_flag once;
      std::call_once(once, [&] {
        try {
          at::set_num_interop_threads(inter_op_threads);
        } catch (...) {
          host->log("warning", ("TORCH backend: cannot set INTER_OP_PARALLELISM: " +
                                current_exception_message())
                                   .c_str());
        }
      });
    }
  } catch (...) {
    host->log("warning",
              ("TORCH backend: cannot configure threads: " + current_exception_message()).c_str());
  }
}

char *model_load(const void *blob, size_t len, const char *device, void **out) {
  if (out) *out = nullptr;
  try {
    init_thread();
    c10::Device dev = parse_device(device);
    std::istringstream stream(std::string(static_cast<const char *>(blob), len));
    auto model = std::make_unique<Model>();
    model->device = dev;
    model->module = torch::jit::load(stream, dev);
    model->module.eval();
    add_interruption_points(model->module);
    auto method = model->module.find_method("forward");
    if (!method) throw std::runtime_error("the TorchScript model has no forward() method");
    const c10::FunctionSchema &schema = method->function().getSchema();
    const auto &args = schema.arguments();
    for (size_t i = 1; i < args.size(); i++) {  // 0 is self
      model->input_names.push_back(args[i].name());
      if (!args[i].default_value()) model->required_inputs = i;
    }
    if (args.size() == 2) {
      const c10::TypePtr &t = args[1].type();
      if (t->kind() == c10::TypeKind::ListType &&
          t->expectRef<c10::ListType>().getElementType()->kind() == c10::TypeKind::TensorType)
        model->list_input = true;
    }
    const auto &returns = schema.returns();
    if (returns.size() == 1) {
      const c10::TypePtr &rt = returns[0].type();
      if (rt->kind() == c10::TypeKind::TupleType)
        model->noutputs = rt->expectRef<c10::TupleType>().elements().size();
      else if (rt->kind() == c10::TypeKind::ListType)
        model->noutputs = 0;
      else
        model->noutputs = 1;
    }
    model->memory = module_memory(model->module);
    *out = model.release();
    return nullptr;
  } catch (...) {
    return make_error(current_exception_message());
  }
}

void model_free(void *model) {
  try {
    delete static_cast<Model *>(model);
  } catch (...) {
  }
}

size_t model_ninputs(const void *model) {
  return static_cast<const Model *>(model)->input_names.size();
}

const char *model_input_name(const void *model, size_t index) {
  const Model *m = static_cast<const Model *>(model);
  return index < m->input_names.size() ? m->input_names[index].c_str() : nullptr;
}

size_t model_noutputs(const void *model) { return static_cast<const Model *>(model)->noutputs; }

size_t model_memory(const void *model) { return static_cast<const Model *>(model)->memory; }

// Freezes the model (weights become graph constants) and runs libtorch's inference passes
// (conv/batch-norm folding, conv-add/relu fusion, MKLDNN layouts where they pay). The result
// cannot be saved, which is why this happens here, after the blob is loaded. Called before the
// model is published, so nothing runs it meanwhile. On failure the model stays as loaded.
char *model_optimize(void *model) {
  Model *m = static_cast<Model *>(model);
  try {
    init_thread();
    if (!m->device.is_cpu()) throw std::runtime_error("optimisation is for CPU models only");
    torch::jit::Module frozen = torch::jit::freeze(m->module);
    torch::jit::Module optimized = torch::jit::optimize_for_inference(frozen);
    if (!optimized.find_method("forward"))
      throw std::runtime_error("the optimised model has no forward() method");
    add_interruption_points(optimized);
    m->module = optimized;
    m->memory = module_memory(m->module);
    return nullptr;
  } catch (...) {
    return make_error(current_exception_message());
  }
}

std::string count_word(size_t n, const char *word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

char *model_run(void *model, const GwTensor *inputs, size_t ninputs, GwTensor *outputs,
                size_t noutputs) {
  Model *m = static_cast<Model *>(model);
  size_t filled = 0;
  try {
    init_thread();
    RunDeadline run_deadline;
    size_t total = m->input_names.size();
    if (!m->list_input && (ninputs < m->required_inputs || ninputs > total)) {
      throw std::runtime_error("model expects " + count_word(total, "input") + " but " +
                               std::to_string(ninputs) + " were given");
    }
    if (m->noutputs != 0 && noutputs != m->noutputs) {
      throw std::runtime_error("model returns " + count_word(m->noutputs, "output") + " but " +
                               std::to_string(noutputs) + " were expected");
    }
    // Declared first so that it ends last, after every tensor of the run is gone.
    RunScope run(input_bytes(inputs, ninputs));
    c10::InferenceMode guard;
    // GPU:n: make device n current for the kernels this thread launches.
    c10::OptionalDeviceGuard device_guard;
    if (!m->device.is_cpu()) device_guard.reset_device(m->device);
    std::vector<at::Tensor> tensors;
    tensors.reserve(ninputs);
    for (size_t i = 0; i < ninputs; i++) {
      at::Tensor t = tensor_from_gw(inputs[i]);
      if (m->device != t.device()) t = t.to(m->device);
      tensors.push_back(std::move(t));
    }
    std::vector<c10::IValue> stack;
    if (m->list_input) {
      stack.emplace_back(c10::List<at::Tensor>(tensors));
    } else {
      for (auto &t : tensors) stack.emplace_back(std::move(t));
    }
    c10::IValue result = m->module.forward(std::move(stack));
    run_deadline.check();
    std::vector<at::Tensor> outs = tensors_of(result, "model");
    if (outs.size() != noutputs) {
      throw std::runtime_error("model returned " + count_word(outs.size(), "output") + " but " +
                               std::to_string(noutputs) + " were expected");
    }
    for (; filled < outs.size(); filled++) tensor_to_gw(outs[filled], &outputs[filled]);
    return nullptr;
  } catch (...) {
    for (size_t i = 0; i < filled; i++) free_gw_tensor(&outputs[i]);
    if (deadline_was_hit()) return make_error(timeout_message());
    return make_error(current_exception_message());
  }
}

// libtorch's warnings (TORCH_WARN) go to the Redis log instead of redis-server's stderr, each
// distinct message once (a model that warns on every run must not flood the log).
class LogWarnings : public c10::WarningHandler {
 public:
  void process(const c10::Warning &warning) override {
    std::string text = "TORCH backend: " + one_line(warning.msg());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (seen_.size() >= 256 || !seen_.insert(text).second) return;
    }
    host->log("warning", text.c_str());
  }

 private:
  std::mutex mutex_;
  std::unordered_set<std::string> seen_;
};


}  // namespace
}  // namespace gw

namespace gw {
namespace {

// libtorch's CPU allocator, replaced so that the engine's memory outside Redis's allocator can be
// seen, cached and bounded.
//
// Seen: every live block is recorded with its size and whether a thread inside a run allocated
// it, so INFO MODULES can split weights and the rest from the tensors of runs.
//
// Cached: the default allocator takes every block from glibc malloc, which maps blocks above
// 32 MiB afresh and unmaps them on free (and, in the worker threads' arenas, gives freed heap
// pages back too): a batch's big activations are then page-faulted in again on every run. Freed
// blocks of 1 MiB and more are kept, by size, for the next run of the same shapes, up to the
// cache's cap (TORCH_CPU_CACHE_MB, set by the module through set_memory_limits; 0 turns the cache
// off). Smaller blocks go straight back to malloc.
//
// Bounded: with BACKEND_MEMORY_LIMIT set, the inputs of the runs in progress, the blocks runs
// hold and the cache may not pass it together. An allocation inside a run that would pass it
// first empties the cache, then throws: the run fails with that message, the process does not
// grow. Allocations outside runs (loading weights) are not refused: MODELSTORE is bounded by
// maxmemory through the blob, and the weights are reported apart.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    bool in_run = run_depth > 0;
    size_t size = n < kMinCached ? n : (n + kGranule - 1) / kGranule * kGranule;
    void *p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (size >= kMinCached) p = take_cached(size);
      if (!p && in_run && limit_ && held_by_runs() + size > limit_) {
        free_cached_until(0);
        if (held_by_runs() + size > limit_) {
          refused_++;
          TORCH_CHECK(false, limit_message(size));
        }
      }
      if (!p) p = c10::alloc_cpu(size);
      if (p) {
        live_[p] = Block{size, in_run};
        allocated_ += size;
        if (in_run) {
          run_ += size;
          if (run_ > run_peak_) run_peak_ = run_;
        }
      }
    }
    return {p, p, &release, c10::Device(c10::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void *dest, const void *src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static void release(void *p) {
    if (p) instance->give_back(p);
  }

  // The inputs of a run count against the limit while it runs; a run whose inputs alone would
  // pass it (the cache can always be emptied) is refused before anything is allocated.
  void begin_run(size_t input_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (limit_ && run_inputs_ + run_ + input_bytes > limit_) {
      refused_++;
      throw std::runtime_error(limit_message(input_bytes, "its inputs"));
    }
    run_inputs_ += input_bytes;
    free_cached_until(limit_ ? limit_ - run_inputs_ - run_ : cache_cap_);
  }
  void end_run(size_t input_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    run_inputs_ -= input_bytes;
  }

  void set_limits(size_t cache_bytes, size_t limit_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    cache_cap_ = kCanCache ? cache_bytes : 0;
    limit_ = limit_bytes;
    size_t room = limit_ > run_inputs_ + run_ ? limit_ - run_inputs_ - run_ : 0;
    free_cached_until(limit_ && room < cache_cap_ ? room : cache_cap_);
  }

  void stats(GwBackendMemory *out) {
    std::lock_guard<std::mutex> lock(mutex_);
    out->allocated_bytes = allocated_;
    out->run_bytes = run_;
    out->run_peak_bytes = run_peak_;
    out->run_input_bytes = run_inputs_;
    out->cache_bytes = cached_;
    out->cache_limit_bytes = cache_cap_;
    out->memory_limit_bytes = limit_;
    out->refused_allocations = refused_;
  }

  static CachingCpuAllocator *instance;
  // > 0 while the calling thread is inside model_run or script_run (nested: a script's
  // redisAI.model_execute).
  static thread_local int run_depth;

 private:
  static constexpr size_t kMinCached = 1 << 20;
  static constexpr size_t kGranule = 64 << 10;
#if defined(__SANITIZE_ADDRESS__)
  static constexpr bool kCanCache = false;  // reusing blocks would hide use-after-free from ASan
#else
  static constexpr bool kCanCache = true;
#endif
  // Until the module sets it (a host older than ABI 5 never does): the old default.
  static constexpr size_t kDefaultCache = kCanCache ? size_t(512) << 20 : 0;

  struct Block {
    size_t size;
    bool in_run;
  };

  size_t held_by_runs() const { return run_inputs_ + run_ + cached_; }

  static std::string mb(size_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(bytes) / (1 << 20));
    return buf;
  }

  std::string limit_message(size_t wanted, const char *what = "a tensor") const {
    return "BACKEND_MEMORY_LIMIT of " + mb(limit_) + " MB reached: the run needed " + mb(wanted) +
           " MB for " + what + " while runs held " + mb(run_inputs_ + run_) + " MB (inputs " +
           mb(run_inputs_) + " MB, tensors " + mb(run_) + " MB) and the block cache " +
           mb(cached_) + " MB; send smaller batches or raise the limit (AI.CONFIG " +
           "BACKEND_MEMORY_LIMIT <MB>)";
  }

  void *take_cached(size_t size) {
    auto it = free_.find(size);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void *p = it->second.back();
    it->second.pop_back();
    if (it->second.empty()) free_.erase(it);
    cached_ -= size;
    return p;
  }

  void free_cached_until(size_t cap) {
    while (cached_ > cap && !free_.empty()) {
      auto it = free_.begin();
      c10::free_cpu(it->second.back());
      it->second.pop_back();
      cached_ -= it->first;
      if (it->second.empty()) free_.erase(it);
    }
  }

  void give_back(void *p) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        Block b = it->second;
        live_.erase(it);
        allocated_ -= b.size;
        if (b.in_run) run_ -= b.size;
        bool fits = cached_ + b.size <= cache_cap_ && (!limit_ || held_by_runs() + b.size <= limit_);
        if (b.size >= kMinCached && fits) {
          free_[b.size].push_back(p);
          cached_ += b.size;
          return;
        }
      }
    }
    c10::free_cpu(p);
  }

  std::mutex mutex_;
  std::unordered_map<void *, Block> live_;                // every block in use
  std::unordered_map<size_t, std::vector<void *>> free_;  // large blocks kept: by size
  size_t cache_cap_ = kDefaultCache;
  size_t limit_ = 0;
  size_t cached_ = 0;
  size_t allocated_ = 0;
  size_t run_ = 0;
  size_t run_peak_ = 0;
  size_t run_inputs_ = 0;
  uint64_t refused_ = 0;
};

CachingCpuAllocator *CachingCpuAllocator::instance = nullptr;
thread_local int CachingCpuAllocator::run_depth = 0;

void install_cpu_allocator() {
  // Never destroyed: tensors may be freed during exit, after static destructors.
  CachingCpuAllocator::instance = new CachingCpuAllocator();
  c10::SetCPUAllocator(CachingCpuAllocator::instance, /*priority=*/1);
}

}  // namespace

size_t input_bytes(const GwTensor *inputs, size_t ninputs) {
  size_t n = 0;
  for (size_t i = 0; i < ninputs; i++) n += inputs[i].nbytes;
  return n;
}

RunScope::RunScope(size_t input_bytes) : inputs_(input_bytes) {
  CachingCpuAllocator::instance->begin_run(inputs_);
  CachingCpuAllocator::run_depth++;
}

RunScope::~RunScope() {
  CachingCpuAllocator::run_depth--;
  CachingCpuAllocator::instance->end_run(inputs_);
}

namespace {

void memory_stats(GwBackendMemory *out) {
  std::memset(out, 0, sizeof(*out));
  CachingCpuAllocator::instance->stats(out);
}

void set_memory_limits(size_t cache_bytes, size_t limit_bytes) {
  CachingCpuAllocator::instance->set_limits(cache_bytes, limit_bytes);
}

}  // namespace
}  // namespace gw

namespace gw {
namespace {

GwBackendApi api = {
    GW_BACKEND_ABI_VERSION,
    "TORCH",
    backend_version,
    backend_configure,
    model_load,
    model_free,
    model_ninputs,
    model_input_name,
    model_noutputs,
    model_memory,
    model_run,
    script_compile,
    script_free,
    script_has_function,
    script_run,
    model_optimize,
    set_execution_timeout,
    script_function_params,
    memory_stats,
    set_memory_limits,
    script_memory,
};

}  // namespace
}  // namespace gw

extern "C" __attribute__((visibility("default"))) const GwBackendApi *gw_backend_init(
    const GwHostApi *host) {
  if (!host || !host->alloc || !host->free || !host->log) return nullptr;
  gw::host = host;
  try {
    static std::once_flag allocator_once;
    std::call_once(allocator_once, gw::install_cpu_allocator);
    static gw::LogWarnings log_warnings;
    c10::WarningUtils::set_warning_handler(&log_warnings);
    gw::register_script_ops();
  } catch (...) {
    host->log("warning", ("TORCH backend: cannot register the script operators: " +
                          gw::current_exception_message())
                             .c_str());
    return nullptr;
  }
  return &gw::api;
}
