// torch_scripts.cpp: TorchScript scripts and the operators they call.
//
// Scripts are compiled from source with a resolver that maps the names RedisAI 1.2 scripts use:
//   torch.* / math.* / warnings.warn -> aten operators (math.pi, e, tau, inf, nan: constants)
//   redis.execute(cmd, args...) -> Any      (the reply: int, str, float, None or a list; an error
//                                             reply raises)
//   redis.asList(value) -> List[Any]
//   redisAI.model_execute(key, [tensors], n) -> List[Tensor]
// and the reply helpers RedisAI documented for script authors (redis_string_int_to_tensor,
// redis_string_float_to_tensor, redis_int_to_tensor, redis_int_list_to_tensor,
// redis_hash_to_tensor), which a script may call without defining them (its own definitions win).
//
// The operators reach Redis through the host API with the call_ctx of the script that is running
// on this thread (a thread_local set by script_run).
#include <c10/core/DeviceGuard.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/api/compilation_unit.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/runtime/custom_operator.h>
#include <torch/csrc/jit/runtime/operator.h>
#include <torch/script.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include "torch_backend.h"

namespace gw {
namespace {

thread_local void *current_call_ctx = nullptr;
thread_local bool in_script = false;

// ---------------------------------------------------------------------------------------------
// Deadlines (see torch_backend.h). Why interruption points in the graphs: the TorchScript
// interpreter has no cancellation hook (exceptions thrown from RecordFunction observers are
// caught and logged by libtorch), and a run cannot be abandoned safely: a thread left running
// keeps a core busy and the run's tensors alive, and killing a thread inside libtorch is
// undefined. A gw::deadline() node is an ordinary operator call, so throwing there unwinds the
// interpreter like any failing operator and frees everything the run held.

std::atomic<long long> timeout_ms{0};
thread_local bool has_deadline = false;
thread_local std::chrono::steady_clock::time_point deadline;
thread_local bool deadline_hit = false;

const c10::Symbol &deadline_symbol() {
  static const c10::Symbol sym = c10::Symbol::fromQualString("gw::deadline");
  return sym;
}

void check_deadline_now() {
  if (has_deadline && std::chrono::steady_clock::now() >= deadline) {
    deadline_hit = true;
    throw std::runtime_error(timeout_message());
  }
}

// gw::deadline() -> ()
void op_deadline(torch::jit::Stack &) { check_deadline_now(); }

void prepend_point(torch::jit::Graph &graph, torch::jit::Block *block) {
  auto first = block->nodes().begin();
  if (first != block->nodes().end() && first->kind() == deadline_symbol()) return;
  block->prependNode(graph.create(deadline_symbol(), 0));
}

void add_points(torch::jit::Graph &graph, torch::jit::Block *block) {
  for (torch::jit::Node *node : block->nodes()) {
    for (torch::jit::Block *inner : node->blocks()) add_points(graph, inner);
    if (node->kind() == c10::prim::Loop) prepend_point(graph, node->blocks()[0]);
  }
}

void add_points(const std::shared_ptr<torch::jit::Graph> &graph) {
  add_points(*graph, graph->block());
  prepend_point(*graph, graph->block());
}

// ---------------------------------------------------------------------------------------------
// Operators

c10::IValue reply_to_ivalue(const GwReply &reply) {
  switch (reply.type) {
    case GW_REPLY_NIL: return c10::IValue();
    case GW_REPLY_INTEGER: return c10::IValue(static_cast<int64_t>(reply.integer));
    case GW_REPLY_DOUBLE: return c10::IValue(reply.dbl);
    case GW_REPLY_STRING: return c10::IValue(std::string(reply.str ? reply.str : "", reply.len));
    case GW_REPLY_ERROR:
      // RedisAI's words; the host words the calls that got no reply the same way.
      throw std::runtime_error("Redis command returned an error: " +
                               std::string(reply.str ? reply.str : "error", reply.len));
    case GW_REPLY_ARRAY: {
      c10::impl::GenericList list(c10::AnyType::get());
      list.reserve(reply.nelements);
      for (size_t i = 0; i < reply.nelements; i++)
        list.push_back(reply_to_ivalue(reply.elements[i]));
      return c10::IValue(std::move(list));
    }
    default: throw std::runtime_error("unknown reply type from redis.execute");
  }
}

void require_script_context(const char *op) {
  if (!in_script)
    throw std::runtime_error(std::string(op) + " can only be called from a running script");
}

// redis::execute(str cmd, str[] args=[]) -> Any
void op_redis_execute(torch::jit::Stack &stack) {
  require_script_context("redis.execute");
  check_deadline_now();
  c10::List<std::string> args = torch::jit::pop(stack).to<c10::List<std::string>>();
  std::string cmd = torch::jit::pop(stack).toStringRef();
  std::vector<std::string> words;
  words.reserve(args.size() + 1);
  words.push_back(cmd);
  for (size_t i = 0; i < args.size(); i++) words.push_back(args.get(i));
  std::vector<const char *> argv;
  std::vector<size_t> argvlen;
  for (const std::string &w : words) {
    argv.push_back(w.data());
    argvlen.push_back(w.size());
  }
  if (!host->redis_execute) throw std::runtime_error("redis.execute is not available");
  GwReply reply;
  std::memset(&reply, 0, sizeof(reply));
  char *err = host->redis_execute(current_call_ctx, static_cast<int>(argv.size()), argv.data(),
                                  argvlen.data(), &reply);
  if (err) {
    std::string message(err);
    host->free(err);
    throw std::runtime_error(message);
  }
  c10::IValue value;
  try {
    value = reply_to_ivalue(reply);
  } catch (...) {
    if (host->reply_free) host->reply_free(&reply);
    throw;
  }
  if (host->reply_free) host->reply_free(&reply);
  torch::jit::push(stack, std::move(value));
}

// redis::asList(Any value) -> Any[]
void op_as_list(torch::jit::Stack &stack) {
  c10::IValue value = torch::jit::pop(stack);
  if (!value.isList())
    throw std::runtime_error("redis.asList: the value is a " + value.type()->repr_str() +
                             ", not a list");
  c10::impl::GenericList list(c10::AnyType::get());
  for (const c10::IValue &e : value.toListRef()) list.push_back(e);
  torch::jit::push(stack, c10::IValue(std::move(list)));
}

// redisAI::model_execute(str model_key, Tensor[] inputs, int num_outputs) -> Tensor[]
void op_model_execute(torch::jit::Stack &stack) {
  require_script_context("redisAI.model_execute");
  int64_t noutputs = torch::jit::pop(stack).toInt();
  std::vector<at::Tensor> inputs = torch::jit::pop(stack).toTensorVector();
  std::string key = torch::jit::pop(stack).toStringRef();
  if (noutputs < 0) throw std::runtime_error("redisAI.model_execute: negative number of outputs");
  if (!host->model_execute) throw std::runtime_error("redisAI.model_execute is not available");

  std::vector<at::Tensor> held;  // contiguous CPU copies that the GwTensor views point into
  std::vector<std::vector<int64_t>> shapes;
  std::vector<GwTensor> in(inputs.size());
  held.reserve(inputs.size());
  shapes.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); i++) {
    at::Tensor t = inputs[i].detach();
    if (!t.device().is_cpu()) t = t.to(at::kCPU);
    t = t.contiguous();
    if (t.is_conj()) t = t.resolve_conj();
    if (t.is_neg()) t = t.resolve_neg();
    held.push_back(t);
    shapes.emplace_back(t.sizes().begin(), t.sizes().end());
    in[i].dtype = gw_dtype_of(t.scalar_type());
    in[i].ndim = static_cast<int32_t>(t.dim());
    in[i].shape = shapes.back().data();
    in[i].data = const_cast<void *>(t.const_data_ptr());
    in[i].nbytes = t.nbytes();
  }
  std::vector<GwTensor> out(static_cast<size_t>(noutputs));
  for (GwTensor &o : out) std::memset(&o, 0, sizeof(o));
  char *err = host->model_execute(current_call_ctx, key.data(), key.size(), in.data(), in.size(),
                                  static_cast<size_t>(noutputs), out.data());
  if (err) {
    std::string message(err);
    host->free(err);
    for (GwTensor &o : out) free_gw_tensor(&o);
    throw std::runtime_error(message);
  }
  c10::List<at::Tensor> results;
  std::exception_ptr failure;
  for (GwTensor &o : out) {
    if (failure) {
      free_gw_tensor(&o);
      continue;
    }
    try {
      at::Tensor view = tensor_from_gw(o);
      // Take ownership of the host buffer: freed with host->free when torch drops the tensor.
      void *data = o.data;
      at::Tensor owned = torch::from_blob(
          view.data_ptr(), view.sizes(), [data](void *) { if (data) host->free(data); },
          view.options());
      o.data = nullptr;
      if (o.shape) host->free(o.shape);
      o.shape = nullptr;
      results.push_back(owned);
    } catch (...) {
      failure = std::current_exception();
      free_gw_tensor(&o);
    }
  }
  if (failure) std::rethrow_exception(failure);
  torch::jit::push(stack, c10::IValue(std::move(results)));
}

