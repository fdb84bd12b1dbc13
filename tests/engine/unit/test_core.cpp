/*
 * Unit tests of the engine's pure logic (no Redis): the batch picker, batch assembly, tensor
 * value rules, the v4 encodings and the memory figures. Built as engine/build/gw_core_tests and run by
 * tests/engine/test_core_units.py.
 */
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "batching.h"
#include "rdb_legacy.h"
#include "memory.h"
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
  /* VALUES: RedisAI's "invalid value"; the BOOL text belongs to the BLOB path. */
  CHECK(tensor_from_values(GW_DTYPE_BOOL, {1}, {{"2", 1}}, &t) == "ERR invalid value");
  CHECK(tensor_from_blob(GW_DTYPE_BOOL, {1}, "\2", 1, &t) == "ERR BOOL tensor elements must be 0 or 1");
  /* FLOAT beyond its range stores inf; FLT_MAX itself and values rounding to it stay finite. */
  CHECK(tensor_from_values(GW_DTYPE_FLOAT, {3}, {{"1e40", 4}, {"-1e39", 5}, {"3.4028235e38", 12}}, &t).empty());
  {
    const float *f = reinterpret_cast<const float *>(t->data);
    CHECK(std::isinf(f[0]) && f[0] > 0 && std::isinf(f[1]) && f[1] < 0 && std::isfinite(f[2]));
  }
  t->release();
  /* STRING: one terminating NUL is the value's own; a NUL elsewhere is refused. */
  CHECK(tensor_from_values(GW_DTYPE_STRING, {2}, {{"ab\0", 3}, {"c", 1}}, &t).empty());
  CHECK(t->nbytes == 5 && memcmp(t->data, "ab\0c\0", 5) == 0);
  t->release();
  CHECK(tensor_from_values(GW_DTYPE_STRING, {1}, {{"ab\0\0", 4}}, &t) ==
        "ERR C-string value contains null character");
  CHECK(tensor_from_values(GW_DTYPE_FLOAT, {2}, {{"1", 1}}, &t) ==
        "ERR wrong number of values was given in 'AI.TENSORSET' command");
  CHECK(tensor_from_values(GW_DTYPE_UINT16, {1}, {{"65535", 5}}, &t).empty());
  t->release();
  CHECK(tensor_from_blob(GW_DTYPE_STRING, {2}, "a\0b", 3, &t) ==
        "ERR Number of string elements in data blob does not match tensor length");
  CHECK(format_float(0.1f) == "0.1");
  CHECK(format_double(4.0) == "4");
  CHECK(checked_elements({1, -1}, GW_DTYPE_FLOAT) == -1);
  CHECK(checked_elements({int64_t(1) << 33}, GW_DTYPE_INT8) == int64_t(1) << 33);
  CHECK(checked_elements({int64_t(1) << 49}, GW_DTYPE_INT8) == -1);
  CHECK(dtype_from_name("uint16", 6) == GW_DTYPE_UINT16);
}

/* ==== v4 encodings ============================================================================ */

