// test_backend.cpp: a stand-alone check of redisai_torch.so, without Redis.
//
// Usage: gw_test_backend <path/to/redisai_torch.so> <model dir>
// The model dir holds TorchScript files written by tests/engine/test_torch_backend.py:
//   add.pt      forward(a, b) -> a + b
//   pair.pt     forward(x) -> (x * 2, x.sum())
//   u8.pt       forward(x: uint8, y: uint16) -> x.float() + y.float()
//   linear.pt   a Linear(4, 3)
//   frozen.pt   a Linear(64, 64) after torch.jit.freeze (weights become graph constants)
// The program dlopen()s the backend the way the module does, gives it a host API with malloc/free
// and a tiny fake Redis (a string map), and prints one line per failed check. Exit status 0 when
// every check passed.
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backend_api.h"

namespace {

const GwBackendApi *api = nullptr;
int failures = 0;
std::mutex fake_mutex;
std::map<std::string, std::string> fake_redis;
void *add_model = nullptr;
void *const kCallCtx = reinterpret_cast<void *>(0x5eed);
using GwMemory = GwBackendMemory;
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;  // the backend caches nothing then
#else
constexpr bool kAsan = false;
#endif

void check(bool ok, const std::string &what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    failures++;
  } else {
    std::printf("ok: %s\n", what.c_str());
  }
  std::fflush(stdout);
}

std::string take_error(char *err) {
  if (!err) return "";
  std::string s(err);
  std::free(err);
  return s.empty() ? std::string("(empty error)") : s;
}

bool contains(const std::string &s, const std::string &part) {
  return s.find(part) != std::string::npos;
}

std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> logged;
std::mutex log_mutex;

void host_log(const char *level, const char *message) {
  std::lock_guard<std::mutex> lock(log_mutex);
  logged.push_back(std::string(level) + " " + message);
  std::fprintf(stderr, "[%s] %s\n", level, message);
}