// redis::execute.noargs(str cmd) -> Any (the same, for commands without arguments)
void op_redis_execute_noargs(torch::jit::Stack &stack) {
  torch::jit::push(stack, c10::List<std::string>());
  op_redis_execute(stack);
}

}  // namespace

void set_execution_timeout(long long ms) { timeout_ms.store(ms > 0 ? ms : 0); }

std::string timeout_message() {
  return "execution timed out: it ran longer than MODEL_EXECUTION_TIMEOUT (" +
         std::to_string(timeout_ms.load()) + " ms)";
}

RunDeadline::RunDeadline() {
  if (has_deadline) return;  // nested in a run that set its own
  deadline_hit = false;
  long long ms = timeout_ms.load();
  if (ms <= 0) return;
  owner_ = true;
  has_deadline = true;
  deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
}

RunDeadline::~RunDeadline() {
  if (owner_) has_deadline = false;
}

void RunDeadline::check() const { check_deadline_now(); }

bool deadline_was_hit() { return deadline_hit; }

// Before the first run only: executors copy a function's graph when it is first called.
// get_functions() keeps a null slot for every method removed with unsafeRemoveMethod, which
// torch::jit::freeze does to the submodule methods it inlines: the unit of a frozen (OPTIMIZE)
// model always has such holes.
void add_interruption_points(torch::jit::CompilationUnit &unit) {
  for (torch::jit::Function *fn : unit.get_functions())
    if (fn && fn->isGraphFunction()) add_points(torch::jit::toGraphFunction(*fn).graph());
}

