/*
 * Unit tests of the engine's pure logic (no Redis): the batch picker, batch assembly, tensor
 * value rules and the v4 encodings. Built as engine/build/gw_core_tests and run by
 * tests/engine/test_core_units.py.
 */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "batching.h"
#include "serialization.h"
#include "tensor.h"

using namespace gw;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #cond); \
      failures++;                                                     \
    }                                                                 \
  } while (0)

/* ==== Batch picker ============================================================================ */

static BatchCandidate cand(const void *model, long long size, long long bs = 0, long long mbs = 0,
                           long long mbt = 0, int64_t queued = 0, int64_t expires = 0,
                           std::vector<std::vector<int64_t>> sig = {{0, 3}}) {
  BatchCandidate c;
  c.model = model;
  c.size = size;
  c.batchsize = bs;
  c.minbatchsize = mbs;
  c.minbatchtimeout = mbt;
  c.queued_ms = queued;
  c.expires_ms = expires;
  c.signature = std::move(sig);
  return c;
}

static std::vector<const BatchCandidate *> ptrs(const std::vector<BatchCandidate> &v) {
  std::vector<const BatchCandidate *> p;
  for (const BatchCandidate &c : v) p.push_back(&c);
  return p;
}

static void test_picker() {
  int m1, m2;
  {
    /* Unbatched requests run alone, in order. */
    std::vector<BatchCandidate> q{cand(&m1, 1), cand(&m1, 1)};
    BatchPick p = pick_batch(ptrs(q), 0);
    CHECK(p.members == std::vector<size_t>{0});
  }
  {
    /* Compatible requests merge up to BATCHSIZE; others are skipped, not blocking. */
    std::vector<BatchCandidate> q{cand(&m1, 2, 4), cand(&m2, 1, 4), cand(&m1, 1, 4),
                                  cand(&m1, 2, 4), cand(&m1, 1, 4, 0, 0, 0, 0, {{0, 5}}),
                                  cand(&m1, 1, 4)};
    BatchPick p = pick_batch(ptrs(q), 0);
    CHECK((p.members == std::vector<size_t>{0, 2, 5}));
  }
  {
    /* At or above BATCHSIZE: alone. */
    std::vector<BatchCandidate> q{cand(&m1, 4, 4, 2), cand(&m1, 1, 4, 2)};
    CHECK(pick_batch(ptrs(q), 0).members == std::vector<size_t>{0});
  }
  {
    /* MINBATCHSIZE not met, no timeout: nothing ready, wait indefinitely. */
    std::vector<BatchCandidate> q{cand(&m1, 1, 4, 3), cand(&m1, 1, 4, 3)};
    BatchPick p = pick_batch(ptrs(q), 1000);
    CHECK(p.members.empty());
    CHECK(p.wake_ms == -1);
    q.push_back(cand(&m1, 1, 4, 3));
    CHECK((pick_batch(ptrs(q), 1000).members == std::vector<size_t>{0, 1, 2}));
  }
  {
    /* MINBATCHTIMEOUT: wake at queued + timeout, then run what there is. */
    std::vector<BatchCandidate> q{cand(&m1, 1, 4, 3, 50, 100)};
    BatchPick p = pick_batch(ptrs(q), 120);
    CHECK(p.members.empty() && p.wake_ms == 150);
    CHECK(pick_batch(ptrs(q), 150).members == std::vector<size_t>{0});
  }
  {
    /* A waiting batch does not hold up an unrelated request behind it. */
    std::vector<BatchCandidate> q{cand(&m1, 1, 4, 3), cand(&m2, 1)};
    CHECK(pick_batch(ptrs(q), 0).members == std::vector<size_t>{1});
  }
  {
    /* TIMEOUT: an expired request is taken alone (to be answered TIMEDOUT), and its expiry
     * is a wake-up time while it waits. */
    std::vector<BatchCandidate> q{cand(&m1, 1, 4, 3, 0, 0, 500)};
    BatchPick p = pick_batch(ptrs(q), 100);
    CHECK(p.members.empty() && p.wake_ms == 500);
    CHECK(pick_batch(ptrs(q), 500).members == std::vector<size_t>{0});
  }
  {
    /* An astronomically large MINBATCHTIMEOUT waits like no timeout (no overflow). */
    std::vector<BatchCandidate> q{cand(&m1, 1, 4, 3, INT64_MAX - 5, 100)};
    BatchPick p = pick_batch(ptrs(q), 200);
    CHECK(p.members.empty() && p.wake_ms == -1);
  }
  {
    /* MINBATCHSIZE above BATCHSIZE: BATCHSIZE is the target, so the batch can complete. */
    std::vector<BatchCandidate> q{cand(&m1, 1, 2, 5), cand(&m1, 1, 2, 5)};
    CHECK((pick_batch(ptrs(q), 0).members == std::vector<size_t>{0, 1}));
  }
}

/* ==== Batch assembly ========================================================================== */

static Tensor *floats(std::vector<int64_t> shape, std::vector<float> v) {
  char *data = static_cast<char *>(mem_alloc(v.size() * 4));
  std::memcpy(data, v.data(), v.size() * 4);
  return tensor_adopt(GW_DTYPE_FLOAT, std::move(shape), data, v.size() * 4);
}

