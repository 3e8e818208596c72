// Megatron-style tensor parallelism of the training blocks (Shoeybi et al. 2019):
// each of tp ranks holds a slice of every block. The attention's heads (q, k and v
// projections' rows, and the output projection's matching columns) and the
// feed-forward's hidden units (gate and up rows, down columns) are split; norms,
// embeddings and the output layer are replicated. A rank then runs the block of a
// smaller model (tp_local_config) whose two row-parallel products (attention
// output, down) are partial sums: one all-reduce after each in the forward, and one
// on the sublayers' input gradients in the backward (Transformer::set_tensor_parallel).
#pragma once
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/tensor_parallel.h"
#include "train/params.h"

namespace tessera::train {

// tp_local_config: model/tensor_parallel.h.

// Rank r's slice (Layout local) of a full model's flat buffer (Layout full), and back:
// tp_gather writes the slice src of rank r into its place in the full buffer dst (the
// replicated tensors too). A tensor whose first dimension is smaller locally is split
// by rows, one whose second is smaller by columns.
void tp_slice(const Layout& full, const Layout& local, int r, const float* src, float* dst);
void tp_gather(const Layout& full, const Layout& local, int r, const float* src, float* dst);
// [begin, end) in the local layout of the tensors that are split (the rest is replicated).
std::vector<std::pair<size_t, size_t>> tp_split_ranges(const Layout& full, const Layout& local);

}  // namespace tessera::train
