/*
 * fuzz_tensor: AI.TENSORSET's rules as the command applies them. The input picks a dtype, a
 * shape (any int64s, rank up to 70), a limit, and BLOB, VALUES or zero-filled data; a tensor that
 * is built must satisfy the invariants and round-trip through the v4 encoding, and one that is
 * refused must be refused with a reply, never by a crash or an allocation the limit forbids.
 */
#include <vector>

#include "fuzz_common.h"

using namespace gw;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Taker in{data, size};
  int dtype = in.byte() % (kNumDTypes + 1); /* one past the table: refused */
  size_t ndim = in.byte() % 71;
  uint8_t mode = in.byte() % 3;
  /* Small limits exercise the size checks; 0 picks the default. */
  uint64_t limit = in.u64(2);
  limit = limit ? limit : kDefaultTensorMaxBytes;
  std::vector<int64_t> shape;
  for (size_t i = 0; i < ndim; i++) {
    /* Mostly small dimensions, sometimes anything (huge, zero, negative). */
    uint8_t kind = in.byte();
    shape.push_back(kind & 0x80 ? static_cast<int64_t>(in.u64()) : static_cast<int64_t>(kind & 7));
  }
  uint64_t elements = 0;
  TensorFault f = check_shape(dtype, shape.data(), shape.size(), limit, &elements);
  if (f != TensorFault::None) {
    FUZZ_REQUIRE(!tensorset_fault_reply(f, limit).empty());
    return 0;
  }
  FUZZ_REQUIRE(shape.size() <= kMaxRank);
  size_t elem = dtype_info(dtype).size ? dtype_info(dtype).size : 1;
  FUZZ_REQUIRE(elements * elem <= limit);
  Tensor *t = nullptr;
  std::string err;
  const char *rest = reinterpret_cast<const char *>(in.p);
  if (mode == 0) {
    err = tensor_from_blob(dtype, shape, rest, in.n, &t, limit);
  } else if (mode == 1) {
    /* VALUES: the rest of the input split at '|'. */
    std::vector<Arg> values;
    size_t start = 0;
    for (size_t i = 0; i <= in.n; i++) {
      if (i == in.n || rest[i] == '|') {
        values.push_back(Arg{rest + start, i - start});
        start = i + 1;
      }
    }
    err = tensor_from_values(dtype, shape, values, &t, limit);
  } else {
    if (elements * elem > (uint64_t(1) << 20)) return 0; /* keep the fuzzer's memory small */
    t = tensor_zeros(dtype, shape);
  }
  if (!t) {
    FUZZ_REQUIRE(err.compare(0, 4, "ERR ") == 0);
    return 0;
  }
  FUZZ_REQUIRE(err.empty());
  require_valid(*t, limit);
  FUZZ_REQUIRE(static_cast<uint64_t>(t->elements()) == elements);
  if (dtype == GW_DTYPE_STRING) FUZZ_REQUIRE(t->string_offsets().size() == elements);
  require_round_trip(*t);
  t->release();
  return 0;
}