void add_interruption_points(torch::jit::Module &module) {
  add_interruption_points(*module._ivalue()->compilation_unit());
  for (const torch::jit::Module &sub : module.modules())
    for (const torch::jit::Method &method : sub.get_methods()) add_points(method.graph());
}

// Registered from gw_backend_init rather than by a static initialiser, so that a failure is an
// error the module can report instead of an exception thrown while redis-server dlopen()s us.
void register_script_ops() {
  static std::once_flag once;
  std::call_once(once, [] {
    // The ops have side effects: CONSERVATIVE keeps the compiler from dropping or reordering them.
    torch::jit::RegisterOperators ops({
        torch::jit::Operator("redis::execute(str cmd, str[] args) -> Any", op_redis_execute,
                             c10::AliasAnalysisKind::CONSERVATIVE),
        torch::jit::Operator("redis::execute.noargs(str cmd) -> Any", op_redis_execute_noargs,
                             c10::AliasAnalysisKind::CONSERVATIVE),
        torch::jit::Operator("redis::asList(Any value) -> Any[]", op_as_list,
                             c10::AliasAnalysisKind::FROM_SCHEMA),
        torch::jit::Operator(
            "redisAI::model_execute(str model_key, Tensor[] inputs, int num_outputs) -> Tensor[]",
            op_model_execute, c10::AliasAnalysisKind::CONSERVATIVE),
        torch::jit::Operator("gw::deadline() -> ()", op_deadline,
                             c10::AliasAnalysisKind::CONSERVATIVE),
    });
  });
}

