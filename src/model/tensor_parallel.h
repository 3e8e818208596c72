// Tensor parallelism (Megatron-style, Shoeybi et al. 2019) of a model's blocks
// over tp ranks: each rank holds 1/tp of every block's attention heads (the rows
// of q, k, v and their biases, the matching columns of the output projection)
// and of its feed-forward hidden units (gate and up rows, down columns); norms,
// embeddings and the output layer are replicated. A rank runs the block of a
// smaller model (tp_local_config) whose two row-parallel products (attention
// output, down) give partial sums that the ranks add up (TensorParallelSum).
// Training: train/tensor_parallel.h; inference: RunOptions::tp.
#pragma once
#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "model/config.h"
#include "model/weights.h"

namespace tessera {

// The block shape one of tp ranks computes: heads, KV heads and hidden units / tp.
// Error naming what does not split (heads, KV heads or hidden not divisible by tp) or
// what tensor parallelism does not cover (GPT-2's fused qkv, experts, latent attention,
// sandwich norms, multi-token prediction modules).
ModelConfig tp_local_config(const ModelConfig& full, int tp);

// Sums a row-parallel product's partial results over the tensor-parallel ranks, in
// place, identically on every rank (the sampled tokens must agree).
class TensorParallelSum {
 public:
  virtual ~TensorParallelSum() = default;
  virtual void sum(float* x, int64_t n) = 0;
};

// Rank r's slice of w (inference): views into w's tensors where the slice is whole rows
// (q, k, v, gate, up, their biases), copies into owned where it is a range of columns
// (output projection, down; the range must hold whole quantization blocks), the
// replicated tensors as they are; the row-parallel biases on rank 0 only. Error naming
// the tensor that cannot be split (columns not a whole number of blocks, int8 rows).
Weights tp_slice_weights(const Weights& w, int r, int tp, std::vector<aligned_vector<uint8_t>>& owned);

}  // namespace tessera
