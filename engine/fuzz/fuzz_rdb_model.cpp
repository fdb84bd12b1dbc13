/*
 * fuzz_rdb_model: the AI__MODEL decoder over BufferReader. The first byte picks the chunk size the
 * record is re-encoded with; a decoded record must re-encode and decode to the same record.
 */
#include "fuzz_common.h"

using namespace gw;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t chunk = data[0];
  BufferReader r(data + 1, size - 1);
  ModelRecord m;
  std::string err;
  if (!load_model(r, &m, &err)) {
    FUZZ_REQUIRE(!err.empty());
    return 0;
  }
  FUZZ_REQUIRE(m.bloblen == 0 || m.blob != nullptr);
  BufferWriter w;
  save_model(w, m, chunk);
  BufferReader back_r(w.out.data(), w.out.size());
  ModelRecord back;
  FUZZ_REQUIRE(load_model(back_r, &back, &err));
  FUZZ_REQUIRE(back_r.at_end());
  FUZZ_REQUIRE(back.backend == m.backend && back.device == m.device && back.tag == m.tag);
  FUZZ_REQUIRE(back.optimize == m.optimize && back.batchsize == m.batchsize);
  FUZZ_REQUIRE(back.inputs == m.inputs && back.outputs.size() == m.outputs.size());
  FUZZ_REQUIRE(back.bloblen == m.bloblen &&
               (m.bloblen == 0 || std::memcmp(back.blob, m.blob, m.bloblen) == 0));
  return 0;
}
