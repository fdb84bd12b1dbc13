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
 * STRING tensors followed by each element's start offset. The reader accepts C strings with or
 * without the NUL and takes tags verbatim. Older encodings (0-3): rdb_legacy.h.
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

/* ==== IO interfaces ===========================================================================
 * Readers never abort and never trust a length: every read returns false (bytes(): nullptr) when
 * the input is short or malformed, and after the first failure every later read fails too
 * (sticky), so a decoder may test once per field and bail out. Inside Redis a failure is
 * RedisModule_IsIOError (the module sets REDISMODULE_OPTIONS_HANDLE_IO_ERRORS); BufferReader
 * below is the same contract over a byte buffer, for unit tests and the fuzzers. */
struct RdbWriter {
  virtual ~RdbWriter() = default;
  virtual void u64(uint64_t v) = 0;
  virtual void i64(int64_t v) = 0;
  virtual void bytes(const char *p, size_t n) = 0;
  void cstr(const std::string &s) { bytes(s.c_str(), s.size() + 1); }
};
struct RdbReader {
  virtual ~RdbReader() = default;
  virtual bool u64(uint64_t *v) = 0;
  virtual bool i64(int64_t *v) = 0;
  /* A mem_alloc'd buffer of *n bytes the caller frees with mem_free; nullptr on failure. The
   * buffer exists, so *n is backed by input: lengths are never allocated before being read. */
  virtual char *bytes(size_t *n) = 0;

  /* ---- Checked helpers, shared by every decoder (legacy encodings included) ---- */
  /* A count: u64() and at most max (checked before anything is sized by it). */
  bool count(uint64_t *n, uint64_t max);
  /* bytes() into a string, at most max_len bytes: verbatim, without trailing NULs, or without
   * the one NUL a C string ends with. */
  bool raw(std::string *out, size_t max_len = kMaxRdbString);
  bool str(std::string *out, size_t max_len = kMaxRdbString);
  bool cstring(std::string *out, size_t max_len = kMaxRdbString);

  static constexpr size_t kMaxRdbString = size_t(1) << 32;
};

/* The field stream of one value as Redis frames it (one opcode per field), over a byte buffer:
 * per field a tag byte (kTagInt: 8 bytes little-endian follow; kTagString: an 8-byte
 * little-endian length, then that many bytes). A wrong tag is a failure, as an opcode mismatch is
 * in Redis. */
constexpr unsigned char kTagInt = 2, kTagString = 5;
struct BufferReader : RdbReader {
  const unsigned char *p, *end;
  bool failed = false;
  BufferReader(const void *data, size_t n)
      : p(static_cast<const unsigned char *>(data)), end(p + n) {}
  bool u64(uint64_t *v) override;
  bool i64(int64_t *v) override;
  char *bytes(size_t *n) override;
  bool at_end() const { return !failed && p == end; }

 private:
  bool take_u64(unsigned char tag, uint64_t *v);
};
struct BufferWriter : RdbWriter {
  std::string out;
  void u64(uint64_t v) override;
  void i64(int64_t v) override { u64(static_cast<uint64_t>(v)); }
  void bytes(const char *p, size_t n) override;
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

/* ==== Encoders and decoders ====================================================================
 * Decoders read every field of the record (Redis checks the value's EOF after them), check each
 * count before it sizes anything, and on failure (short read, wrong field type, a count or length
 * out of bounds, a tensor breaking the invariants of tensor.h) return nullptr/false with *err. */
void save_tensor(RdbWriter &w, const Tensor &t);
/* max_bytes: the tensor size limit the record is held to (TENSOR_MAX_BYTES for RESTORE). */
Tensor *load_tensor(RdbReader &r, std::string *err, uint64_t max_bytes = kTensorBytesCeiling);
/* The data of a tensor record whose dtype and shape were read: the shape is checked first, then
 * the bytes are read and checked against it (every encoding's loader ends this way). The data
 * (mem_alloc'd, *n bytes, *elements elements), or nullptr with *err set. */
char *load_tensor_data(RdbReader &r, int dtype, const std::vector<int64_t> &shape, uint64_t max_bytes,
                       uint64_t *elements, size_t *n, std::string *err);

void save_model(RdbWriter &w, const ModelRecord &m, size_t chunk_size);
bool load_model(RdbReader &r, ModelRecord *m, std::string *err);
/* The parts of load_model the legacy encodings share (rdb_legacy.cpp): the input and output name
 * lists, and the blob as total length, chunk count and chunks. */
bool load_model_names(RdbReader &r, ModelRecord *m, std::string *err);
bool load_model_chunks(RdbReader &r, ModelRecord *m, std::string *err);
/* RedisAI's counts of inputs, outputs and entry points are tiny; this is far above any real one
 * and keeps a crafted count from sizing anything. */
constexpr uint64_t kMaxRdbNames = 65536;
constexpr size_t kMaxRdbDevice = 256;
extern const char kRdbTruncated[];

void save_script(RdbWriter &w, const ScriptRecord &s);
bool load_script(RdbReader &r, ScriptRecord *s, std::string *err);

}  // namespace gw

#endif
