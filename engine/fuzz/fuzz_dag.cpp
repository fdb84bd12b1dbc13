/*
 * fuzz_dag: the command layer's argument parsing, DAGs first, without Redis. The engine's
 * command files (commands.h), exec.cpp, objects.cpp and backend.cpp are linked against a small
 * in-process stand-in for the module API (strings, a keyspace holding two tensors and a model
 * that did not load, replies counted, blocking and unblocking through the real worker queue). The
 * input is one command, arguments separated by spaces; its first byte picks the command and
 * whether Redis asks for the key positions. Beyond no crash and no sanitizer report: every
 * reported key position is inside the arguments, every blocked client is unblocked, and every
 * reply is one complete reply.
 *
 * fuzz-sources: args.cpp cmd_execute.cpp cmd_tensor.cpp cmd_model.cpp cmd_script.cpp cmd_dag.cpp
 * fuzz-sources: cmd_info.cpp commands.cpp objects.cpp exec.cpp backend.cpp batching.cpp rm_api.cpp
 * fuzz-sources: memory.cpp
 */
#include <charconv>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "commands.h"
#include "fuzz_common.h"
#include "objects.h"
#include "rm_api.h"

/* What module.cpp defines in the real module. */
namespace gw {
Config config;
LoadedCounts torch_loaded;
RedisModuleType *TensorType = nullptr;
RedisModuleType *ModelType = nullptr;
RedisModuleType *ScriptType = nullptr;
}  // namespace gw

using namespace gw;

/* ==== The stand-in module API ================================================================== */

struct RedisModuleString {
  std::string s;
};
struct RedisModuleType {
  int id;
};
struct RedisModuleKey {
  std::string name;
};
struct RedisModuleBlockedClient {
  RedisModuleCmdFunc reply;
  RedisModuleFreePrivDataFunc free_privdata;
};

