/*
 * args.h: what every command file (cmd_*.cpp) shares: the view of a command's arguments and the
 * checks several commands make, error replies, keyspace lookups by key name, and the caller's
 * memory headroom. Checks return the error reply as a string ("" when fine), so a command
 * validates everything first and replies the first error.
 */
#ifndef GROUNDWATCH_ARGS_H
#define GROUNDWATCH_ARGS_H

#include <strings.h>

#include <cstring>
#include <string>

#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Arguments =============================================================================== */

struct Args {
  RedisModuleString **argv;
  int argc;
  std::string str(int i) const {
    size_t len;
    const char *p = RedisModule_StringPtrLen(argv[i], &len);
    return std::string(p, len);
  }
  bool is(int i, const char *kw) const {
    if (i >= argc) return false;
    size_t len;
    const char *p = RedisModule_StringPtrLen(argv[i], &len);
    return strlen(kw) == len && strncasecmp(p, kw, len) == 0;
  }
  /* An integer argument, false when it is not one. */
  bool ll(int i, long long *v) const {
    return i < argc && RedisModule_StringToLongLong(argv[i], v) == REDISMODULE_OK;
  }
  Args sub(int from, int to) const { return Args{argv + from, to - from}; }
};

/* Redis 6's arity error, which quotes argv[0] as the client sent it (Redis 7's
 * RedisModule_WrongArity quotes the registered lower-case name instead). */
std::string wrong_arity(const Args &a);

/* A TIMEOUT value (milliseconds, more than 0) at argument i. */
bool parse_timeout(const Args &a, int i, long long *timeout);

/* AI.MODELGET / AI.SCRIPTGET options: META and the data keyword (BLOB or SOURCE), in any order;
 * neither means both. False when an argument is neither (the caller replies the error). */
bool parse_get_options(const Args &a, const char *data_kw, bool *meta, bool *data);

/* The command is replayed from the AOF or sent by our master: its data is already held here, so
 * it is checked against what this server must keep, not what a client may send. */
bool replayed(RedisModuleCtx *ctx);

/* ==== Replies ================================================================================= */

inline constexpr char kWrongType[] =
    "WRONGTYPE Operation against a key holding the wrong kind of value";

int reply_err(RedisModuleCtx *ctx, const std::string &err);
/* wrong_arity's error for argv[0]. */
int reply_arity(RedisModuleCtx *ctx, RedisModuleString **argv);

/* ==== Keyspace access ============================================================================
 * A lookup either finds the value of the wanted type, finds nothing, or finds a key of another
 * type. */
enum class Lookup { Found, Empty, WrongType };

template <typename T>
Lookup lookup(RedisModuleCtx *ctx, RedisModuleString *name, RedisModuleType *type, T **out) {
  RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_READ);
  Lookup res = Lookup::Empty;
  if (key) {
    int kt = RedisModule_KeyType(key);
    if (kt == REDISMODULE_KEYTYPE_EMPTY) {
      res = Lookup::Empty;
    } else if (kt == REDISMODULE_KEYTYPE_MODULE && RedisModule_ModuleTypeGetType(key) == type) {
      *out = static_cast<T *>(RedisModule_ModuleTypeGetValue(key));
      res = Lookup::Found;
    } else {
      res = Lookup::WrongType;
    }
    RedisModule_CloseKey(key);
  }
  return res;
}

/* A key may be written with a tensor when it is empty or already holds one. */
bool tensor_writable(RedisModuleCtx *ctx, RedisModuleString *name);
/* The value at name, or the error reply when the key is empty or of another type. */
std::string get_tensor(RedisModuleCtx *ctx, RedisModuleString *name, Tensor **out);
std::string get_model(RedisModuleCtx *ctx, RedisModuleString *name, Model **out);
std::string get_script(RedisModuleCtx *ctx, RedisModuleString *name, Script **out);
/* Stores value at name (the key takes it), replacing what was there. */
void set_value(RedisModuleCtx *ctx, RedisModuleString *name, RedisModuleType *type, void *value);
/* AI.MODELDEL / AI.SCRIPTDEL once the key is known to hold the value: deletes it, replicates the
 * command and replies OK. */
int delete_and_reply(RedisModuleCtx *ctx, RedisModuleString *name);
/* AI._MODELSCAN / AI._SCRIPTSCAN: replies [key, tag] for every key of the type the caller may
 * read. */
int reply_scan(RedisModuleCtx *ctx, RedisModuleType *type);

/* ==== Memory headroom of the caller =========================================================== */

/* Bytes that may still be allocated before used memory reaches maxmemory, or -1 when there is
 * no maxmemory. Redis's deny-oom only refuses a command once memory is already over the limit;
 * commands that allocate much at once (a large TENSORSET, a DAG) use this to refuse before. */
long long memory_headroom(RedisModuleCtx *ctx);
/* Takes bytes out of a headroom from memory_headroom (nullptr or -1: unlimited); the OOM
 * reply when they do not fit. */
std::string charge_headroom(long long *budget, size_t bytes);

}  // namespace gw

#endif