namespace {

// ---------------------------------------------------------------------------------------------
// Compilation

// The conversion helpers RedisAI documented for scripts that read Redis replies.
// redis_int_to_tensor was documented as taking an int; it takes Any here so that it also accepts
// redis.execute()'s reply directly (an int still converts to Any).
const char *const kHelpersSource = R"TS(
def redis_string_int_to_tensor(redis_value: Any):
    return torch.tensor(int(str(redis_value)))

def redis_string_float_to_tensor(redis_value: Any):
    return torch.tensor(float(str(redis_value)))

def redis_int_to_tensor(redis_value: Any):
    return torch.tensor(int(str(redis_value)))

def redis_int_list_to_tensor(redis_value: Any):
    values = redis.asList(redis_value)
    l = [torch.tensor(int(str(v))).reshape(1, 1) for v in values]
    return torch.cat(l, dim=0)

def redis_hash_to_tensor(redis_value: Any):
    values = redis.asList(redis_value)
    l = [torch.tensor(int(str(v))).reshape(1, 1) for v in values]
    return torch.cat(l, dim=0)
)TS";

// `math`: the constants as Python has them, everything else (math.sqrt, math.log, ...) as the aten
// operator of that name, which is what TorchScript compiles Python's math functions to.
struct MathModule : public torch::jit::BuiltinModule {
  MathModule() : torch::jit::BuiltinModule("aten") {}
  std::shared_ptr<torch::jit::SugaredValue> attr(const torch::jit::SourceRange &loc,
                                                 torch::jit::GraphFunction &m,
                                                 const std::string &field) override {
    static const std::pair<const char *, double> kConstants[] = {
        {"pi", M_PI},
        {"e", M_E},
        {"tau", 2 * M_PI},
        {"inf", std::numeric_limits<double>::infinity()},
        {"nan", std::numeric_limits<double>::quiet_NaN()},
    };
    for (const auto &[name, value] : kConstants) {
      if (field == name)
        return std::make_shared<torch::jit::SimpleValue>(m.graph()->insertConstant(value, loc));
    }
    return torch::jit::BuiltinModule::attr(loc, m, field);
  }
};

struct ScriptResolver : public torch::jit::Resolver {
  explicit ScriptResolver(std::shared_ptr<torch::jit::CompilationUnit> helpers)
      : helpers_(std::move(helpers)) {}

  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string &name,
                                                         torch::jit::GraphFunction &,
                                                         const torch::jit::SourceRange &) override {
    if (name == "torch" || name == "warnings")
      return std::make_shared<torch::jit::BuiltinModule>("aten");
    if (name == "math") return std::make_shared<MathModule>();
    if (name == "redis") return std::make_shared<torch::jit::BuiltinModule>("redis");
    if (name == "redisAI") return std::make_shared<torch::jit::BuiltinModule>("redisAI");
    if (helpers_) {
      if (torch::jit::Function *fn = helpers_->find_function(c10::QualifiedName(name)))
        return std::make_shared<torch::jit::FunctionValue>(fn);
    }
    return nullptr;
  }

  c10::TypePtr resolveType(const std::string &, const torch::jit::SourceRange &) override {
    return nullptr;
  }

 private:
  std::shared_ptr<torch::jit::CompilationUnit> helpers_;
};

// Compiled once, kept for the life of the process (scripts' graphs call into it).
std::shared_ptr<torch::jit::CompilationUnit> helpers_unit() {
  static std::shared_ptr<torch::jit::CompilationUnit> unit = [] {
    auto cu = std::make_shared<torch::jit::CompilationUnit>();
    cu->define(std::nullopt, kHelpersSource, std::make_shared<ScriptResolver>(nullptr), nullptr);
    add_interruption_points(*cu);
    return cu;
  }();
  return unit;
}

struct Script {
  std::shared_ptr<torch::jit::CompilationUnit> unit;
  c10::Device device{c10::kCPU};
};

