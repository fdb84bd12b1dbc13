/*
 * batching.h: which queued requests a worker runs next, and how a batch is put together and
 * taken apart. Pure logic over plain descriptors, so the rules of the protocol's auto-batching
 * (BATCHSIZE / MINBATCHSIZE / MINBATCHTIMEOUT) live in one place and can be tested alone.
 */
#ifndef GROUNDWATCH_BATCHING_H
#define GROUNDWATCH_BATCHING_H

#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace gw {

/* ==== What the picker needs to know about one queued request ================================== */
struct BatchCandidate {
  const void *model = nullptr;  /* identity of the model to merge on; nullptr: never merged */
  long long batchsize = 0;
  long long minbatchsize = 0;
  long long minbatchtimeout = 0; /* ms */
  long long size = 0;            /* dim 0 of the first input */
  /* Per input: dtype followed by every dimension but the first; equal signatures merge. */
  std::vector<std::vector<int64_t>> signature;
  int64_t queued_ms = 0;  /* when it entered this queue */
  int64_t expires_ms = 0; /* absolute TIMEOUT deadline, 0 for none */
};

struct BatchPick {
  std::vector<size_t> members; /* indices into the candidate list; empty: nothing is ready */
  int64_t wake_ms = -1;        /* when nothing is ready: the earliest time that may change, -1 never */
};

/* The first ready request in queue order, plus the later compatible ones that fit in its batch. */
BatchPick pick_batch(const std::vector<const BatchCandidate *> &queue, int64_t now_ms);

/* Builds the per-input signature of BatchCandidate. Empty when an input has rank 0 (not
 * batchable). */
std::vector<std::vector<int64_t>> batch_signature(const std::vector<const Tensor *> &inputs);

/* ==== Assembling and splitting ================================================================ */
/* Concatenates same-signature tensors along dim 0 (numeric dtypes only). */
Tensor *concat_dim0(const std::vector<const Tensor *> &parts);
/* Rows [offset, offset+count) of a backend output as a new tensor. */
Tensor *slice_dim0(const GwTensor &t, int64_t offset, int64_t count);

}  // namespace gw

#endif
