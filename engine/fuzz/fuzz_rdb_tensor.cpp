/*
 * fuzz_rdb_tensor: the AI_TENSOR decoder (RESTORE and RDB load) over BufferReader. The first
 * byte picks the size limit; the rest is the field stream. A decoded tensor satisfies the
 * invariants under that limit and re-encodes to the same tensor.
 */
#include "fuzz_common.h"

using namespace gw;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint64_t limit = data[0] ? uint64_t(data[0]) * 16 : kTensorBytesCeiling;
  BufferReader r(data + 1, size - 1);
  std::string err;
  Tensor *t = load_tensor(r, &err, limit);
  if (!t) {
    FUZZ_REQUIRE(!err.empty());
    return 0;
  }
  require_valid(*t, limit);
  require_round_trip(*t);
  t->release();
  return 0;
}
