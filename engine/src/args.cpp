/*
 * args.cpp: the helpers of args.h.
 */
#include "args.h"

#include <string>

#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Arguments =============================================================================== */

std::string wrong_arity(const Args &a) {
  return "ERR wrong number of arguments for '" + a.str(0) + "' command";
}

bool parse_timeout(const Args &a, int i, long long *timeout) {
  return a.ll(i, timeout) && *timeout > 0;
}

bool parse_get_options(const Args &a, const char *data_kw, bool *meta, bool *data) {
  *meta = *data = false;
  for (int i = 2; i < a.argc; i++) {
    if (a.is(i, "META")) {
      *meta = true;
    } else if (a.is(i, data_kw)) {
      *data = true;
    } else {
      return false;
    }
  }
  if (!*meta && !*data) *meta = *data = true;
  return true;
}

bool replayed(RedisModuleCtx *ctx) {
  return RedisModule_GetContextFlags(ctx) &
         (REDISMODULE_CTX_FLAGS_LOADING | REDISMODULE_CTX_FLAGS_REPLICATED);
}

/* ==== Replies ================================================================================= */

int reply_err(RedisModuleCtx *ctx, const std::string &err) {
  return RedisModule_ReplyWithError(ctx, err.c_str());
}

int reply_arity(RedisModuleCtx *ctx, RedisModuleString **argv) {
  return reply_err(ctx, wrong_arity(Args{argv, 1}));
}

/* ==== Keyspace access ========================================================================= */

bool tensor_writable(RedisModuleCtx *ctx, RedisModuleString *name) {
  Tensor *t = nullptr;
  return lookup(ctx, name, TensorType, &t) != Lookup::WrongType;
}

std::string get_tensor(RedisModuleCtx *ctx, RedisModuleString *name, Tensor **out) {
  switch (lookup(ctx, name, TensorType, out)) {
    case Lookup::Found: return {};
    case Lookup::Empty: return "ERR tensor key is empty or in a different shard";
    default: return kWrongType;
  }
}

std::string get_model(RedisModuleCtx *ctx, RedisModuleString *name, Model **out) {
  switch (lookup(ctx, name, ModelType, out)) {
    case Lookup::Found: return {};
    case Lookup::Empty: return "ERR model key is empty";
    default: return kWrongType;
  }
}

std::string get_script(RedisModuleCtx *ctx, RedisModuleString *name, Script **out) {
  switch (lookup(ctx, name, ScriptType, out)) {
    case Lookup::Found: return {};
    case Lookup::Empty: return "ERR script key is empty";
    default: return kWrongType;
  }
}

void set_value(RedisModuleCtx *ctx, RedisModuleString *name, RedisModuleType *type, void *value) {
  RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_READ | REDISMODULE_WRITE);
  RedisModule_ModuleTypeSetValue(key, type, value);
  RedisModule_CloseKey(key);
}

int delete_and_reply(RedisModuleCtx *ctx, RedisModuleString *name) {
  RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_WRITE);
  RedisModule_DeleteKey(key);
  RedisModule_CloseKey(key);
  RedisModule_ReplicateVerbatim(ctx);
  return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

/* KEYS runs as Redis itself, so each key is checked against the caller's ACL user. */
int reply_scan(RedisModuleCtx *ctx, RedisModuleType *type) {
  RedisModuleUser *user = nullptr;
  if (RedisModuleString *name = RedisModule_GetCurrentUserName(ctx)) {
    user = RedisModule_GetModuleUserFromUserName(name);
    RedisModule_FreeString(ctx, name);
    if (!user) return reply_err(ctx, "NOPERM the current user no longer exists");
  }
  RedisModuleCallReply *keys = RedisModule_Call(ctx, "KEYS", "c", "*");
  if (!keys) {
    if (user) RedisModule_FreeModuleUser(user);
    return reply_err(ctx, "ERR could not list keys");
  }
  size_t n = RedisModule_CallReplyLength(keys);
  RedisModule_ReplyWithArray(ctx, REDISMODULE_POSTPONED_LEN);
  long found = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len;
    const char *p = RedisModule_CallReplyStringPtr(RedisModule_CallReplyArrayElement(keys, i), &len);
    RedisModuleString *k = RedisModule_CreateString(ctx, p, len);
    const std::string *tag = nullptr;
    Model *m = nullptr;
    Script *s = nullptr;
    if (user && RedisModule_ACLCheckKeyPermissions(user, k, REDISMODULE_CMD_KEY_ACCESS) != REDISMODULE_OK) {
      RedisModule_FreeString(ctx, k);
      continue;
    }
    if (type == ModelType && lookup(ctx, k, ModelType, &m) == Lookup::Found) tag = &m->tag;
    if (type == ScriptType && lookup(ctx, k, ScriptType, &s) == Lookup::Found) tag = &s->tag;
    if (tag) {
      RedisModule_ReplyWithArray(ctx, 2);
      RedisModule_ReplyWithStringBuffer(ctx, p, len);
      RedisModule_ReplyWithStringBuffer(ctx, tag->data(), tag->size());
      found++;
    }
    RedisModule_FreeString(ctx, k);
  }
  RedisModule_ReplySetArrayLength(ctx, found);
  RedisModule_FreeCallReply(keys);
  if (user) RedisModule_FreeModuleUser(user);
  return REDISMODULE_OK;
}

/* ==== Memory headroom of the caller =========================================================== */

long long memory_headroom(RedisModuleCtx *ctx) {
  float ratio = RedisModule_GetUsedMemoryRatio();
  if (ratio <= 0) return -1;
  RedisModuleServerInfoData *info = RedisModule_GetServerInfo(ctx, "memory");
  int e = 0;
  unsigned long long max = info ? RedisModule_ServerInfoGetFieldUnsigned(info, "maxmemory", &e) : 0;
  if (info) RedisModule_FreeServerInfo(ctx, info);
  if (e || max == 0) return -1;
  double left = static_cast<double>(max) * (1.0 - static_cast<double>(ratio));
  return left > 0 ? static_cast<long long>(left) : 0;
}

namespace {

std::string oom_reply(long long need, long long left) {
  return "OOM command not allowed: it needs " + std::to_string(need) + " bytes and only " +
         std::to_string(left < 0 ? 0 : left) + " are left under 'maxmemory'";
}

}  // namespace

std::string charge_headroom(long long *budget, size_t bytes) {
  if (!budget || *budget < 0) return {};
  long long b = static_cast<long long>(bytes);
  if (b > *budget) return oom_reply(b, *budget);
  *budget -= b;
  return {};
}

}  // namespace gw