char *dup_error(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

void set_string_reply(GwReply *reply, const std::string &s, int32_t type) {
  reply->type = type;
  reply->str = static_cast<char *>(std::malloc(s.size() + 1));
  std::memcpy(reply->str, s.c_str(), s.size() + 1);
  reply->len = s.size();
}

// A fake Redis: SET, GET, INCR, DEL, PING, RPUSH/LRANGE-like "LIST3" returning 3 integers strings.
char *host_redis_execute(void *call_ctx, int argc, const char *const *argv, const size_t *argvlen,
                         GwReply *reply) {
  if (call_ctx != kCallCtx) return dup_error("wrong call_ctx");
  std::vector<std::string> a;
  for (int i = 0; i < argc; i++) a.emplace_back(argv[i], argvlen[i]);
  std::lock_guard<std::mutex> lock(fake_mutex);
  std::memset(reply, 0, sizeof(*reply));
  const std::string &cmd = a[0];
  if (cmd == "SET" && a.size() == 3) {
    fake_redis[a[1]] = a[2];
    set_string_reply(reply, "OK", GW_REPLY_STRING);
  } else if (cmd == "GET" && a.size() == 2) {
    auto it = fake_redis.find(a[1]);
    if (it == fake_redis.end())
      reply->type = GW_REPLY_NIL;
    else
      set_string_reply(reply, it->second, GW_REPLY_STRING);
  } else if (cmd == "INCR" && a.size() == 2) {
    long long v = std::atoll(fake_redis[a[1]].c_str()) + 1;
    fake_redis[a[1]] = std::to_string(v);
    reply->type = GW_REPLY_INTEGER;
    reply->integer = v;
  } else if (cmd == "PING" && a.size() == 1) {
    set_string_reply(reply, "PONG", GW_REPLY_STRING);
  } else if (cmd == "LIST3") {
    reply->type = GW_REPLY_ARRAY;
    reply->nelements = 3;
    reply->elements = static_cast<GwReply *>(std::calloc(3, sizeof(GwReply)));
    for (int i = 0; i < 3; i++)
      set_string_reply(&reply->elements[i], std::to_string(i + 7), GW_REPLY_STRING);
  } else {
    set_string_reply(reply, "ERR wrong number of arguments for '" + cmd + "' command",
                     GW_REPLY_ERROR);
  }
  return nullptr;
}

void host_reply_free(GwReply *reply) {
  for (size_t i = 0; i < reply->nelements; i++) host_reply_free(&reply->elements[i]);
  std::free(reply->elements);
  std::free(reply->str);
  std::memset(reply, 0, sizeof(*reply));
}

char *host_model_execute(void *call_ctx, const char *key, size_t keylen, const GwTensor *inputs,
                         size_t ninputs, size_t noutputs, GwTensor *outputs) {
  if (call_ctx != kCallCtx) return dup_error("wrong call_ctx");
  if (std::string(key, keylen) != "add" || !add_model) return dup_error("model key is empty");
  return api->model_run(add_model, inputs, ninputs, outputs, noutputs);
}

GwHostApi host = {std::malloc, std::free, host_log, host_redis_execute, host_reply_free,
                  host_model_execute};

struct Owned {
  std::vector<int64_t> shape;
  std::vector<float> data;
  GwTensor t;
};

GwTensor float_tensor(std::vector<int64_t> &shape, std::vector<float> &data) {
  GwTensor t;
  t.dtype = GW_DTYPE_FLOAT;
  t.ndim = static_cast<int32_t>(shape.size());
  t.shape = shape.data();
  t.data = data.data();
  t.nbytes = data.size() * sizeof(float);
  return t;
}

void free_tensor(GwTensor *t) {
  std::free(t->shape);
  std::free(t->data);
}

void *load(const std::string &dir, const std::string &name, const char *device = "CPU") {
  std::string blob = read_file(dir + "/" + name);
  void *model = nullptr;
  std::string err = take_error(api->model_load(blob.data(), blob.size(), device, &model));
  check(err.empty() && model, "load " + name + (err.empty() ? "" : ": " + err));
  return model;
}

void test_models(const std::string &dir) {
  add_model = load(dir, "add.pt");
  if (!add_model) return;
  check(api->model_ninputs(add_model) == 2, "add: 2 inputs");
  check(std::string(api->model_input_name(add_model, 0)) == "a" &&
            std::string(api->model_input_name(add_model, 1)) == "b",
        "add: input names a, b");
  check(api->model_noutputs(add_model) == 1, "add: 1 output");

  std::vector<int64_t> shape = {2, 2};
  std::vector<float> a = {1, 2, 3, 4}, b = {10, 20, 30, 40};
  GwTensor in[2] = {float_tensor(shape, a), float_tensor(shape, b)};
  GwTensor out;
  std::string err = take_error(api->model_run(add_model, in, 2, &out, 1));
  check(err.empty(), "add: run " + err);
  if (err.empty()) {
    const float *o = static_cast<const float *>(out.data);
    check(out.dtype == GW_DTYPE_FLOAT && out.ndim == 2 && out.shape[0] == 2 && out.shape[1] == 2 &&
              out.nbytes == 16 && o[0] == 11 && o[3] == 44,
          "add: output values");
    free_tensor(&out);
  }
  err = take_error(api->model_run(add_model, in, 1, &out, 1));
  check(contains(err, "2 inputs") && contains(err, "1 were given"),
        "add: wrong input count: " + err);
  GwTensor outs2[2];
  err = take_error(api->model_run(add_model, in, 2, outs2, 2));
  check(contains(err, "1 output") && contains(err, "2 were expected"),
        "add: wrong output count: " + err);
  GwTensor bad = in[1];
  bad.nbytes = 12;
  GwTensor badin[2] = {in[0], bad};
  err = take_error(api->model_run(add_model, badin, 2, &out, 1));
  check(contains(err, "bytes"), "add: bad byte count: " + err);
  GwTensor str = in[1];
  str.dtype = GW_DTYPE_STRING;
  GwTensor strin[2] = {in[0], str};
  err = take_error(api->model_run(add_model, strin, 2, &out, 1));
  check(contains(err, "STRING"), "add: STRING input refused: " + err);

  // Several threads run the same model at once.
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; th++) {
    threads.emplace_back([&, th] {
      for (int i = 0; i < 200; i++) {
        std::vector<int64_t> s = {3};
        std::vector<float> x = {float(th), float(i), 1}, y = {1, 1, 1};
        GwTensor tin[2] = {float_tensor(s, x), float_tensor(s, y)};
        GwTensor tout;
        char *e = api->model_run(add_model, tin, 2, &tout, 1);
        if (e) {
          std::free(e);
          wrong++;
          continue;
        }
        const float *o = static_cast<const float *>(tout.data);
        if (o[0] != th + 1 || o[1] != i + 1 || o[2] != 2) wrong++;
        free_tensor(&tout);
      }
    });
  }
  for (auto &t : threads) t.join();
  check(wrong == 0, "add: 4 threads x 200 concurrent runs");

  // Large tensors (2 and 3 MiB: through the backend's block cache), several sizes, 4 threads.
  wrong = 0;
  threads.clear();
  for (int th = 0; th < 4; th++) {
    threads.emplace_back([&, th] {
      for (int i = 0; i < 40; i++) {
        int64_t rows = 512 + 256 * ((th + i) % 3);
        std::vector<int64_t> s = {rows, 1024};
        std::vector<float> x(static_cast<size_t>(rows) * 1024, float(th)), y(x.size(), float(i));
        GwTensor tin[2] = {float_tensor(s, x), float_tensor(s, y)};
        GwTensor tout;
        char *e = api->model_run(add_model, tin, 2, &tout, 1);
        if (e) {
          std::free(e);
          wrong++;
          continue;
        }
        const float *o = static_cast<const float *>(tout.data);
        size_t n = x.size();
        if (tout.nbytes != n * sizeof(float) || o[0] != th + i || o[n / 2] != th + i ||
            o[n - 1] != th + i)
          wrong++;
        free_tensor(&tout);
      }
    });
  }
  for (auto &t : threads) t.join();
  check(wrong == 0, "add: large tensors of several sizes, 4 threads x 40 runs");

  void *pair = load(dir, "pair.pt");
  if (pair) {
    check(api->model_noutputs(pair) == 2, "pair: 2 outputs");
    std::vector<int64_t> s = {3};
    std::vector<float> x = {1, 2, 3};
    GwTensor pin = float_tensor(s, x);
    GwTensor pout[2];
    err = take_error(api->model_run(pair, &pin, 1, pout, 2));
    check(err.empty(), "pair: run " + err);
    if (err.empty()) {
      check(static_cast<float *>(pout[0].data)[2] == 6 && pout[1].ndim == 0 &&
                static_cast<float *>(pout[1].data)[0] == 6,
            "pair: values (x*2, 0-dim sum)");
      free_tensor(&pout[0]);
      free_tensor(&pout[1]);
    }
    api->model_free(pair);
  }

  void *u8 = load(dir, "u8.pt");
  if (u8) {
    std::vector<int64_t> s = {2};
    uint8_t x[2] = {200, 3};
    uint16_t y[2] = {60000, 4};
    GwTensor uin[2];
    uin[0] = {GW_DTYPE_UINT8, 1, s.data(), x, 2};
    uin[1] = {GW_DTYPE_UINT16, 1, s.data(), y, 4};
    err = take_error(api->model_run(u8, uin, 2, &out, 1));
    check(err.empty(), "u8: run " + err);
    if (err.empty()) {
      const float *o = static_cast<const float *>(out.data);
      check(o[0] == 60200 && o[1] == 7, "u8: uint8 + uint16 values");
      free_tensor(&out);
    }
    api->model_free(u8);
  }

  void *linear = load(dir, "linear.pt");
  if (linear) {
    check(api->model_memory(linear) == (4 * 3 + 3) * sizeof(float), "linear: memory = params");
    api->model_free(linear);
  }

  void *frozen = load(dir, "frozen.pt");
  if (frozen) {
    check(api->model_memory(frozen) >= 64 * 64 * sizeof(float),
          "frozen: memory counts graph constants (" +
              std::to_string(api->model_memory(frozen)) + ")");
    api->model_free(frozen);
  }

  void *model = nullptr;
  const char garbage[] = "definitely not a zip archive";
  err = take_error(api->model_load(garbage, sizeof garbage, "CPU", &model));
  check(!model && contains(err, "PytorchStreamReader"), "garbage blob: " + err);
  std::string blob = read_file(dir + "/add.pt");
  err = take_error(api->model_load(blob.data(), blob.size(), "GPU", &model));
  check(!model && contains(err, "GPU"), "GPU device: " + err);
  err = take_error(api->model_load(blob.data(), blob.size(), "CPU:1", &model));
  check(err.empty() && model, "CPU:1 device " + err);
  if (model) api->model_free(model);
}

