/*
 * serialization.cpp: the v4 encodings.
 */
#include "serialization.h"

#include <cstring>

namespace gw {

/* ==== Readers ================================================================================= */

bool RdbReader::count(uint64_t *n, uint64_t max) { return u64(n) && *n <= max; }

bool RdbReader::raw(std::string *out, size_t max_len) {
  size_t n = 0;
  char *p = bytes(&n);
  if (!p) return false;
  bool ok = n <= max_len;
  if (ok) out->assign(p, n);
  mem_free(p);
  return ok;
}

bool RdbReader::str(std::string *out, size_t max_len) {
  if (!raw(out, max_len)) return false;
  while (!out->empty() && out->back() == '\0') out->pop_back();
  return true;
}

bool RdbReader::cstring(std::string *out, size_t max_len) {
  if (!raw(out, max_len)) return false;
  if (!out->empty() && out->back() == '\0') out->pop_back();
  return true;
}

bool BufferReader::take_u64(unsigned char tag, uint64_t *v) {
  if (failed || end - p < 9 || p[0] != tag) {
    failed = true;
    return false;
  }
  uint64_t x = 0;
  for (int i = 8; i >= 1; i--) x = (x << 8) | p[i];
  p += 9;
  *v = x;
  return true;
}

bool BufferReader::u64(uint64_t *v) { return take_u64(kTagInt, v); }

bool BufferReader::i64(int64_t *v) {
  uint64_t u;
  if (!take_u64(kTagInt, &u)) return false;
  *v = static_cast<int64_t>(u);
  return true;
}

char *BufferReader::bytes(size_t *n) {
  uint64_t len;
  if (!take_u64(kTagString, &len)) return nullptr;
  /* The length is checked against what is left before anything is allocated. */
  if (len > static_cast<uint64_t>(end - p)) {
    failed = true;
    return nullptr;
  }
  char *out = static_cast<char *>(mem_alloc(len ? len : 1));
  if (len) memcpy(out, p, len);
  p += len;
  *n = static_cast<size_t>(len);
  return out;
}

void BufferWriter::u64(uint64_t v) {
  out.push_back(static_cast<char>(kTagInt));
  for (int i = 0; i < 8; i++) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void BufferWriter::bytes(const char *p, size_t n) {
  out.push_back(static_cast<char>(kTagString));
  for (int i = 0; i < 8; i++) out.push_back(static_cast<char>((uint64_t(n) >> (8 * i)) & 0xff));
  out.append(p, n);
}

ModelRecord::~ModelRecord() {
  if (blob) mem_free(blob);
}

/* ==== Tensor ================================================================================== */

void save_tensor(RdbWriter &w, const Tensor &t) {
  const DTypeInfo &info = dtype_info(t.dtype);
  w.u64(info.dl_code);
  w.u64(info.dl_bits);
  w.i64(static_cast<int64_t>(t.shape.size()));
  for (int64_t d : t.shape) w.i64(d);
  w.bytes(t.data, t.nbytes);
  if (t.dtype == GW_DTYPE_STRING) {
    for (uint64_t off : t.string_offsets()) w.u64(off);
  }
}

const char kRdbTruncated[] = "record is truncated or has a field of the wrong type";
namespace {
const char *const kTruncated = kRdbTruncated;
}  // namespace

char *load_tensor_data(RdbReader &r, int dtype, const std::vector<int64_t> &shape, uint64_t max_bytes,
                       uint64_t *elements, size_t *n, std::string *err) {
  /* The shape is checked before the data is read: no size derived from it can wrap. */
  TensorFault f = check_shape(dtype, shape.data(), shape.size(), max_bytes, elements);
  if (f != TensorFault::None) {
    *err = tensor_fault_text(f, max_bytes);
    return nullptr;
  }
  char *data = r.bytes(n);
  if (!data) {
    *err = kTruncated;
    return nullptr;
  }
  f = check_data(dtype, *elements, data, *n, max_bytes);
  if (f != TensorFault::None) {
    mem_free(data);
    *err = tensor_fault_text(f, max_bytes);
    return nullptr;
  }
  return data;
}

Tensor *load_tensor(RdbReader &r, std::string *err, uint64_t max_bytes) {
  uint64_t code = 0, bits = 0;
  int64_t ndim = 0;
  if (!r.u64(&code) || !r.u64(&bits) || !r.i64(&ndim)) {
    *err = kTruncated;
    return nullptr;
  }
  int dtype = dtype_from_dlpack(code, bits);
  if (dtype < 0) {
    *err = "unknown tensor dtype (code " + std::to_string(code) + ", bits " + std::to_string(bits) + ")";
    return nullptr;
  }
  if (ndim < 0 || static_cast<uint64_t>(ndim) > kMaxRank) {
    *err = "tensor rank " + std::to_string(ndim) + " is outside 0.." + std::to_string(kMaxRank);
    return nullptr;
  }
  std::vector<int64_t> shape(static_cast<size_t>(ndim));
  for (int64_t &d : shape) {
    if (!r.i64(&d)) {
      *err = kTruncated;
      return nullptr;
    }
  }
  uint64_t elements = 0;
  size_t n = 0;
  char *data = load_tensor_data(r, dtype, shape, max_bytes, &elements, &n, err);
  if (!data) return nullptr;
  if (dtype == GW_DTYPE_STRING) {
    /* Offsets are recomputed from the NULs but must be consumed. elements <= n here, and each
     * read consumes input, so a bogus record fails at its first missing field. */
    for (uint64_t i = 0; i < elements; i++) {
      uint64_t off;
      if (!r.u64(&off)) {
        mem_free(data);
        *err = kTruncated;
        return nullptr;
      }
    }
  }
  return tensor_adopt(dtype, std::move(shape), data, n);
}

/* ==== Model =================================================================================== */

void save_model(RdbWriter &w, const ModelRecord &m, size_t chunk_size) {
  w.u64(m.backend);
  if (m.optimize) {
    /* Flagged models only: "CPU\0OPTIMIZE\0". RedisAI 1.2 reads the device as a C string and
     * stops at the first NUL, so it still loads the model (unoptimised); unflagged models are
     * written exactly as before. */
    std::string dev = m.device;
    dev.push_back('\0');
    dev += kOptimizeFlag;
    w.cstr(dev);
  } else {
    w.cstr(m.device);
  }
  w.bytes(m.tag.data(), m.tag.size());
  w.u64(static_cast<uint64_t>(m.batchsize));
  w.u64(static_cast<uint64_t>(m.minbatchsize));
  w.u64(static_cast<uint64_t>(m.minbatchtimeout));
  w.u64(m.inputs.size());
  for (const std::string &s : m.inputs) w.cstr(s);
  w.u64(m.outputs.size());
  for (const std::string &s : m.outputs) w.cstr(s);
  if (chunk_size == 0) chunk_size = m.bloblen ? m.bloblen : 1;
  /* As RedisAI: always one more chunk than whole ones, so an exact multiple ends empty. */
  size_t nchunks = m.bloblen / chunk_size + 1;
  w.u64(m.bloblen);
  w.u64(nchunks);
  for (size_t i = 0; i < nchunks; i++) {
    size_t off = i * chunk_size;
    size_t len = m.bloblen - off < chunk_size ? m.bloblen - off : chunk_size;
    w.bytes(m.blob + off, len);
  }
}

namespace {
constexpr uint64_t kMaxNames = kMaxRdbNames;
constexpr size_t kMaxDevice = kMaxRdbDevice;
}  // namespace

bool load_model(RdbReader &r, ModelRecord *m, std::string *err) {
  uint64_t batchsize = 0, minbatchsize = 0, minbatchtimeout = 0;
  /* The tag is a RedisModuleString, taken verbatim (a binary tag may end in NUL). */
  if (!r.u64(&m->backend) || !r.str(&m->device, kMaxDevice) || !r.raw(&m->tag) ||
      !r.u64(&batchsize) || !r.u64(&minbatchsize) || !r.u64(&minbatchtimeout)) {
    *err = kTruncated;
    return false;
  }
  size_t nul = m->device.find('\0');
  if (nul != std::string::npos) {
    m->optimize = m->device.compare(nul + 1, std::string::npos, kOptimizeFlag) == 0;
    m->device.resize(nul);
  }
  m->batchsize = static_cast<long long>(batchsize);
  m->minbatchsize = static_cast<long long>(minbatchsize);
  m->minbatchtimeout = static_cast<long long>(minbatchtimeout);
  return load_model_names(r, m, err) && load_model_chunks(r, m, err);
}

bool load_model_names(RdbReader &r, ModelRecord *m, std::string *err) {
  for (std::vector<std::string> *names : {&m->inputs, &m->outputs}) {
    uint64_t n = 0;
    if (!r.count(&n, kMaxNames)) {
      *err = "model input/output count is truncated or over " + std::to_string(kMaxNames);
      return false;
    }
    for (uint64_t i = 0; i < n; i++) {
      names->emplace_back();
      if (!r.str(&names->back())) {
        *err = kTruncated;
        return false;
      }
    }
  }
  return true;
}

bool load_model_chunks(RdbReader &r, ModelRecord *m, std::string *err) {
  uint64_t total = 0, nchunks = 0;
  if (!r.u64(&total) || !r.u64(&nchunks)) {
    *err = kTruncated;
    return false;
  }
  /* Nothing is sized by `total`: chunks are read (each one backed by input) and only joined
   * once they add up. A writer makes at most total + 1 chunks (the last may be empty). */
  if (total > kTensorBytesCeiling || nchunks > total + 1) {
    *err = "model blob has " + std::to_string(nchunks) + " chunks for " + std::to_string(total) +
           " bytes";
    return false;
  }
  std::vector<std::pair<char *, size_t>> chunks;
  uint64_t got = 0;
  bool ok = true;
  for (uint64_t i = 0; i < nchunks && ok; i++) {
    size_t n = 0;
    char *p = r.bytes(&n);
    if (!p) {
      *err = kTruncated;
      ok = false;
    } else {
      chunks.emplace_back(p, n);
      got += n; /* each n <= total (checked below), so no wrap */
      if (n > total || got > total) {
        *err = "model blob chunks add up to more than its length";
        ok = false;
      }
    }
  }
  if (ok && got != total) {
    *err = "model blob is truncated (" + std::to_string(got) + " of " + std::to_string(total) +
           " bytes)";
    ok = false;
  }
  if (ok && chunks.size() == 1) {
    m->blob = chunks[0].first; /* the common case: one chunk, no copy */
    m->bloblen = chunks[0].second;
    return true;
  }
  if (ok) {
    m->blob = static_cast<char *>(mem_alloc(total ? total : 1));
    m->bloblen = 0;
    for (auto &c : chunks) {
      if (c.second) memcpy(m->blob + m->bloblen, c.first, c.second);
      m->bloblen += c.second;
    }
  }
  for (auto &c : chunks) mem_free(c.first);
  return ok;
}

/* ==== Script ================================================================================== */

void save_script(RdbWriter &w, const ScriptRecord &s) {
  w.cstr(s.device);
  w.bytes(s.tag.data(), s.tag.size());
  w.cstr(s.source);
  w.u64(s.entry_points.size());
  for (const std::string &e : s.entry_points) w.cstr(e);
}

bool load_script(RdbReader &r, ScriptRecord *s, std::string *err) {
  uint64_t n = 0;
  if (!r.str(&s->device, kMaxDevice) || !r.raw(&s->tag) || !r.str(&s->source)) {
    *err = kTruncated;
    return false;
  }
  if (!r.count(&n, kMaxNames)) {
    *err = "script entry point count is truncated or over " + std::to_string(kMaxNames);
    return false;
  }
  for (uint64_t i = 0; i < n; i++) {
    s->entry_points.emplace_back();
    if (!r.str(&s->entry_points.back())) {
      *err = kTruncated;
      return false;
    }
  }
  return true;
}

}  // namespace gw
