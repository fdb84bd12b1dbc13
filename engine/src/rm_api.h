/*
 * rm_api.h: the part of the Redis module API this engine uses, declared by us.
 *
 * Redis hands every module a lookup function (the first member of the context passed to
 * RedisModule_OnLoad) that returns API functions by name. We declare only the opaque types,
 * the constants and the function signatures we rely on, and resolve the pointers once at load
 * time (rm_api_init). Layouts and values follow the Redis 7.0 modules API reference.
 */
#ifndef GROUNDWATCH_RM_API_H
#define GROUNDWATCH_RM_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Opaque handles ------------------------------------------------------------------------- */
typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleKey RedisModuleKey;
typedef struct RedisModuleType RedisModuleType;
typedef struct RedisModuleIO RedisModuleIO;
typedef struct RedisModuleDigest RedisModuleDigest;
typedef struct RedisModuleBlockedClient RedisModuleBlockedClient;
typedef struct RedisModuleCallReply RedisModuleCallReply;
typedef struct RedisModuleInfoCtx RedisModuleInfoCtx;
typedef struct RedisModuleUser RedisModuleUser;
typedef struct RedisModuleServerInfoData RedisModuleServerInfoData;

/* A server event, passed by value: its id and the version of the data it carries. */
typedef struct RedisModuleEvent {
  uint64_t id;
  uint64_t dataver;
} RedisModuleEvent;

/* ---- Constants ------------------------------------------------------------------------------ */
#define REDISMODULE_OK 0
#define REDISMODULE_ERR 1
#define REDISMODULE_APIVER_1 1

#define REDISMODULE_READ (1 << 0)
#define REDISMODULE_WRITE (1 << 1)

#define REDISMODULE_KEYTYPE_EMPTY 0
#define REDISMODULE_KEYTYPE_MODULE 6

#define REDISMODULE_REPLY_UNKNOWN -1
#define REDISMODULE_REPLY_STRING 0
#define REDISMODULE_REPLY_ERROR 1
#define REDISMODULE_REPLY_INTEGER 2
#define REDISMODULE_REPLY_ARRAY 3
#define REDISMODULE_REPLY_NULL 4

#define REDISMODULE_POSTPONED_LEN -1

#define REDISMODULE_CTX_FLAGS_LUA (1 << 0)
#define REDISMODULE_CTX_FLAGS_MULTI (1 << 1)
#define REDISMODULE_CTX_FLAGS_REPLICATED (1 << 12)
#define REDISMODULE_CTX_FLAGS_LOADING (1 << 13)
#define REDISMODULE_CTX_FLAGS_DENY_BLOCKING (1 << 21)

/* RedisModule_SetModuleOptions: short reads and opcode mismatches while loading our values set
 * an error flag (RedisModule_IsIOError) instead of making Redis panic. */
#define REDISMODULE_OPTIONS_HANDLE_IO_ERRORS (1 << 0)
/* Key access flags of RedisModule_ACLCheckKeyPermissions (the key-spec flags of Redis 7.0). */
#define REDISMODULE_CMD_KEY_ACCESS (1 << 4)

/* Fired after CONFIG SET (Redis 7.0 and later). */
#define REDISMODULE_EVENT_CONFIG 16

/* Version 3 of the type methods: Redis reads the fields up to `defrag`. */
#define REDISMODULE_TYPE_METHOD_VERSION_3 3