bool is_list_of(const c10::TypePtr &t, c10::TypeKind element) {
  return t->kind() == c10::TypeKind::ListType &&
         t->expectRef<c10::ListType>().getElementType()->kind() == element;
}

bool is_entry_signature(const c10::FunctionSchema &schema) {
  const auto &params = schema.arguments();
  return params.size() == 3 && is_list_of(params[0].type(), c10::TypeKind::TensorType) &&
         is_list_of(params[1].type(), c10::TypeKind::StringType) &&
         is_list_of(params[2].type(), c10::TypeKind::StringType);
}

// Arguments for fn: the RedisAI 1.2 signature (tensors, keys, args), or RedisAI's best-effort
// binding for any other function (scripts written for the deprecated AI.SCRIPTSET/SCRIPTRUN,
// or loaded from RedisAI 1.0-1.2.3 RDB files without entry points): each Tensor parameter takes
// the next input, a List[Tensor] parameter takes the rest and ends the binding; keys and args
// are not passed. Error texts are RedisAI's.
std::vector<c10::IValue> make_arguments(const c10::FunctionSchema &schema,
                                        std::vector<at::Tensor> &tensors,
                                        const std::vector<std::string> &keys,
                                        const std::vector<std::string> &args) {
  std::vector<c10::IValue> stack;
  if (is_entry_signature(schema)) {
    stack.emplace_back(c10::List<at::Tensor>(tensors));
    stack.emplace_back(c10::List<std::string>(keys));
    stack.emplace_back(c10::List<std::string>(args));
    return stack;
  }
  size_t next_tensor = 0;
  for (const c10::Argument &p : schema.arguments()) {
    const c10::TypePtr &t = p.type();
    if (t->kind() == c10::TypeKind::TensorType) {
      if (next_tensor >= tensors.size())
        throw std::runtime_error("Wrong number of inputs provided to function: " + schema.name());
      stack.emplace_back(tensors[next_tensor++]);
    } else if (is_list_of(t, c10::TypeKind::TensorType)) {
      std::vector<at::Tensor> rest(tensors.begin() + static_cast<std::ptrdiff_t>(next_tensor),
                                   tensors.end());
      next_tensor = tensors.size();
      stack.emplace_back(c10::List<at::Tensor>(rest));
      break;
    } else {
      throw std::runtime_error("Unsupported input type in function definition: " +
                               schema.name());
    }
  }
  if (next_tensor < tensors.size())
    throw std::runtime_error("function " + schema.name() + " takes " + std::to_string(next_tensor) +
                             " input tensors but " + std::to_string(tensors.size()) +
                             " were given");
  return stack;
}

struct ScriptContextGuard {
  void *saved_ctx;
  bool saved_in;
  explicit ScriptContextGuard(void *ctx) : saved_ctx(current_call_ctx), saved_in(in_script) {
    current_call_ctx = ctx;
    in_script = true;
  }
  ~ScriptContextGuard() {
    current_call_ctx = saved_ctx;
    in_script = saved_in;
  }
  ScriptContextGuard(const ScriptContextGuard &) = delete;
  ScriptContextGuard &operator=(const ScriptContextGuard &) = delete;
};

}  // namespace

char *script_compile(const char *source, size_t len, const char *device, void **out) {
  if (out) *out = nullptr;
  try {
    init_thread();
    auto script = std::make_unique<Script>();
    script->device = parse_device(device);
    script->unit = std::make_shared<torch::jit::CompilationUnit>();
    script->unit->define(std::nullopt, std::string(source, len),
                         std::make_shared<ScriptResolver>(helpers_unit()), nullptr);
    add_interruption_points(*script->unit);
    *out = script.release();
    return nullptr;
  } catch (...) {
    return make_error(current_exception_message());
  }
}

void script_free(void *script) {
  try {
    delete static_cast<Script *>(script);
  } catch (...) {
  }
}

int script_has_function(const void *script, const char *name) {
  try {
    const Script *s = static_cast<const Script *>(script);
    return name && s->unit->find_function(c10::QualifiedName(name)) != nullptr;
  } catch (...) {
    return 0;
  }
}