void test_scripts() {
  const std::string source = R"(
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[1]

def pair(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * 2, tensors[0] - 1

def nothing(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])

def int_set_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])
    res = redis.execute("GET", keys[0],)
    return redis_string_int_to_tensor(res)

def incr(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], "41")
    return redis_int_to_tensor(redis.execute("INCR", keys[0]))

def ping(tensors: List[Tensor], keys: List[str], args: List[str]):
    r = redis.execute("PING")
    return torch.tensor(len(str(r)))

def list3(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redis_int_list_to_tensor(redis.execute("LIST3"))

def missing(tensors: List[Tensor], keys: List[str], args: List[str]):
    # `r is None` is always False for an Any in TorchScript; str() of a nil reply is "None".
    r = redis.execute("GET", "no-such-key")
    if str(r) == "None":
        return torch.tensor(1)
    return torch.tensor(0)

def error(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0])
    return tensors[0]

def model(tensors: List[Tensor], keys: List[str], args: List[str]):
    out = redisAI.model_execute("add", tensors, 1)
    return out[0] * 10

def circle(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * math.pi + math.sqrt(4.0) + math.floor(math.e)

def warn(tensors: List[Tensor], keys: List[str], args: List[str]):
    warnings.warn("careful: " + args[0])
    return tensors[0]

def old_style(a, b):
    return a - b

def old_variadic(a, rest: List[Tensor]):
    return a + rest[0] + rest[1]

def takes_int(a, n: int):
    return a * n
)";
  void *script = nullptr;
  std::string err = take_error(api->script_compile(source.data(), source.size(), "CPU", &script));
  check(err.empty() && script, "script compiles " + err);
  if (!script) return;
  check(api->script_has_function(script, "bar") && !api->script_has_function(script, "nope"),
        "script_has_function");

  std::vector<int64_t> shape = {2};
  std::vector<float> a = {5, 7}, b = {1, 2}, c = {100, 200};
  GwTensor in[3] = {float_tensor(shape, a), float_tensor(shape, b), float_tensor(shape, c)};
  const char *keys[] = {"k1"};
  const char *args[] = {"12"};
  GwTensor *outs = nullptr;
  size_t n = 0;
  auto run = [&](const char *fn, size_t nin) {
    return take_error(api->script_run(script, fn, in, nin, keys, 1, args, 1, kCallCtx, &outs, &n));
  };
  auto first_value = [&]() -> double {
    if (n < 1) return NAN;
    switch (outs[0].dtype) {
      case GW_DTYPE_FLOAT: return static_cast<float *>(outs[0].data)[0];
      case GW_DTYPE_INT64: return double(static_cast<int64_t *>(outs[0].data)[0]);
      default: return NAN;
    }
  };
  auto release = [&]() {
    for (size_t i = 0; i < n; i++) free_tensor(&outs[i]);
    std::free(outs);
    outs = nullptr;
    n = 0;
  };

  err = run("bar", 2);
  check(err.empty() && n == 1 && first_value() == 6, "script bar " + err);
  release();
  err = run("pair", 1);
  check(err.empty() && n == 2 && first_value() == 10 && static_cast<float *>(outs[1].data)[1] == 6,
        "script tuple output " + err);
  release();
  err = run("nothing", 0);
  check(err.empty() && n == 0 && fake_redis["k1"] == "12", "script without outputs " + err);
  release();
  err = run("int_set_get", 0);
  check(err.empty() && n == 1 && first_value() == 12, "redis.execute SET/GET + helper " + err);
  release();
  err = run("incr", 0);
  check(err.empty() && n == 1 && first_value() == 42, "redis.execute integer reply " + err);
  release();
  err = run("ping", 0);
  check(err.empty() && n == 1 && first_value() == 4, "redis.execute without arguments " + err);
  release();
  err = run("list3", 0);
  check(err.empty() && n == 1 && outs[0].ndim == 2 && outs[0].shape[0] == 3 &&
            static_cast<int64_t *>(outs[0].data)[2] == 9,
        "redis.asList + redis_int_list_to_tensor " + err);
  release();
  err = run("missing", 0);
  check(err.empty() && n == 1 && first_value() == 1, "nil reply is None " + err);
  release();
  err = run("error", 1);
  check(contains(err, "Redis command returned an error: ERR wrong number of arguments for 'SET'") &&
            contains(err, "line") && !contains(err, "\n"),
        "error reply raises with RedisAI's prefix, on one line: " + err);
  release();
  err = run("model", 2);
  check(err.empty() && n == 1 && first_value() == 60, "redisAI.model_execute " + err);
  release();
  err = run("circle", 1);
  check(err.empty() && n == 1 && std::fabs(first_value() - (5 * M_PI + 4)) < 1e-4,
        "math constants and functions " + err);
  release();
  err = run("old_style", 2);
  check(err.empty() && n == 1 && first_value() == 4, "deprecated positional signature " + err);
  release();
  err = run("old_variadic", 3);
  check(err.empty() && n == 1 && first_value() == 106, "deprecated variadic signature " + err);
  release();
  for (int i = 0; i < 3; i++) {
    err = run("warn", 1);
    release();
  }
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    int seen = 0;
    for (const std::string &line : logged)
      if (contains(line, "warning TORCH backend: careful: 12")) seen++;
    check(err.empty() && seen == 1, "libtorch warnings go to host->log, once each " + err);
  }
  err = run("nope", 1);
  check(err == "Function does not exist: nope", "unknown function: " + err);
  err = run("old_style", 1);
  check(err == "Wrong number of inputs provided to function: old_style",
        "best effort, too few tensors: " + err);
  err = run("takes_int", 1);
  check(err == "Unsupported input type in function definition: takes_int",
        "best effort, a parameter of another type: " + err);
  {
    int32_t kinds[4] = {-1, -1, -1, -1};
    check(api->script_function_params(script, "bar", kinds, 4) == 3 &&
              kinds[0] == GW_PARAM_TENSOR_LIST && kinds[1] == GW_PARAM_STRING_LIST &&
              kinds[2] == GW_PARAM_STRING_LIST && kinds[3] == -1,
          "script_function_params of an entry point");
    check(api->script_function_params(script, "old_variadic", kinds, 1) == 2 &&
              kinds[0] == GW_PARAM_TENSOR && kinds[1] == GW_PARAM_STRING_LIST,
          "script_function_params writes at most max kinds");
    check(api->script_function_params(script, "takes_int", kinds, 4) == 2 &&
              kinds[0] == GW_PARAM_TENSOR && kinds[1] == GW_PARAM_OTHER,
          "script_function_params of other types");
    check(api->script_function_params(script, "nope", kinds, 4) == -1,
          "script_function_params of a missing function");
  }
  api->script_free(script);

  const std::string broken = "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
                             "    return undefined_thing(tensors[0])\n";
  script = nullptr;
  err = take_error(api->script_compile(broken.data(), broken.size(), "CPU", &script));
  check(!script && contains(err, "undefined_thing") && !contains(err, "\n"),
        "compile error carries the reason on one line: " + err);
  const std::string syntax = "def f(:\n";
  err = take_error(api->script_compile(syntax.data(), syntax.size(), "CPU", &script));
  check(!script && !err.empty(), "syntax error: " + err);
  err = take_error(api->script_compile(source.data(), source.size(), "GPU:0", &script));
  check(!script && contains(err, "GPU"), "script on GPU: " + err);
}

