// LLM.int8() (Dettmers et al., 2022) for inference: weights stored per row as
// int8 with an absmax scale (a Q8_G view whose group is its row length),
// activations quantized per token (the Q8_G integer path with one group per
// row), and the activation columns (feature dimensions) in which any row of
// the batch exceeds `outlier_threshold` in magnitude taken out of the int8
// product and multiplied in f32 against those columns of the weights,
// dequantized (bitsandbytes' inference form: the weights are kept once, in
// int8). linear() takes this path for views with outlier_threshold > 0.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace tessera {

// W (N, K) f32 / f16 / bf16 -> q (N * K int8), scales (N): scale = absmax / 127, q = round(w / scale).
void quantize_int8_rows(const TensorView& W, int8_t* q, float* scales);

// Whether linear() decomposes the product with W (an LLM.int8() view).
inline bool is_llm_int8(const TensorView& W) { return W.dtype == DType::Q8_G && W.outlier_threshold > 0.f; }

namespace detail {
// Y = X W^T + b with the outlier columns of X in f32 and the rest through the
// int8 path; counts into ctx.int8_stats.
void linear_int8_decomposed(KernelContext& ctx, const Linear& lin, const float* X, int64_t M, float* Y);
}  // namespace detail

}  // namespace tessera
