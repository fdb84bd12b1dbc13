/*
 * serialization.h: the v4 RDB encodings of the three data types (also used by DUMP/RESTORE).
 *
 * The layouts follow RedisAI 1.2's encoding version 4 as the protocol summary describes it:
 *   tensor: dtype code, bits, ndim, shape..., data, then per-element offsets for STRING tensors
 *   model:  backend, device (models stored with OPTIMIZE: "CPU\0OPTIMIZE"), tag, batchsize, minbatchsize, minbatchtimeout, inputs, outputs,
 *           total blob length, number of chunks, chunks (MODEL_CHUNK_SIZE each)
 *   script: device, tag, source, entry points
 * Field by field as RedisAI 1.2 wrote them: ndim and dims signed, the device, source, names
 * and entry points NUL-terminated (C strings), tags without a NUL (RedisModuleStrings), and
 * STRING tensors followed by each element's start offset. The reader accepts strings with or
 * without the NUL.
 * Written against small reader/writer interfaces so the layouts are independent of Redis.
 */
#ifndef GROUNDWATCH_SERIALIZATION_H
#define GROUNDWATCH_SERIALIZATION_H

#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace gw {

constexpr int kEncodingVersion = 4;
constexpr const char *kOptimizeFlag = "OPTIMIZE";
constexpr uint64_t kBackendTorch = 2; /* RedisAI's backend numbering: TF, TFLITE, TORCH, ONNX */

/* ==== IO interfaces =========================================================================== */
struct RdbWriter {
  virtual ~RdbWriter() = default;
  virtual void u64(uint64_t v) = 0;
  virtual void i64(int64_t v) = 0;
  virtual void bytes(const char *p, size_t n) = 0;
  void cstr(const std::string &s) { bytes(s.c_str(), s.size() + 1); }
};
struct RdbReader {
  virtual ~RdbReader() = default;
  virtual uint64_t u64() = 0;
  virtual int64_t i64() = 0;
  /* A mem_alloc'd buffer the caller frees with mem_free. */
  virtual char *bytes(size_t *n) = 0;
  std::string str(); /* bytes() without a trailing NUL */
};

/* ==== Records ================================================================================= */
struct ModelRecord {
  uint64_t backend = kBackendTorch;
  std::string device, tag;
  long long batchsize = 0, minbatchsize = 0, minbatchtimeout = 0;
  std::vector<std::string> inputs, outputs;
  char *blob = nullptr; /* mem_alloc'd; whoever takes it sets this to nullptr */
  size_t bloblen = 0;
  bool optimize = false; /* OPTIMIZE: after the device's NUL (see save_model) */
  ~ModelRecord();
};
struct ScriptRecord {
  std::string device, tag, source;
  std::vector<std::string> entry_points;
};

/* ==== Encoders and decoders ==================================================================== */
void save_tensor(RdbWriter &w, const Tensor &t);
/* nullptr and *err on a malformed record. */
Tensor *load_tensor(RdbReader &r, std::string *err);

void save_model(RdbWriter &w, const ModelRecord &m, size_t chunk_size);
bool load_model(RdbReader &r, ModelRecord *m, std::string *err);

void save_script(RdbWriter &w, const ScriptRecord &s);
bool load_script(RdbReader &r, ScriptRecord *s, std::string *err);

}  // namespace gw

#endif
