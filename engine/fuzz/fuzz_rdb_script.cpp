/*
 * fuzz_rdb_script: the AI_SCRIPT decoder over BufferReader; a decoded record re-encodes and
 * decodes to the same record.
 */
#include "fuzz_common.h"

using namespace gw;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  BufferReader r(data, size);
  ScriptRecord s;
  std::string err;
  if (!load_script(r, &s, &err)) {
    FUZZ_REQUIRE(!err.empty());
    return 0;
  }
  BufferWriter w;
  save_script(w, s);
  BufferReader back_r(w.out.data(), w.out.size());
  ScriptRecord back;
  FUZZ_REQUIRE(load_script(back_r, &back, &err));
  FUZZ_REQUIRE(back_r.at_end());
  FUZZ_REQUIRE(back.device == s.device && back.tag == s.tag && back.source == s.source);
  FUZZ_REQUIRE(back.entry_points == s.entry_points);
  return 0;
}
