/*
 * batching.cpp: the auto-batching rules.
 */
#include "batching.h"

#include <cstdint>
#include <cstring>

namespace gw {

/* ==== Picking ================================================================================= */

namespace {

bool expired(const BatchCandidate &c, int64_t now) { return c.expires_ms > 0 && now >= c.expires_ms; }

bool mergeable(const BatchCandidate &c) {
  return c.model != nullptr && c.batchsize > 0 && c.size < c.batchsize && !c.signature.empty();
}

void earliest(int64_t *wake, int64_t t) {
  if (t > 0 && (*wake < 0 || t < *wake)) *wake = t;
}

}  // namespace

BatchPick pick_batch(const std::vector<const BatchCandidate *> &queue, int64_t now_ms) {
  BatchPick pick;
  for (size_t i = 0; i < queue.size(); i++) {
    const BatchCandidate &first = *queue[i];
    /* A request past its TIMEOUT is taken at once, to be answered TIMEDOUT. */
    if (expired(first, now_ms) || !mergeable(first)) {
      pick.members = {i};
      pick.wake_ms = -1;
      return pick;
    }
    std::vector<size_t> members{i};
    long long total = first.size;
    for (size_t j = i + 1; j < queue.size(); j++) {
      const BatchCandidate &c = *queue[j];
      if (c.model != first.model || expired(c, now_ms) || c.signature != first.signature) continue;
      if (total + c.size > first.batchsize) continue;
      members.push_back(j);
      total += c.size;
    }
    /* A MINBATCHSIZE above BATCHSIZE could never be met; BATCHSIZE is then the target. */
    long long need = first.minbatchsize < first.batchsize ? first.minbatchsize : first.batchsize;
    if (need > 0 && total < need) {
      /* A timeout too large to add is as good as none. */
      bool finite = first.minbatchtimeout > 0 &&
                    first.minbatchtimeout < INT64_MAX - first.queued_ms;
      int64_t deadline = finite ? first.queued_ms + first.minbatchtimeout : 0;
      if (deadline == 0 || now_ms < deadline) {
        /* Not ready yet: wait for more requests, the MINBATCHTIMEOUT, or its own TIMEOUT. */
        earliest(&pick.wake_ms, deadline);
        earliest(&pick.wake_ms, first.expires_ms);
        continue;
      }
    }
    pick.members = std::move(members);
    pick.wake_ms = -1;
    return pick;
  }
  return pick;
}

std::vector<std::vector<int64_t>> batch_signature(const std::vector<const Tensor *> &inputs) {
  std::vector<std::vector<int64_t>> sig;
  for (const Tensor *t : inputs) {
    if (t->shape.empty() || t->dtype == GW_DTYPE_STRING) return {};
    std::vector<int64_t> s{t->dtype};
    s.insert(s.end(), t->shape.begin() + 1, t->shape.end());
    sig.push_back(std::move(s));
  }
  return sig;
}

/* ==== Assembling and splitting ================================================================ */

Tensor *concat_dim0(const std::vector<const Tensor *> &parts) {
  size_t nbytes = 0;
  int64_t rows = 0;
  for (const Tensor *p : parts) {
    nbytes += p->nbytes;
    rows += p->shape[0];
  }
  char *data = static_cast<char *>(mem_alloc(nbytes ? nbytes : 1));
  size_t off = 0;
  for (const Tensor *p : parts) {
    memcpy(data + off, p->data, p->nbytes);
    off += p->nbytes;
  }
  std::vector<int64_t> shape = parts[0]->shape;
  shape[0] = rows;
  return tensor_adopt(parts[0]->dtype, std::move(shape), data, nbytes);
}

Tensor *slice_dim0(const GwTensor &t, int64_t offset, int64_t count) {
  size_t row_bytes = t.shape[0] > 0 ? t.nbytes / static_cast<size_t>(t.shape[0]) : 0;
  size_t nbytes = row_bytes * static_cast<size_t>(count);
  char *data = static_cast<char *>(mem_alloc(nbytes ? nbytes : 1));
  memcpy(data, static_cast<const char *>(t.data) + row_bytes * static_cast<size_t>(offset), nbytes);
  std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
  shape[0] = count;
  return tensor_adopt(t.dtype, std::move(shape), data, nbytes);
}

}  // namespace gw