long resident_kb() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

// Runs a model and a script calling Redis and a model many times: the resident set must not grow
// (outputs, replies and interpreter state are all released).
void test_no_growth() {
  if (!add_model) return;
  const std::string source = R"(
def f(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])
    v = redis_string_int_to_tensor(redis.execute("GET", keys[0]))
    listed = redis_int_list_to_tensor(redis.execute("LIST3"))
    return redisAI.model_execute("add", tensors, 1)[0] + v, listed
)";
  void *script = nullptr;
  std::string err = take_error(api->script_compile(source.data(), source.size(), "CPU", &script));
  check(err.empty(), "leak script compiles " + err);
  if (!script) return;
  std::vector<int64_t> shape = {64, 64};
  std::vector<float> a(64 * 64, 1.0f), b(64 * 64, 2.0f);
  GwTensor in[2] = {float_tensor(shape, a), float_tensor(shape, b)};
  const char *keys[] = {"leak"};
  const char *args[] = {"5"};
  int errors = 0;
  auto round = [&](int n) {
    for (int i = 0; i < n; i++) {
      GwTensor out;
      char *e = api->model_run(add_model, in, 2, &out, 1);
      if (e) {
        std::free(e);
        errors++;
      } else {
        free_tensor(&out);
      }
      GwTensor *outs = nullptr;
      size_t nout = 0;
      e = api->script_run(script, "f", in, 2, keys, 1, args, 1, kCallCtx, &outs, &nout);
      if (e) {
        std::free(e);
        errors++;
        continue;
      }
      for (size_t k = 0; k < nout; k++) free_tensor(&outs[k]);
      std::free(outs);
      // a failing run must not leak either
      e = api->model_run(add_model, in, 1, &out, 1);
      std::free(e);
    }
  };
  round(300);
