/*
 * fuzz_rdb_legacy: the encoding 0-3 decoders (RedisAI 1.0-1.2.4 records) over BufferReader. The
 * first byte picks the type (mod 3) and the encoding version (0-3); the rest is the field stream.
 * A decoded record satisfies the invariants and re-encodes (as version 4) to the same record.
 * fuzz-sources: rdb_legacy.cpp
 */
#include "fuzz_common.h"
#include "rdb_legacy.h"

using namespace gw;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int type = data[0] % 3;
  int encver = (data[0] / 3) % 4;
  BufferReader r(data + 1, size - 1);
  std::string err;
  if (type == 0) {
    Tensor *t = load_tensor_any(r, encver, &err);
    if (!t) {
      FUZZ_REQUIRE(!err.empty());
      return 0;
    }
    require_valid(*t, kTensorBytesCeiling);
    require_round_trip(*t);
    t->release();
  } else if (type == 1) {
    ModelRecord m;
    if (!load_model_any(r, encver, &m, &err)) {
      FUZZ_REQUIRE(!err.empty());
      return 0;
    }
    FUZZ_REQUIRE(m.bloblen == 0 || m.blob != nullptr);
    FUZZ_REQUIRE(encver >= 2 || m.minbatchtimeout == 0);
    BufferWriter w;
    save_model(w, m, 64);
    BufferReader back_r(w.out.data(), w.out.size());
    ModelRecord back;
    FUZZ_REQUIRE(load_model(back_r, &back, &err));
    FUZZ_REQUIRE(back_r.at_end());
    FUZZ_REQUIRE(back.device == m.device && back.tag == m.tag && back.batchsize == m.batchsize);
    FUZZ_REQUIRE(back.bloblen == m.bloblen &&
                 (m.bloblen == 0 || std::memcmp(back.blob, m.blob, m.bloblen) == 0));
  } else {
    ScriptRecord s;
    if (!load_script_any(r, encver, &s, &err)) {
      FUZZ_REQUIRE(!err.empty());
      return 0;
    }
    FUZZ_REQUIRE(encver >= 3 || s.entry_points.empty());
    BufferWriter w;
    save_script(w, s);
    BufferReader back_r(w.out.data(), w.out.size());
    ScriptRecord back;
    FUZZ_REQUIRE(load_script(back_r, &back, &err));
    FUZZ_REQUIRE(back_r.at_end() && back.device == s.device && back.tag == s.tag &&
                 back.source == s.source && back.entry_points == s.entry_points);
  }
  return 0;
}
