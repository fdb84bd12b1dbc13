/*
 * backend.cpp: dlopen()s the TORCH backend and offers it the host API.
 */
#include "backend.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

#include <cstring>

#include "exec.h"
#include "memory.h"
#include "objects.h"
#include "rm_api.h"

namespace gw {

/* ==== Host API ================================================================================ */

namespace {

void *host_alloc(size_t bytes) { return RedisModule_Alloc(bytes ? bytes : 1); }
void host_free(void *p) {
  if (p) RedisModule_Free(p);
}
void host_log(const char *level, const char *message) {
  RedisModule_Log(nullptr, level, "%s", message);
}

void reply_free_rec(GwReply *r) {
  if (!r) return;
  if (r->str) RedisModule_Free(r->str);
  if (r->elements) {
    for (size_t i = 0; i < r->nelements; i++) reply_free_rec(&r->elements[i]);
    RedisModule_Free(r->elements);
  }
  r->str = nullptr;
  r->elements = nullptr;
  r->nelements = 0;
}

const GwHostApi kHost = {host_alloc,          host_free,     host_log, script_redis_execute,
                         reply_free_rec, script_model_execute};

const GwBackendApi *g_torch = nullptr;
void *g_torch_dl = nullptr;

}  // namespace

const GwHostApi *host_api() { return &kHost; }

std::string take_backend_error(char *msg) {
  std::string s = msg ? msg : "";
  host_free(msg);
  return s;
}

void free_backend_tensor(GwTensor *t) {
  host_free(t->shape);
  host_free(t->data);
  t->shape = nullptr;
  t->data = nullptr;
}

/* ==== Loading ================================================================================= */

const GwBackendApi *torch_backend() { return g_torch; }

std::string resolve_path(const std::string &path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

namespace {

/* dlopen() runs the file's constructors inside Redis: only files under the operator's folders
 * (Config::backend_roots), symlinks and ".." resolved first. */
bool under_backend_roots(const std::string &resolved) {
  for (const std::string &root : config.backend_roots) {
    if (root.empty()) continue;
    if (resolved.size() > root.size() && resolved.compare(0, root.size(), root) == 0 &&
        (root.back() == '/' || resolved[root.size()] == '/'))
      return true;
  }
  return false;
}

}  // namespace

std::string load_torch_backend(const std::string &given, bool trusted) {
  if (g_torch) return {};
  std::string path = given;
  if (!path.empty() && path[0] != '/') path = config.backends_path + "/" + path;
  if (!trusted) {
    std::string resolved = resolve_path(path);
    if (resolved.empty()) {
      RedisModule_Log(nullptr, "warning", "could not load backend %s: no such file", path.c_str());
      return "ERR error loading backend";
    }
    if (!under_backend_roots(resolved)) {
      std::string roots;
      for (const std::string &r : config.backend_roots) roots += (roots.empty() ? "" : ", ") + r;
      RedisModule_Log(nullptr, "warning", "refused to load backend %s (%s): outside %s",
                      path.c_str(), resolved.c_str(), roots.c_str());
      return "ERR backend " + resolved +
             " is outside the backends folders set at load time (" + roots +
             "); put it there, or name it with the TORCH load-time argument";
    }
    path = resolved;
  }
  void *dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    RedisModule_Log(nullptr, "warning", "could not load backend %s: %s", path.c_str(), dlerror());
    return "ERR error loading backend";
  }
  auto init = reinterpret_cast<GwBackendInitFn>(dlsym(dl, GW_BACKEND_INIT_SYMBOL));
  const GwBackendApi *api = init ? init(&kHost) : nullptr;
  if (!api || api->abi_version < GW_BACKEND_ABI_MIN_VERSION ||
      api->abi_version > GW_BACKEND_ABI_VERSION) {
    RedisModule_Log(nullptr, "warning", "backend %s did not start (missing %s or ABI mismatch)",
                    path.c_str(), GW_BACKEND_INIT_SYMBOL);
    dlclose(dl);
    return "ERR error loading backend";
  }
  api->configure(static_cast<int>(config.intra_op_parallelism),
                 static_cast<int>(config.inter_op_parallelism));
  if (api->abi_version >= 3 && api->set_execution_timeout)
    api->set_execution_timeout(config.model_execution_timeout);
  else if (config.model_execution_timeout > 0)
    RedisModule_Log(nullptr, "warning",
                    "backend %s cannot enforce MODEL_EXECUTION_TIMEOUT (ABI %u)", path.c_str(),
                    api->abi_version);
  g_torch_dl = dl;
  g_torch = api;
  apply_memory_limits();
  RedisModule_Log(nullptr, "notice", "loaded TORCH backend %s from %s", api->version(), path.c_str());
  return {};
}

const GwBackendApi *require_torch(std::string *err) {
  if (g_torch) return g_torch;
  std::string e = load_torch_backend(config.backends_path + "/redisai_torch/redisai_torch.so", false);
  if (!e.empty()) {
    *err = "ERR could not load the TORCH backend";
    return nullptr;
  }
  return g_torch;
}

/* ==== Memory limits ========================================================================== */

unsigned long long cpu_cache_bytes() {
  if (config.torch_cpu_cache_mb >= 0) return static_cast<unsigned long long>(config.torch_cpu_cache_mb) << 20;
  return default_cpu_cache_bytes(config.maxmemory);
}

void apply_memory_limits() {
  if (!g_torch || g_torch->abi_version < 5) return;
  g_torch->set_memory_limits(static_cast<size_t>(cpu_cache_bytes()),
                             static_cast<size_t>(config.backend_memory_limit) << 20);
}

GwBackendMemory backend_memory() {
  GwBackendMemory m;
  memset(&m, 0, sizeof m);
  if (g_torch && g_torch->abi_version >= 5) g_torch->memory_stats(&m);
  return m;
}

}  // namespace gw
