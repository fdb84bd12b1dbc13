/*
 * glue.h: what the Redis-facing files share: building models and scripts through the backend,
 * replying with tensors, and registering the commands.
 */
#ifndef GROUNDWATCH_GLUE_H
#define GROUNDWATCH_GLUE_H

#include <string>
#include <vector>

#include "objects.h"
#include "rm_api.h"

namespace gw {

/* Takes ownership of blob (mem_alloc'd) whatever the outcome. "" on success. With optimize the
 * backend also freezes and optimises the model; when it cannot, the model is still created
 * (unoptimised) and the reason is logged and kept in Model::optimize_status. With keep_failed
 * (data being loaded, never a client's store) a model the backend cannot load is still made, with
 * no handle and Model::load_error set, and returned in *out along with the error. */
std::string create_model(const std::string &device, const std::string &tag, long long batchsize,
                         long long minbatchsize, long long minbatchtimeout, char *blob,
                         size_t bloblen, Model **out, bool optimize = false,
                         bool keep_failed = false);
/* A model the backend could not load (see Model::load_error), made from its record; takes blob. */
Model *failed_model(const std::string &device, const std::string &tag, long long batchsize,
                    long long minbatchsize, long long minbatchtimeout, char *blob, size_t bloblen,
                    bool optimize, const std::string &err);
/* The error reply for using a model that did not load, or "" when it can run. */
std::string model_unusable(const Model &m);
/* keep_failed: as create_model's (a script that does not compile is kept with load_error). */
std::string create_script(const std::string &device, const std::string &tag,
                          const std::string &source, const std::vector<std::string> &entry_points,
                          Script **out, bool keep_failed = false);
/* The error reply for using a script that did not load, or "" when it can run. */
std::string script_unusable(const Script &s);

/* RedisAI's device rule: CPU or GPU, optionally followed by ':' and digits (none allowed),
 * case-insensitive, under 10 characters in all. */
bool valid_device(const std::string &device);
/* The upper-cased copy that names the run queue and is given to the backend; the device
 * itself is kept as sent. */
std::string device_queue(const std::string &device);

/* Builds the `AI.TENSORSET key TYPE dims... BLOB data` argument vector (strings to be freed by
 * the caller with RedisModule_FreeString(ctx, ...)). */
std::vector<RedisModuleString *> tensorset_args(RedisModuleCtx *ctx, const char *key, size_t keylen,
                                                const Tensor &t);

int register_commands(RedisModuleCtx *ctx);

}  // namespace gw

#endif
