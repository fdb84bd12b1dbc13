/*
 * serialization.cpp: the v4 encodings.
 */
#include "serialization.h"

#include <cstring>

namespace gw {

std::string RdbReader::str() {
  size_t n = 0;
  char *p = bytes(&n);
  if (!p) return {};
  while (n > 0 && p[n - 1] == '\0') n--;
  std::string s(p, n);
  mem_free(p);
  return s;
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

Tensor *load_tensor(RdbReader &r, std::string *err) {
  uint64_t code = r.u64();
  uint64_t bits = r.u64();
  int dtype = dtype_from_dlpack(code, bits);
  int64_t ndim = r.i64();
  if (dtype < 0 || ndim < 0 || ndim > 64) {
    *err = "unknown tensor dtype or rank in RDB";
    return nullptr;
  }
  std::vector<int64_t> shape(static_cast<size_t>(ndim));
  for (int64_t i = 0; i < ndim; i++) shape[static_cast<size_t>(i)] = r.i64();
  size_t n = 0;
  char *data = r.bytes(&n);
  if (!data) {
    *err = "missing tensor data in RDB";
    return nullptr;
  }
  int64_t elems = checked_elements(shape, dtype);
  if (elems < 0 || (dtype != GW_DTYPE_STRING && n != static_cast<size_t>(elems) * dtype_info(dtype).size)) {
    mem_free(data);
    *err = "tensor data does not match its shape in RDB";
    return nullptr;
  }
  if (dtype == GW_DTYPE_STRING) {
    for (int64_t i = 0; i < elems; i++) r.u64(); /* offsets are recomputed from the NULs */
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

bool load_model(RdbReader &r, ModelRecord *m, std::string *err) {
  m->backend = r.u64();
  m->device = r.str();
  size_t nul = m->device.find('\0');
  if (nul != std::string::npos) {
    m->optimize = m->device.compare(nul + 1, std::string::npos, kOptimizeFlag) == 0;
    m->device.resize(nul);
  }
  m->tag = r.str();
  m->batchsize = static_cast<long long>(r.u64());
  m->minbatchsize = static_cast<long long>(r.u64());
  m->minbatchtimeout = static_cast<long long>(r.u64());
  uint64_t nin = r.u64();
  if (nin > 65536) {
    *err = "implausible model input count in RDB";
    return false;
  }
  for (uint64_t i = 0; i < nin; i++) m->inputs.push_back(r.str());
  uint64_t nout = r.u64();
  if (nout > 65536) {
    *err = "implausible model output count in RDB";
    return false;
  }
  for (uint64_t i = 0; i < nout; i++) m->outputs.push_back(r.str());
  uint64_t total = r.u64();
  uint64_t nchunks = r.u64();
  m->blob = static_cast<char *>(mem_alloc(total ? total : 1));
  m->bloblen = 0;
  for (uint64_t i = 0; i < nchunks; i++) {
    size_t n = 0;
    char *p = r.bytes(&n);
    if (!p || m->bloblen + n > total) {
      if (p) mem_free(p);
      *err = "model blob chunks do not add up in RDB";
      return false;
    }
    memcpy(m->blob + m->bloblen, p, n);
    m->bloblen += n;
    mem_free(p);
  }
  if (m->bloblen != total) {
    *err = "model blob is truncated in RDB";
    return false;
  }
  return true;
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
  s->device = r.str();
  s->tag = r.str();
  s->source = r.str();
  uint64_t n = r.u64();
  if (n > 65536) {
    *err = "implausible entry point count in RDB";
    return false;
  }
  for (uint64_t i = 0; i < n; i++) s->entry_points.push_back(r.str());
  return true;
}

}  // namespace gw