size_t script_memory(const void *script) {
  try {
    const Script *s = static_cast<const Script *>(script);
    std::unordered_set<const void *> seen;
    size_t total = 0;
    auto add = [&](const at::Tensor &t) {
      if (t.defined() && seen.insert(t.storage().unsafeGetStorageImpl()).second)
        total += t.storage().nbytes();
    };
    for (torch::jit::Function *f : s->unit->get_functions())
      if (f->isGraphFunction()) for_each_tensor_constant(toGraphFunction(*f).graph()->block(), add);
    return total;
  } catch (...) {
    return 0;
  }
}

long long script_function_params(const void *script, const char *name, int32_t *kinds,
                                 size_t max) {
  try {
    const Script *s = static_cast<const Script *>(script);
    torch::jit::Function *function =
        name ? s->unit->find_function(c10::QualifiedName(name)) : nullptr;
    if (!function) return -1;
    const auto &params = function->getSchema().arguments();
    for (size_t i = 0; i < params.size() && i < max; i++) {
      const c10::TypePtr &t = params[i].type();
      kinds[i] = t->kind() == c10::TypeKind::TensorType           ? GW_PARAM_TENSOR
                 : is_list_of(t, c10::TypeKind::TensorType)       ? GW_PARAM_TENSOR_LIST
                 : is_list_of(t, c10::TypeKind::StringType)       ? GW_PARAM_STRING_LIST
                                                                  : GW_PARAM_OTHER;
    }
    return static_cast<long long>(params.size());
  } catch (...) {
    return -1;
  }
}

char *script_run(void *script, const char *fn, const GwTensor *inputs, size_t ninputs,
                 const char *const *keys, size_t nkeys, const char *const *args, size_t nargs,
                 void *call_ctx, GwTensor **outputs, size_t *noutputs) {
  *outputs = nullptr;
  *noutputs = 0;
  GwTensor *out = nullptr;
  size_t filled = 0;
  try {
    init_thread();
    RunDeadline run_deadline;
    Script *s = static_cast<Script *>(script);
    torch::jit::Function *function = fn ? s->unit->find_function(c10::QualifiedName(fn)) : nullptr;
    if (!function)
      throw std::runtime_error(std::string("Function does not exist: ") + (fn ? fn : ""));
    // Declared first so that it ends last, after every tensor of the run is gone.
    RunScope run(input_bytes(inputs, ninputs));
    ScriptContextGuard context(call_ctx);
    c10::InferenceMode guard;
    c10::OptionalDeviceGuard device_guard;
    if (!s->device.is_cpu()) device_guard.reset_device(s->device);
    std::vector<at::Tensor> tensors;
    tensors.reserve(ninputs);
    for (size_t i = 0; i < ninputs; i++) {
      at::Tensor t = tensor_from_gw(inputs[i]);
      if (s->device != t.device()) t = t.to(s->device);
      tensors.push_back(std::move(t));
    }
    std::vector<std::string> key_list(keys, keys + nkeys);
    std::vector<std::string> arg_list(args, args + nargs);
    std::vector<c10::IValue> stack =
        make_arguments(function->getSchema(), tensors, key_list, arg_list);
    c10::IValue result = (*function)(std::move(stack));
    run_deadline.check();
    std::vector<at::Tensor> outs = tensors_of(result, "script");
    if (!outs.empty()) {
      out = static_cast<GwTensor *>(host->alloc(sizeof(GwTensor) * outs.size()));
      if (!out) throw std::runtime_error("out of memory");
      std::memset(out, 0, sizeof(GwTensor) * outs.size());
      for (; filled < outs.size(); filled++) tensor_to_gw(outs[filled], &out[filled]);
    }
    *outputs = out;
    *noutputs = outs.size();
    return nullptr;
  } catch (...) {
    if (out) {
      for (size_t i = 0; i < filled; i++) free_gw_tensor(&out[i]);
      host->free(out);
    }
    if (deadline_was_hit()) return make_error(timeout_message());
    return make_error(current_exception_message());
  }
}

}  // namespace gw