/* ---- Callback types ------------------------------------------------------------------------- */
typedef int (*RedisModuleCmdFunc)(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
typedef void *(*RedisModuleTypeLoadFunc)(RedisModuleIO *rdb, int encver);
typedef void (*RedisModuleTypeSaveFunc)(RedisModuleIO *rdb, void *value);
typedef void (*RedisModuleTypeRewriteFunc)(RedisModuleIO *aof, RedisModuleString *key,
                                           void *value);
typedef size_t (*RedisModuleTypeMemUsageFunc)(const void *value);
typedef void (*RedisModuleTypeDigestFunc)(RedisModuleDigest *digest, void *value);
typedef void (*RedisModuleTypeFreeFunc)(void *value);
typedef void (*RedisModuleInfoFunc)(RedisModuleInfoCtx *ctx, int for_crash_report);
typedef void (*RedisModuleEventCallback)(RedisModuleCtx *ctx, RedisModuleEvent eid,
                                         uint64_t subevent, void *data);
typedef void (*RedisModuleFreePrivDataFunc)(RedisModuleCtx *ctx, void *privdata);
typedef int (*RedisModuleTypeAuxLoadFunc)(RedisModuleIO *rdb, int encver, int when);
typedef void (*RedisModuleTypeAuxSaveFunc)(RedisModuleIO *rdb, int when);
typedef size_t (*RedisModuleTypeFreeEffortFunc)(RedisModuleString *key, const void *value);
typedef void (*RedisModuleTypeUnlinkFunc)(RedisModuleString *key, const void *value);
typedef void *(*RedisModuleTypeCopyFunc)(RedisModuleString *fromkey, RedisModuleString *tokey,
                                         const void *value);
typedef int (*RedisModuleTypeDefragFunc)(void *defrag_ctx, RedisModuleString *key, void **value);

typedef struct RedisModuleTypeMethods {
  uint64_t version;
  RedisModuleTypeLoadFunc rdb_load;
  RedisModuleTypeSaveFunc rdb_save;
  RedisModuleTypeRewriteFunc aof_rewrite;
  RedisModuleTypeMemUsageFunc mem_usage;
  RedisModuleTypeDigestFunc digest;
  RedisModuleTypeFreeFunc free;
  RedisModuleTypeAuxLoadFunc aux_load;
  RedisModuleTypeAuxSaveFunc aux_save;
  int aux_save_triggers;
  RedisModuleTypeFreeEffortFunc free_effort;
  RedisModuleTypeUnlinkFunc unlink;
  RedisModuleTypeCopyFunc copy;
  RedisModuleTypeDefragFunc defrag;
} RedisModuleTypeMethods;

/* ---- Functions ------------------------------------------------------------------------------
 * X(return type, name, parameter list). Every entry becomes a pointer named RedisModule_<name>. */
#define GW_RM_API_LIST(X)                                                                          \
  X(void *, Alloc, (size_t bytes))                                                                 \
  X(void *, Calloc, (size_t nmemb, size_t size))                                                   \
  X(void *, Realloc, (void *ptr, size_t bytes))                                                    \
  X(void, Free, (void *ptr))                                                                       \
  X(void, SetModuleAttribs, (RedisModuleCtx * ctx, const char *name, int ver, int apiver))          \
  X(int, IsModuleNameBusy, (const char *name))                                                     \
  X(void, SetModuleOptions, (RedisModuleCtx * ctx, int options))                                   \
  X(int, IsIOError, (RedisModuleIO * io))                                                          \
  X(RedisModuleCtx *, GetContextFromIO, (RedisModuleIO * io))                                      \
  X(int, CreateCommand,                                                                            \
    (RedisModuleCtx * ctx, const char *name, RedisModuleCmdFunc cmdfunc, const char *strflags,     \
     int firstkey, int lastkey, int keystep))                                                      \
  X(int, WrongArity, (RedisModuleCtx * ctx))                                                       \
  X(int, ReplyWithLongLong, (RedisModuleCtx * ctx, long long ll))                                  \
  X(int, ReplyWithError, (RedisModuleCtx * ctx, const char *err))                                  \
  X(int, ReplyWithSimpleString, (RedisModuleCtx * ctx, const char *msg))                           \
  X(int, ReplyWithArray, (RedisModuleCtx * ctx, long len))                                         \
  X(void, ReplySetArrayLength, (RedisModuleCtx * ctx, long len))                                   \
  X(int, ReplyWithStringBuffer, (RedisModuleCtx * ctx, const char *buf, size_t len))               \
  X(int, ReplyWithString, (RedisModuleCtx * ctx, RedisModuleString * str))                         \
  X(int, ReplyWithNull, (RedisModuleCtx * ctx))                                                    \
  X(RedisModuleKey *, OpenKey, (RedisModuleCtx * ctx, RedisModuleString * keyname, int mode))      \
  X(void, CloseKey, (RedisModuleKey * kp))                                                         \
  X(int, KeyType, (RedisModuleKey * kp))                                                           \
  X(int, DeleteKey, (RedisModuleKey * kp))                                                         \
  X(RedisModuleType *, ModuleTypeGetType, (RedisModuleKey * key))                                  \
  X(void *, ModuleTypeGetValue, (RedisModuleKey * key))                                            \
  X(int, ModuleTypeSetValue, (RedisModuleKey * key, RedisModuleType * mt, void *value))            \
  X(RedisModuleType *, CreateDataType,                                                             \
    (RedisModuleCtx * ctx, const char *name, int encver, RedisModuleTypeMethods *typemethods))     \
  X(const char *, StringPtrLen, (const RedisModuleString *str, size_t *len))                       \
  X(int, StringToLongLong, (const RedisModuleString *str, long long *ll))                          \
  X(int, StringToDouble, (const RedisModuleString *str, double *d))                                \
  X(RedisModuleString *, CreateString, (RedisModuleCtx * ctx, const char *ptr, size_t len))        \
  X(void, FreeString, (RedisModuleCtx * ctx, RedisModuleString * str))                             \
  X(int, Replicate, (RedisModuleCtx * ctx, const char *cmdname, const char *fmt, ...))             \
  X(int, ReplicateVerbatim, (RedisModuleCtx * ctx))                                                \
  X(void, SaveUnsigned, (RedisModuleIO * io, uint64_t value))                                      \
  X(uint64_t, LoadUnsigned, (RedisModuleIO * io))                                                  \
  X(void, SaveSigned, (RedisModuleIO * io, int64_t value))                                         \
  X(int64_t, LoadSigned, (RedisModuleIO * io))                                                     \
  X(void, SaveStringBuffer, (RedisModuleIO * io, const char *str, size_t len))                     \
  X(char *, LoadStringBuffer, (RedisModuleIO * io, size_t * lenptr))                               \
  X(void, EmitAOF, (RedisModuleIO * io, const char *cmdname, const char *fmt, ...))                \
  X(void, Log, (RedisModuleCtx * ctx, const char *level, const char *fmt, ...))                    \
  X(void, LogIOError, (RedisModuleIO * io, const char *levelstr, const char *fmt, ...))            \
  X(RedisModuleBlockedClient *, BlockClient,                                                       \
    (RedisModuleCtx * ctx, RedisModuleCmdFunc reply_callback, RedisModuleCmdFunc timeout_callback, \
     RedisModuleFreePrivDataFunc free_privdata, long long timeout_ms))                             \
  X(int, UnblockClient, (RedisModuleBlockedClient * bc, void *privdata))                           \
  X(void *, GetBlockedClientPrivateData, (RedisModuleCtx * ctx))                                   \
  X(RedisModuleCtx *, GetThreadSafeContext, (RedisModuleBlockedClient * bc))                       \
  X(void, FreeThreadSafeContext, (RedisModuleCtx * ctx))                                           \
  X(void, ThreadSafeContextLock, (RedisModuleCtx * ctx))                                           \
  X(void, ThreadSafeContextUnlock, (RedisModuleCtx * ctx))                                         \
  X(RedisModuleCallReply *, Call, (RedisModuleCtx * ctx, const char *cmdname, const char *fmt, ...)) \
  X(int, CallReplyType, (RedisModuleCallReply * reply))                                            \
  X(long long, CallReplyInteger, (RedisModuleCallReply * reply))                                   \
  X(const char *, CallReplyStringPtr, (RedisModuleCallReply * reply, size_t *len))                 \
  X(size_t, CallReplyLength, (RedisModuleCallReply * reply))                                       \
  X(RedisModuleCallReply *, CallReplyArrayElement, (RedisModuleCallReply * reply, size_t idx))     \
  X(void, FreeCallReply, (RedisModuleCallReply * reply))                                           \
  X(int, GetContextFlags, (RedisModuleCtx * ctx))                                                  \
  X(int, IsKeysPositionRequest, (RedisModuleCtx * ctx))                                            \
  X(void, KeyAtPos, (RedisModuleCtx * ctx, int pos))                                               \
  X(int, RegisterInfoFunc, (RedisModuleCtx * ctx, RedisModuleInfoFunc cb))                         \
  X(int, InfoAddSection, (RedisModuleInfoCtx * ctx, const char *name))                             \
  X(int, InfoAddFieldCString, (RedisModuleInfoCtx * ctx, const char *field, const char *value))    \
  X(int, InfoAddFieldLongLong, (RedisModuleInfoCtx * ctx, const char *field, long long value))     \
  X(int, InfoAddFieldDouble, (RedisModuleInfoCtx * ctx, const char *field, double value))     \
  X(RedisModuleString *, GetCurrentUserName, (RedisModuleCtx * ctx))                               \
  X(RedisModuleUser *, GetModuleUserFromUserName, (RedisModuleString * name))                      \
  X(int, FreeModuleUser, (RedisModuleUser * user))                                                 \
  X(int, ACLCheckCommandPermissions,                                                               \
    (RedisModuleUser * user, RedisModuleString * *argv, int argc))                                 \
  X(int, ACLCheckKeyPermissions, (RedisModuleUser * user, RedisModuleString * key, int flags))     \
  X(float, GetUsedMemoryRatio, (void))                                                             \
  X(RedisModuleServerInfoData *, GetServerInfo, (RedisModuleCtx * ctx, const char *section))       \
  X(unsigned long long, ServerInfoGetFieldUnsigned,                                                \
    (RedisModuleServerInfoData * data, const char *field, int *out_err))                           \
  X(void, FreeServerInfo, (RedisModuleCtx * ctx, RedisModuleServerInfoData * data))                \
  X(int, InfoAddFieldULongLong,                                                                    \
    (RedisModuleInfoCtx * ctx, const char *field, unsigned long long value))                      \
  X(int, SubscribeToServerEvent,                                                                   \
    (RedisModuleCtx * ctx, RedisModuleEvent event, RedisModuleEventCallback callback))

#define GW_RM_DECLARE(ret, name, params) extern ret(*RedisModule_##name) params;
GW_RM_API_LIST(GW_RM_DECLARE)
#undef GW_RM_DECLARE

/* Resolves every pointer through the lookup function hidden in ctx; REDISMODULE_ERR when one is
 * missing (a Redis too old for us). */
int rm_api_init(RedisModuleCtx *ctx);

#ifdef __cplusplus
}
#endif

#endif