namespace {

RedisModuleType g_types[3] = {{0}, {1}, {2}};
struct Value {
  RedisModuleType *type;
  void *ptr;
};
std::map<std::string, Value> g_keys;
std::map<std::string, RedisModuleCmdFunc> g_commands;
int g_argc = 0;
bool g_keys_request = false;
long g_replies = 0;      /* top-level replies still owed */
std::mutex g_mu;
std::condition_variable g_cv;
void *g_unblocked = nullptr;
bool g_was_unblocked = false;
void *g_privdata = nullptr;

void free_value(const Value &v) {
  if (v.type == TensorType) static_cast<Tensor *>(v.ptr)->release();
  if (v.type == ModelType) static_cast<Model *>(v.ptr)->release();
}

/* A reply element: arrays add their length to what is owed. */
void owe(long n) { g_replies += n - 1; }

RedisModuleString *create_string(RedisModuleCtx *, const char *p, size_t n) {
  return new RedisModuleString{std::string(p, n)};
}
void free_string(RedisModuleCtx *, RedisModuleString *s) { delete s; }
const char *string_ptr_len(const RedisModuleString *s, size_t *len) {
  if (len) *len = s->s.size();
  return s->s.c_str();
}
/* As Redis' string2ll: optional '-', digits, no leading zeros, no spaces, fits in long long. */
int string_to_ll(const RedisModuleString *s, long long *v) {
  const std::string &t = s->s;
  if (t.empty() || t.size() > 20) return REDISMODULE_ERR;
  size_t start = t[0] == '-' ? 1 : 0;
  if (start == t.size() || (t[start] == '0' && t.size() > start + 1)) return REDISMODULE_ERR;
  auto res = std::from_chars(t.data(), t.data() + t.size(), *v);
  return res.ec == std::errc() && res.ptr == t.data() + t.size() ? REDISMODULE_OK : REDISMODULE_ERR;
}
RedisModuleKey *open_key(RedisModuleCtx *, RedisModuleString *name, int) {
  return new RedisModuleKey{name->s};
}
void close_key(RedisModuleKey *k) { delete k; }
int key_type(RedisModuleKey *k) {
  return g_keys.count(k->name) ? REDISMODULE_KEYTYPE_MODULE : REDISMODULE_KEYTYPE_EMPTY;
}
int delete_key(RedisModuleKey *k) {
  auto it = g_keys.find(k->name);
  if (it != g_keys.end()) {
    free_value(it->second);
    g_keys.erase(it);
  }
  return REDISMODULE_OK;
}
RedisModuleType *get_type(RedisModuleKey *k) { return g_keys.at(k->name).type; }
void *get_value(RedisModuleKey *k) { return g_keys.at(k->name).ptr; }
int set_value(RedisModuleKey *k, RedisModuleType *t, void *v) {
  auto it = g_keys.find(k->name);
  if (it != g_keys.end()) free_value(it->second);
  g_keys[k->name] = Value{t, v};
  return REDISMODULE_OK;
}
int reply_ll(RedisModuleCtx *, long long) { return owe(0), REDISMODULE_OK; }
int reply_error(RedisModuleCtx *, const char *e) {
  FUZZ_REQUIRE(e && e[0] != '\0');
  return owe(0), REDISMODULE_OK;
}
int reply_simple(RedisModuleCtx *, const char *) { return owe(0), REDISMODULE_OK; }
int reply_array(RedisModuleCtx *, long n) {
  FUZZ_REQUIRE(n >= 0 || n == REDISMODULE_POSTPONED_LEN);
  return owe(n == REDISMODULE_POSTPONED_LEN ? 0 : n), REDISMODULE_OK;
}
void reply_set_len(RedisModuleCtx *, long n) { owe(n + 1); }
int reply_buffer(RedisModuleCtx *, const char *, size_t) { return owe(0), REDISMODULE_OK; }
int reply_string(RedisModuleCtx *, RedisModuleString *) { return owe(0), REDISMODULE_OK; }
int reply_null(RedisModuleCtx *) { return owe(0), REDISMODULE_OK; }
int wrong_arity(RedisModuleCtx *) { return owe(0), REDISMODULE_OK; }
int replicate(RedisModuleCtx *, const char *, const char *, ...) { return REDISMODULE_OK; }
int replicate_verbatim(RedisModuleCtx *) { return REDISMODULE_OK; }
void log_fn(RedisModuleCtx *, const char *, const char *, ...) {}
int context_flags(RedisModuleCtx *) { return 0; }
int is_keys_request(RedisModuleCtx *) { return g_keys_request ? 1 : 0; }
void key_at(RedisModuleCtx *, int pos) { FUZZ_REQUIRE(pos > 0 && pos < g_argc); }
int create_command(RedisModuleCtx *, const char *name, RedisModuleCmdFunc fn, const char *, int,
                   int, int) {
  g_commands[name] = fn;
  return REDISMODULE_OK;
}
RedisModuleBlockedClient *block_client(RedisModuleCtx *, RedisModuleCmdFunc reply,
                                       RedisModuleCmdFunc, RedisModuleFreePrivDataFunc free_pd,
                                       long long) {
  return new RedisModuleBlockedClient{reply, free_pd};
}
/* Called by a worker thread when the run is done. */
int unblock_client(RedisModuleBlockedClient *bc, void *privdata) {
  std::lock_guard<std::mutex> g(g_mu);
  g_unblocked = bc;
  g_privdata = privdata;
  g_was_unblocked = true;
  g_cv.notify_all();
  return REDISMODULE_OK;
}
void *blocked_privdata(RedisModuleCtx *) { return g_privdata; }
/* No maxmemory, and the caller is the default user. */
float used_memory_ratio() { return 0; }
RedisModuleString *current_user(RedisModuleCtx *) { return new RedisModuleString{"default"}; }

void install_api() {
  RedisModule_Alloc = malloc;
  RedisModule_Calloc = calloc;
  RedisModule_Realloc = realloc;
  RedisModule_Free = free;
  RedisModule_CreateString = create_string;
  RedisModule_FreeString = free_string;
  RedisModule_StringPtrLen = string_ptr_len;
  RedisModule_StringToLongLong = string_to_ll;
  RedisModule_OpenKey = open_key;
  RedisModule_CloseKey = close_key;
  RedisModule_KeyType = key_type;
  RedisModule_DeleteKey = delete_key;
  RedisModule_ModuleTypeGetType = get_type;
  RedisModule_ModuleTypeGetValue = get_value;
  RedisModule_ModuleTypeSetValue = set_value;
  RedisModule_ReplyWithLongLong = reply_ll;
  RedisModule_ReplyWithError = reply_error;
  RedisModule_ReplyWithSimpleString = reply_simple;
  RedisModule_ReplyWithArray = reply_array;
  RedisModule_ReplySetArrayLength = reply_set_len;
  RedisModule_ReplyWithStringBuffer = reply_buffer;
  RedisModule_ReplyWithString = reply_string;
  RedisModule_ReplyWithNull = reply_null;
  RedisModule_WrongArity = wrong_arity;
  RedisModule_Replicate = replicate;
  RedisModule_ReplicateVerbatim = replicate_verbatim;
  RedisModule_Log = log_fn;
  RedisModule_GetContextFlags = context_flags;
  RedisModule_IsKeysPositionRequest = is_keys_request;
  RedisModule_KeyAtPos = key_at;
  RedisModule_CreateCommand = create_command;
  RedisModule_BlockClient = block_client;
  RedisModule_UnblockClient = unblock_client;
  RedisModule_GetBlockedClientPrivateData = blocked_privdata;
  RedisModule_GetUsedMemoryRatio = used_memory_ratio;
  RedisModule_GetCurrentUserName = current_user;
}

/* The keyspace every input starts from: tensors "a" (FLOAT 2) and "s" (STRING 1), and a model
 * "m" that did not load (so MODELEXECUTE ops parse up to their model and stop there). */
void clear_keyspace() {
  for (auto &kv : g_keys) free_value(kv.second);
  g_keys.clear();
}

void reset_keyspace() {
  clear_keyspace();
  Tensor *a = nullptr, *s = nullptr;
  FUZZ_REQUIRE(tensor_from_values(GW_DTYPE_FLOAT, {2}, {{"1", 1}, {"2", 1}}, &a).empty());
  FUZZ_REQUIRE(tensor_from_values(GW_DTYPE_STRING, {1}, {{"x", 1}}, &s).empty());
  g_keys["a"] = Value{TensorType, a};
  g_keys["s"] = Value{TensorType, s};
  char *blob = static_cast<char *>(malloc(1));
  g_keys["m"] = Value{ModelType, failed_model("CPU", "", 0, 0, 0, blob, 0, false, "fuzzing")};
}

const char *const kCommands[] = {"ai.dagexecute", "ai.dagexecute_ro", "ai.dagrun",
                                 "ai.dagrun_ro",  "ai.tensorset",     "ai.tensorget",
                                 "ai.modelexecute", "ai.info"};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  install_api();
  TensorType = &g_types[0];
  ModelType = &g_types[1];
  ScriptType = &g_types[2];
  config.tensor_max_bytes = 1 << 20; /* zero-filled tensors stay cheap to fuzz */
  FUZZ_REQUIRE(register_commands(nullptr) == REDISMODULE_OK);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 4096) return 0;
  const char *name = kCommands[(data[0] & 0x7f) % (sizeof kCommands / sizeof kCommands[0])];
  g_keys_request = data[0] & 0x80;
  std::vector<RedisModuleString *> argv{new RedisModuleString{name}};
  std::string word;
  for (size_t i = 1; i <= size; i++) {
    if (i == size || data[i] == ' ') {
      argv.push_back(new RedisModuleString{word});
      word.clear();
    } else {
      word.push_back(static_cast<char>(data[i]));
    }
  }
  reset_keyspace();
  g_argc = static_cast<int>(argv.size());
  g_replies = 1;
  g_was_unblocked = false;
  RedisModuleCmdFunc fn = g_commands.at(name);
  fn(nullptr, argv.data(), g_argc);
  if (!g_keys_request && g_replies == 1) {
    /* Nothing replied yet: the client was blocked and a worker owes the unblock. */
    std::unique_lock<std::mutex> lk(g_mu);
    FUZZ_REQUIRE(g_cv.wait_for(lk, std::chrono::seconds(10), [] { return g_was_unblocked; }));
    auto *bc = static_cast<RedisModuleBlockedClient *>(g_unblocked);
    lk.unlock();
    bc->reply(nullptr, nullptr, 0);
    bc->free_privdata(nullptr, g_privdata);
    delete bc;
  }
  FUZZ_REQUIRE(g_keys_request || g_replies == 0);
  clear_keyspace(); /* nothing outlives the input (LeakSanitizer checks at exit) */
  for (RedisModuleString *s : argv) delete s;
  return 0;
}