static void test_concat_slice() {
  Tensor *a = floats({1, 2}, {1, 2});
  Tensor *b = floats({2, 2}, {3, 4, 5, 6});
  Tensor *c = concat_dim0({a, b});
  CHECK((c->shape == std::vector<int64_t>{3, 2}));
  const float *f = reinterpret_cast<const float *>(c->data);
  CHECK(f[0] == 1 && f[5] == 6);
  GwTensor view = c->view();
  Tensor *s = slice_dim0(view, 1, 2);
  CHECK((s->shape == std::vector<int64_t>{2, 2}));
  CHECK(reinterpret_cast<const float *>(s->data)[0] == 3);
  CHECK(batch_signature({a}) == batch_signature({b}));
  Tensor *d = floats({2, 1}, {1, 2});
  CHECK(batch_signature({a}) != batch_signature({d}));
  for (Tensor *t : {a, b, c, s, d}) t->release();
}

/* ==== Tensor rules ============================================================================ */

static void test_values() {
  Tensor *t = nullptr;
  CHECK(tensor_from_values(GW_DTYPE_INT8, {1}, {{"128", 3}}, &t) == "ERR invalid value");
  CHECK(tensor_from_values(GW_DTYPE_BOOL, {1}, {{"2", 1}}, &t) ==
        "ERR BOOL tensor elements must be 0 or 1");
  CHECK(tensor_from_values(GW_DTYPE_FLOAT, {2}, {{"1", 1}}, &t) ==
        "ERR wrong number of values was given in 'AI.TENSORSET' command");
  CHECK(tensor_from_values(GW_DTYPE_UINT16, {1}, {{"65535", 5}}, &t).empty());
  t->release();
  CHECK(tensor_from_blob(GW_DTYPE_STRING, {2}, "a\0b", 3, &t) ==
        "ERR Number of string elements in data blob does not match tensor length");
  CHECK(format_float(0.1f) == "0.1");
  CHECK(format_double(4.0) == "4");
  CHECK(checked_elements({1, -1}, GW_DTYPE_FLOAT) == -1);
  CHECK(checked_elements({int64_t(1) << 33}, GW_DTYPE_INT8) == -1);
  CHECK(dtype_from_name("uint16", 6) == GW_DTYPE_UINT16);
}

/* ==== v4 encodings ============================================================================ */

struct Buffer : RdbWriter, RdbReader {
  std::vector<std::string> items;
  size_t pos = 0;
  void u64(uint64_t v) override { items.push_back(std::to_string(v)); }
  void i64(int64_t v) override { items.push_back(std::to_string(v)); }
  void bytes(const char *p, size_t n) override { items.emplace_back(p, n); }
  uint64_t u64() override { return std::stoull(items.at(pos++)); }
  int64_t i64() override { return std::stoll(items.at(pos++)); }
  char *bytes(size_t *n) override {
    const std::string &s = items.at(pos++);
    char *p = static_cast<char *>(mem_alloc(s.size() + 1));
    std::memcpy(p, s.data(), s.size());
    *n = s.size();
    return p;
  }
};

static void test_encodings() {
  Buffer buf;
  Tensor *s = nullptr;
  CHECK(tensor_from_blob(GW_DTYPE_STRING, {2}, "ab\0c\0", 5, &s).empty());
  save_tensor(buf, *s);
  /* code, bits, ndim, shape, data, then one offset per string */
  CHECK(buf.items.size() == 3 + 1 + 1 + 2);
  CHECK(buf.items[0] == "7" && buf.items[5] == "0" && buf.items[6] == "3");
  std::string err;
  Tensor *back = load_tensor(buf, &err);
  CHECK(back && back->nbytes == 5 && std::memcmp(back->data, "ab\0c\0", 5) == 0);
  s->release();
  if (back) back->release();

  Buffer mb;
  ModelRecord m;
  m.device = "CPU";
  m.tag = "t";
  m.batchsize = 4;
  m.inputs = {"a", "b"};
  m.outputs = {""};
  m.blob = static_cast<char *>(mem_alloc(10));
  std::memcpy(m.blob, "0123456789", 10);
  m.bloblen = 10;
  save_model(mb, m, 4);
  ModelRecord r;
  CHECK(load_model(mb, &r, &err));
  CHECK(r.device == "CPU" && r.tag == "t" && r.batchsize == 4 && r.inputs.size() == 2);
  CHECK(r.bloblen == 10 && std::memcmp(r.blob, "0123456789", 10) == 0);
  /* total length, then 10 / 4 + 1 = 3 chunks of at most 4 bytes */
  CHECK(mb.items[mb.items.size() - 5] == "10" && mb.items[mb.items.size() - 4] == "3");

  /* An exact multiple of the chunk size ends with an empty chunk. */
  Buffer eb;
  save_model(eb, m, 5);
  CHECK(eb.items[eb.items.size() - 4] == "3" && eb.items.back().empty());
  ModelRecord e2;
  CHECK(load_model(eb, &e2, &err) && e2.bloblen == 10);

  Buffer sb;
  save_script(sb, ScriptRecord{"CPU", "", "def f(): pass", {"f"}});
  ScriptRecord sr;
  CHECK(load_script(sb, &sr, &err) && sr.source == "def f(): pass" && sr.entry_points.size() == 1);
}

int main() {
  test_picker();
  test_concat_slice();
  test_values();
  test_encodings();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all core checks passed\n");
  return 0;
}
