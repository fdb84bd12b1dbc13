/*
 * rm_api.cpp: resolves the module API pointers declared in rm_api.h.
 */
#include "rm_api.h"

#include <cstdio>

#define GW_RM_DEFINE(ret, name, params) ret(*RedisModule_##name) params = nullptr;
GW_RM_API_LIST(GW_RM_DEFINE)
#undef GW_RM_DEFINE

namespace {
/* Redis stores the name -> function lookup as the first member of every module context. */
typedef int (*GetApiFn)(const char *name, void *out_fnptr);
}  // namespace

extern "C" int rm_api_init(RedisModuleCtx *ctx) {
  GetApiFn get_api = *reinterpret_cast<GetApiFn *>(ctx);
  int missing = 0;
#define GW_RM_RESOLVE(ret, name, params)                                                \
  if (get_api("RedisModule_" #name, reinterpret_cast<void *>(&RedisModule_##name)) != \
      REDISMODULE_OK) {                                                                 \
    fprintf(stderr, "groundwatch engine: this Redis lacks RedisModule_%s\n", #name);  \
    missing++;                                                                          \
  }
  GW_RM_API_LIST(GW_RM_RESOLVE)
#undef GW_RM_RESOLVE
  return missing ? REDISMODULE_ERR : REDISMODULE_OK;
}