#if defined(__SANITIZE_ADDRESS__)
  // ASan's quarantine keeps freed memory resident: growth says nothing here.
  round(300);
  check(errors == 0, "leak rounds ran without errors");
  std::printf("skip: resident growth (AddressSanitizer build)\n");
  api->script_free(script);
  return;
#endif
  long before = resident_kb();
  round(3000);
  long after = resident_kb();
  check(errors == 0, "leak rounds ran without errors");
  check(after - before < 4096, "no resident growth over 3000 rounds: " + std::to_string(before) +
                                    " kB -> " + std::to_string(after) + " kB");
  api->script_free(script);
}

// ABI 5: the allocator's figures, the cache's cap and BACKEND_MEMORY_LIMIT.
void test_memory() {
  if (!add_model) return;
  const size_t MiB = 1 << 20;
  std::vector<int64_t> shape = {512, 512};  // 1 MiB of floats per tensor
  std::vector<float> a(512 * 512, 1.0f), b(512 * 512, 2.0f);
  GwTensor in[2] = {float_tensor(shape, a), float_tensor(shape, b)};
  GwMemory m;
  GwTensor out;

  api->set_memory_limits(16 * MiB, 0);
  std::string err = take_error(api->model_run(add_model, in, 2, &out, 1));
  check(err.empty(), "memory: run under no limit " + err);
  if (err.empty()) free_tensor(&out);
  api->memory_stats(&m);
  check(m.run_bytes == 0 && m.run_input_bytes == 0, "memory: nothing held by runs when idle");
  check(m.run_peak_bytes >= MiB, "memory: the peak saw the 1 MiB output");
  check(m.cache_limit_bytes == (kAsan ? 0 : 16 * MiB), "memory: cache cap as set");
  check(m.cache_bytes <= m.cache_limit_bytes && (kAsan || m.cache_bytes >= MiB),
        "memory: the output's block is cached, within the cap");

  api->set_memory_limits(16 * MiB, MiB);  // the two inputs alone are 2 MiB
  err = take_error(api->model_run(add_model, in, 2, &out, 1));
  check(contains(err, "BACKEND_MEMORY_LIMIT of 1.0 MB reached") && contains(err, "for its inputs"),
        "memory: inputs over the limit refused: " + err);
  api->set_memory_limits(16 * MiB, 2 * MiB + MiB / 2);  // inputs fit, the output does not
  err = take_error(api->model_run(add_model, in, 2, &out, 1));
  check(contains(err, "BACKEND_MEMORY_LIMIT of 2.5 MB reached") && contains(err, "for a tensor"),
        "memory: output over the limit refused: " + err);
  api->memory_stats(&m);
  check(m.refused_allocations == 2 && m.run_bytes == 0 && m.run_input_bytes == 0,
        "memory: two refusals, nothing left held");
  check(m.cache_bytes == 0, "memory: the refusal emptied the cache first");

  api->set_memory_limits(0, 0);
  err = take_error(api->model_run(add_model, in, 2, &out, 1));
  check(err.empty(), "memory: runs again without a limit " + err);
  if (err.empty()) free_tensor(&out);
  api->memory_stats(&m);
  check(m.cache_bytes == 0 && m.cache_limit_bytes == 0, "memory: cache off at cap 0");
  api->set_memory_limits(512 * MiB, 0);
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s redisai_torch.so model_dir\n", argv[0]);
    return 2;
  }
  void *handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  auto init = reinterpret_cast<GwBackendInitFn>(dlsym(handle, GW_BACKEND_INIT_SYMBOL));
  if (!init) {
    std::fprintf(stderr, "dlsym: %s\n", dlerror());
    return 2;
  }
  api = init(&host);
  if (!api) return 2;
  check(api->abi_version == GW_BACKEND_ABI_VERSION && std::string(api->name) == "TORCH",
        "abi version and name");
  std::printf("version %s\n", api->version());
  api->configure(2, 1);
  test_models(argv[2]);
  test_scripts();
  test_no_growth();
  test_memory();
  if (add_model) api->model_free(add_model);
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
