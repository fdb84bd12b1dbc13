/*
 * rdb_legacy.h: the RDB encodings RedisAI 1.0 to 1.2.4 wrote (encoding versions 0-3), and the
 * one entry point per type that picks the decoder by encoding version.
 *
 * ../shared/spec/redisai-rdb-legacy.md gives the layouts field by field:
 *   tensor 0-3: device type (CPU only), device id, bits, code, lanes (1), ndim, shape, strides,
 *               byte offset, data (no STRING tensors)
 *   model 0:    backend, device, tag (C string), batchsize, minbatchsize, inputs, outputs, blob
 *   model 1:    as 4 without minbatchtimeout (tag raw, blob chunked)
 *   model 2, 3: as 4
 *   script 0:   device, tag (C string), source
 *   script 1-2: device, tag (raw), source
 *   script 3:   as 4
 * Every field is read (Redis rejects a value with unread fields), through the same checked
 * reader as the v4 decoders: nothing is sized by a count or length before it is bounded and
 * backed by input, and a short or malformed record is an error, never an abort. Pure C++ like
 * serialization.h; the Redis glue (module.cpp) only passes encver along.
 */
#ifndef GROUNDWATCH_RDB_LEGACY_H
#define GROUNDWATCH_RDB_LEGACY_H

#include <string>

#include "serialization.h"

namespace gw {

/* The encodings that load: 0 (RedisAI 1.0) to kEncodingVersion (4, what we write). Above it a
 * record is refused with RedisAI's message (encver_refusal). */
bool encver_known(int encver);
/* "Failed loading <what>, RedisAI version (10207) is not forward compatible." */
std::string encver_refusal(const char *what);

/* The decoders for every known encver; the same contracts as load_tensor / load_model /
 * load_script. Models and scripts of older encodings come back with RedisAI's defaults:
 * minbatchtimeout 0 (encver 0-1), no entry points (scripts of encver 0-2). */
Tensor *load_tensor_any(RdbReader &r, int encver, std::string *err,
                        uint64_t max_bytes = kTensorBytesCeiling);
bool load_model_any(RdbReader &r, int encver, ModelRecord *m, std::string *err);
bool load_script_any(RdbReader &r, int encver, ScriptRecord *s, std::string *err);

/* The legacy decoders themselves (encver 0-3 / 0-1 / 0-2), for tests and fuzzers. */
Tensor *load_tensor_legacy(RdbReader &r, std::string *err, uint64_t max_bytes);
bool load_model_legacy(RdbReader &r, int encver, ModelRecord *m, std::string *err);
bool load_script_legacy(RdbReader &r, int encver, ScriptRecord *s, std::string *err);

}  // namespace gw

#endif
