/*
 * rdb_legacy.cpp: RedisAI 1.0-1.2.4's encodings (0-3) and the dispatch on encver.
 */
#include "rdb_legacy.h"

#include <cstring>

namespace gw {

/* ==== Versions ================================================================================ */

bool encver_known(int encver) { return encver >= 0 && encver <= kEncodingVersion; }

std::string encver_refusal(const char *what) {
  return std::string("Failed loading ") + what +
         ", RedisAI version (10207) is not forward compatible.";
}

namespace {

constexpr uint64_t kDLCpu = 1; /* DLPack's device type of a CPU tensor */

bool fail(std::string *err, const std::string &why) {
  *err = why;
  return false;
}

/* A C string (device, source, names): the bytes up to the first NUL, as RedisAI read them. */
bool c_field(RdbReader &r, std::string *out, size_t max_len = RdbReader::kMaxRdbString) {
  if (!r.raw(out, max_len)) return false;
  size_t nul = out->find('\0');
  if (nul != std::string::npos) out->resize(nul);
  return true;
}

}  // namespace

/* ==== AI_TENSOR 0-3 =========================================================================== */

Tensor *load_tensor_legacy(RdbReader &r, std::string *err, uint64_t max_bytes) {
  uint64_t device_type = 0, device_id = 0, bits = 0, code = 0, lanes = 0, ndim = 0;
  if (!r.u64(&device_type) || !r.u64(&device_id) || !r.u64(&bits) || !r.u64(&code) ||
      !r.u64(&lanes) || !r.u64(&ndim)) {
    *err = kRdbTruncated;
    return nullptr;
  }
  /* RedisAI asserted a CPU tensor (a crash otherwise); it is an error here. */
  if (device_type != kDLCpu) {
    *err = "legacy tensor on DLPack device type " + std::to_string(device_type) + " (only CPU, 1)";
    return nullptr;
  }
  int dtype = dtype_from_dlpack(code, bits);
  /* STRING tensors came with encoding 4; lanes were always 1. */
  if (dtype < 0 || dtype == GW_DTYPE_STRING || lanes != 1) {
    *err = "unknown legacy tensor dtype (code " + std::to_string(code) + ", bits " +
           std::to_string(bits) + ", lanes " + std::to_string(lanes) + ")";
    return nullptr;
  }
  if (ndim > kMaxRank) {
    *err = "tensor rank " + std::to_string(ndim) + " is outside 0.." + std::to_string(kMaxRank);
    return nullptr;
  }
  std::vector<int64_t> shape(static_cast<size_t>(ndim));
  for (int64_t &d : shape) {
    uint64_t v = 0;
    if (!r.u64(&v)) {
      *err = kRdbTruncated;
      return nullptr;
    }
    /* Written unsigned; check_shape refuses what does not fit a positive int64. */
    d = v > static_cast<uint64_t>(INT64_MAX) ? -1 : static_cast<int64_t>(v);
  }
  /* Strides and the byte offset are dead data: the tensor is rebuilt C-contiguous. */
  for (uint64_t i = 0; i <= ndim; i++) {
    uint64_t unused;
    if (!r.u64(&unused)) {
      *err = kRdbTruncated;
      return nullptr;
    }
  }
  uint64_t elements = 0;
  size_t n = 0;
  char *data = load_tensor_data(r, dtype, shape, max_bytes, &elements, &n, err);
  if (!data) return nullptr;
  return tensor_adopt(dtype, std::move(shape), data, n);
}

/* ==== AI__MODEL 0-1 =========================================================================== */

bool load_model_legacy(RdbReader &r, int encver, ModelRecord *m, std::string *err) {
  if (encver < 0 || encver > 1) return load_model(r, m, err); /* 2 and 3 are 4's layout */
  uint64_t batchsize = 0, minbatchsize = 0;
  /* encver 0 stored the tag as a C string, 1 as a RedisModuleString (verbatim). */
  bool tag_ok = false;
  if (r.u64(&m->backend) && c_field(r, &m->device, kMaxRdbDevice))
    tag_ok = encver == 0 ? r.cstring(&m->tag) : r.raw(&m->tag);
  if (!tag_ok || !r.u64(&batchsize) || !r.u64(&minbatchsize)) return fail(err, kRdbTruncated);
  m->batchsize = static_cast<long long>(batchsize);
  m->minbatchsize = static_cast<long long>(minbatchsize);
  m->minbatchtimeout = 0; /* not in these encodings */
  if (!load_model_names(r, m, err)) return false;
  if (encver == 1) return load_model_chunks(r, m, err);
  /* encver 0: the whole blob, one string (backed by input, so its length is real). */
  size_t n = 0;
  char *blob = r.bytes(&n);
  if (!blob) return fail(err, kRdbTruncated);
  if (n > kTensorBytesCeiling) {
    mem_free(blob);
    return fail(err, "model blob of " + std::to_string(n) + " bytes is over the limit");
  }
  m->blob = blob;
  m->bloblen = n;
  return true;
}

/* ==== AI_SCRIPT 0-2 =========================================================================== */

bool load_script_legacy(RdbReader &r, int encver, ScriptRecord *s, std::string *err) {
  if (encver < 0 || encver > 2) return load_script(r, s, err); /* 3 is 4's layout */
  bool ok = c_field(r, &s->device, kMaxRdbDevice) &&
            (encver == 0 ? r.cstring(&s->tag) : r.raw(&s->tag)) && c_field(r, &s->source);
  if (!ok) return fail(err, kRdbTruncated);
  /* No entry points before encoding 3: the script runs its functions in best-effort mode. */
  s->entry_points.clear();
  return true;
}

/* ==== Dispatch ================================================================================ */

Tensor *load_tensor_any(RdbReader &r, int encver, std::string *err, uint64_t max_bytes) {
  if (!encver_known(encver)) {
    *err = encver_refusal("tensor");
    return nullptr;
  }
  return encver < kEncodingVersion ? load_tensor_legacy(r, err, max_bytes)
                                   : load_tensor(r, err, max_bytes);
}

bool load_model_any(RdbReader &r, int encver, ModelRecord *m, std::string *err) {
  if (!encver_known(encver)) return fail(err, encver_refusal("model"));
  return encver <= 1 ? load_model_legacy(r, encver, m, err) : load_model(r, m, err);
}

bool load_script_any(RdbReader &r, int encver, ScriptRecord *s, std::string *err) {
  if (!encver_known(encver)) return fail(err, encver_refusal("script"));
  return encver <= 2 ? load_script_legacy(r, encver, s, err) : load_script(r, s, err);
}

}  // namespace gw