struct Buffer : RdbWriter, RdbReader {
  std::vector<std::string> items;
  size_t pos = 0;
  void u64(uint64_t v) override { items.push_back(std::to_string(v)); }
  void i64(int64_t v) override { items.push_back(std::to_string(v)); }
  void bytes(const char *p, size_t n) override { items.emplace_back(p, n); }
  bool u64(uint64_t *v) override {
    if (pos >= items.size()) return false;
    *v = std::stoull(items.at(pos++));
    return true;
  }
  bool i64(int64_t *v) override {
    if (pos >= items.size()) return false;
    *v = std::stoll(items.at(pos++));
    return true;
  }
  char *bytes(size_t *n) override {
    if (pos >= items.size()) return nullptr;
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

/* ==== Invariants ============================================================================== */

static void test_invariants() {
  const uint64_t lim = kDefaultTensorMaxBytes;
  uint64_t n = 0;
  /* The wrap of issue 11: 2^30 * 2^32 elements * 4 bytes is 2^64, 0 once wrapped. */
  int64_t wrap[] = {int64_t(1) << 30, int64_t(1) << 32};
  CHECK(check_shape(GW_DTYPE_FLOAT, wrap, 2, lim, &n) == TensorFault::TooLarge);
  CHECK(check_shape(GW_DTYPE_FLOAT, wrap, 2, kTensorBytesCeiling, &n) == TensorFault::TooLarge);
  int64_t huge[] = {INT64_MAX, INT64_MAX, 2};
  CHECK(check_shape(GW_DTYPE_INT8, huge, 3, UINT64_MAX, &n) == TensorFault::TooLarge);
  std::vector<int64_t> deep(65, 1);
  CHECK(check_shape(GW_DTYPE_FLOAT, deep.data(), 65, lim, &n) == TensorFault::Rank);
  CHECK(check_shape(GW_DTYPE_FLOAT, deep.data(), 64, lim, &n) == TensorFault::None && n == 1);
  int64_t zero[] = {3, 0};
  CHECK(check_shape(GW_DTYPE_FLOAT, zero, 2, lim, &n) == TensorFault::Dim);
  CHECK(check_shape(GW_DTYPE_FLOAT, nullptr, 0, lim, &n) == TensorFault::None && n == 1);
  CHECK(check_shape(kNumDTypes, nullptr, 0, lim, &n) == TensorFault::DType);
  int64_t two[] = {2};
  CHECK(check_shape(GW_DTYPE_DOUBLE, two, 1, 15, &n) == TensorFault::TooLarge);
  CHECK(check_shape(GW_DTYPE_DOUBLE, two, 1, 16, &n) == TensorFault::None);
  CHECK(check_tensor(GW_DTYPE_STRING, two, 1, "a\0b\0", 4, lim) == TensorFault::None);
  CHECK(check_tensor(GW_DTYPE_STRING, two, 1, "a\0b\0", 4, 3) == TensorFault::TooLarge);
  CHECK(check_tensor(GW_DTYPE_STRING, two, 1, "a\0b", 3, lim) == TensorFault::Strings);
  CHECK(check_tensor(GW_DTYPE_BOOL, two, 1, "\1\2", 2, lim) == TensorFault::Bool);
  CHECK(check_tensor(GW_DTYPE_INT16, two, 1, "abc", 3, lim) == TensorFault::Length);
  Tensor *t = nullptr;
  CHECK(tensor_from_blob(GW_DTYPE_FLOAT, {1 << 30, int64_t(1) << 32}, "", 0, &t) ==
        "ERR " + tensor_fault_text(TensorFault::TooLarge, lim));
  CHECK(tensor_from_values(GW_DTYPE_STRING, {1}, {{"abcdef", 6}}, &t, 4) ==
        "ERR " + tensor_fault_text(TensorFault::TooLarge, 4));
}

/* ==== Hostile records =========================================================================
 * Through BufferReader, the framing the fuzzers use: a truncated record at every length, and
 * crafted ones, are errors. */

static void test_hostile_records() {
  Tensor *s = nullptr;
  CHECK(tensor_from_blob(GW_DTYPE_STRING, {2}, "ab\0c\0", 5, &s).empty());
  BufferWriter w;
  save_tensor(w, *s);
  s->release();
  std::string err;
  for (size_t cut = 0; cut < w.out.size(); cut++) {
    BufferReader r(w.out.data(), cut);
    Tensor *t = load_tensor(r, &err);
    CHECK(t == nullptr);
    if (t) t->release();
  }
  BufferReader whole(w.out.data(), w.out.size());
  Tensor *back = load_tensor(whole, &err);
  CHECK(back && whole.at_end());
  if (back) back->release();

  /* 65 dimensions; a wrapping shape; a huge string length; a bad dtype. */
  auto tensor_rec = [](uint64_t code, uint64_t bits, std::vector<int64_t> shape, std::string data) {
    BufferWriter b;
    b.u64(code);
    b.u64(bits);
    b.i64(static_cast<int64_t>(shape.size()));
    for (int64_t d : shape) b.i64(d);
    b.bytes(data.data(), data.size());
    return b.out;
  };
  for (const std::string &rec :
       {tensor_rec(2, 32, std::vector<int64_t>(65, 1), "abcd"),
        tensor_rec(2, 32, {1 << 30, int64_t(1) << 32}, ""), tensor_rec(2, 32, {0}, ""),
        tensor_rec(9, 32, {1}, "abcd"), tensor_rec(2, 32, {2}, "abcd"),
        tensor_rec(6, 8, {1}, "\2")}) {
    BufferReader r(rec.data(), rec.size());
    CHECK(load_tensor(r, &err) == nullptr);
  }
  {
    std::string rec = tensor_rec(2, 32, {1}, "abcd");
    rec[rec.size() - 5] = '\x7f'; /* the data length's top byte: now far past the end */
    BufferReader r(rec.data(), rec.size());
    CHECK(load_tensor(r, &err) == nullptr);
  }
  {
    std::string rec = tensor_rec(2, 32, {4}, std::string(16, 'x'));
    BufferReader ok(rec.data(), rec.size());
    Tensor *t = load_tensor(ok, &err);
    CHECK(t != nullptr);
    if (t) t->release();
    BufferReader limited(rec.data(), rec.size());
    CHECK(load_tensor(limited, &err, 15) == nullptr);
  }

  /* Model: a blob length far beyond the chunks, chunks adding up to more, too many chunks. */
  auto model_rec = [](uint64_t total, std::vector<std::string> chunks, uint64_t nchunks) {
    BufferWriter b;
    b.u64(2);
    b.cstr("CPU");
    b.bytes("", 0);
    b.u64(0);
    b.u64(0);
    b.u64(0);
    b.u64(0);
    b.u64(0);
    b.u64(total);
    b.u64(nchunks);
    for (const std::string &c : chunks) b.bytes(c.data(), c.size());
    return b.out;
  };
  for (const std::string &rec :
       {model_rec(UINT64_MAX, {"ab"}, 1), model_rec(1, {"ab"}, 1), model_rec(2, {"ab"}, 9),
        model_rec(4, {"ab", "cd"}, 3), model_rec(2, {"a"}, 1)}) {
    BufferReader r(rec.data(), rec.size());
    ModelRecord m;
    CHECK(!load_model(r, &m, &err));
  }
  {
    std::string rec = model_rec(4, {"ab", "cd", ""}, 3);
    for (size_t cut = 0; cut < rec.size(); cut++) {
      BufferReader r(rec.data(), cut);
      ModelRecord m;
      CHECK(!load_model(r, &m, &err));
    }
    BufferReader r(rec.data(), rec.size());
    ModelRecord m;
    CHECK(load_model(r, &m, &err) && m.bloblen == 4 && std::memcmp(m.blob, "abcd", 4) == 0);
  }
  {
    BufferWriter b;
    b.cstr("CPU");
    b.bytes("", 0);
    b.cstr("def f(): pass");
    b.u64(UINT64_MAX);
    BufferReader r(b.out.data(), b.out.size());
    ScriptRecord sr;
    CHECK(!load_script(r, &sr, &err));
  }
}

/* ==== Legacy encodings (0-3) ==================================================================
 * The spec's example records, every truncation of them, and the fields that are dead data. */

static void test_legacy() {
  {
    /* FLOAT [2] = 1, 2 in encver 0-3: U1 U0 U32 U2 U1 U1 U2 U1 U0 B(8 bytes). */
    BufferWriter b;
    for (uint64_t v : {1, 0, 32, 2, 1, 1, 2, 1, 0}) b.u64(v);
    const float vals[2] = {1, 2};
    b.bytes(reinterpret_cast<const char *>(vals), 8);
    for (int encver = 0; encver < 4; encver++) {
      BufferReader r(b.out.data(), b.out.size());
      std::string err;
      Tensor *t = load_tensor_any(r, encver, &err);
      CHECK(t && r.at_end() && t->dtype == GW_DTYPE_FLOAT && t->shape == std::vector<int64_t>{2} &&
            memcmp(t->data, vals, 8) == 0);
      if (t) t->release();
    }
    for (size_t cut = 0; cut < b.out.size(); cut++) {
      BufferReader r(b.out.data(), cut);
      std::string err;
      CHECK(load_tensor_legacy(r, &err, kTensorBytesCeiling) == nullptr && !err.empty());
    }
    /* The same bytes as a version-4 record are something else entirely (and refused). */
    BufferReader r4(b.out.data(), b.out.size());
    std::string err;
    Tensor *t4 = load_tensor_any(r4, 4, &err);
    CHECK(t4 == nullptr);
    BufferReader r5(b.out.data(), b.out.size());
    CHECK(load_tensor_any(r5, 5, &err) == nullptr &&
          err == "Failed loading tensor, RedisAI version (10207) is not forward compatible.");
  }
  {
    /* A 1.0 TORCH model: U2 B("CPU\0") B("v1\0") U0 U0 U0 U0 B(blob); version 1 chunked, no
     * minbatchtimeout, tag verbatim. */
    BufferWriter v0, v1;
    v0.u64(2);
    v0.bytes("CPU\0", 4);
    v0.bytes("v1\0", 3);
    for (uint64_t v : {7, 3, 0, 0}) v0.u64(v);
    v0.bytes("blob-bytes", 10);
    v1.u64(2);
    v1.bytes("cpu\0", 4);
    v1.bytes("t\0", 2);
    for (uint64_t v : {8, 2, 1}) v1.u64(v);
    v1.bytes("x\0", 2);
    v1.u64(1);
    v1.bytes("\0", 1);
    v1.u64(10);
    v1.u64(3);
    v1.bytes("blob-", 5);
    v1.bytes("bytes", 5);
    v1.bytes("", 0);
    ModelRecord m0, m1;
    std::string err;
    BufferReader r0(v0.out.data(), v0.out.size()), r1(v1.out.data(), v1.out.size());
    CHECK(load_model_any(r0, 0, &m0, &err) && r0.at_end());
    CHECK(m0.device == "CPU" && m0.tag == "v1" && m0.batchsize == 7 && m0.minbatchsize == 3 &&
          m0.minbatchtimeout == 0 && m0.bloblen == 10 && memcmp(m0.blob, "blob-bytes", 10) == 0);
    CHECK(load_model_any(r1, 1, &m1, &err) && r1.at_end());
    CHECK(m1.device == "cpu" && m1.tag == std::string("t\0", 2) && m1.batchsize == 8 &&
          m1.minbatchsize == 2 && m1.minbatchtimeout == 0 && m1.inputs == std::vector<std::string>{"x"} &&
          m1.bloblen == 10 && memcmp(m1.blob, "blob-bytes", 10) == 0);
    for (const std::string *rec : {&v0.out, &v1.out}) {
      int encver = rec == &v0.out ? 0 : 1;
      for (size_t cut = 0; cut < rec->size(); cut++) {
        BufferReader r(rec->data(), cut);
        ModelRecord m;
        CHECK(!load_model_legacy(r, encver, &m, &err));
      }
    }
  }
  {
    /* Scripts: encver 0 tag as a C string, 1-2 verbatim, no entry points either way. */
    for (int encver = 0; encver < 3; encver++) {
      BufferWriter b;
      b.bytes("CPU\0", 4);
      if (encver == 0) {
        b.bytes("s\0", 2);
      } else {
        b.bytes("s", 1);
      }
      b.bytes("def f(a, b):\n    return a + b\n\0", 31);
      BufferReader r(b.out.data(), b.out.size());
      ScriptRecord s;
      std::string err;
      CHECK(load_script_any(r, encver, &s, &err) && r.at_end());
      CHECK(s.device == "CPU" && s.tag == "s" && s.source == "def f(a, b):\n    return a + b\n" &&
            s.entry_points.empty());
    }
  }
}

/* ==== Memory ================================================================================= */

static void test_memory() {
  const uint64_t MiB = 1 << 20;
  CHECK(default_cpu_cache_bytes(0) == 512 * MiB);                 /* no maxmemory */
  CHECK(default_cpu_cache_bytes(8192 * MiB) == 512 * MiB);        /* capped */
  CHECK(default_cpu_cache_bytes(2048 * MiB) == 512 * MiB);        /* exactly a quarter */
  CHECK(default_cpu_cache_bytes(1000 * MiB) == 250 * MiB);        /* a quarter */
  CHECK(default_cpu_cache_bytes(1000 * MiB + 12345) == 250 * MiB); /* whole MiB */
  CHECK(default_cpu_cache_bytes(3 * MiB) == 0);                    /* under 1 MiB: off */
  ProcessMemory m = process_memory();
  CHECK(m.rss_bytes > 0);
  std::vector<char> big(8 * MiB, 1); /* the process holds at least what it just touched */
  ProcessMemory now = process_memory();
  CHECK(now.rss_bytes >= 8 * MiB && big[123] == 1);
#if defined(__SANITIZE_ADDRESS__)
  /* AddressSanitizer replaces malloc: the figures say the heap is not the C library's, and
   * claim nothing of it. */
  CHECK(!now.malloc_is_libc && now.malloc_in_use_bytes == 0);
#else
  /* This binary uses the C library's malloc, so mallinfo2 sees the vector. */
  CHECK(now.malloc_is_libc && now.malloc_in_use_bytes >= 8 * MiB);
#endif
}

int main() {
  test_legacy();
  test_memory();
  test_invariants();
  test_hostile_records();
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
