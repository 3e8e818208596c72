// Non-owning tensor views. Shapes are outermost-first (PyTorch order): a linear
// weight W of out_features N and in_features K has shape {N, K}, rows of K.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace tessera {

struct TensorView {
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, 4> shape{1, 1, 1, 1};
  const void* data = nullptr;
  // Q8_G only: one f32 scale per `group` consecutive elements (row-major order).
  const float* scales = nullptr;
  int group = 0;
  // LLM.int8() (kernels/int8.h): a Q8_G view with group == cols whose activation
  // columns above this magnitude are multiplied in f32; 0: plain int8.
  float outlier_threshold = 0.f;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  int64_t rows() const { return ndim >= 2 ? numel() / shape[ndim - 1] : 1; }
  int64_t cols() const { return ndim >= 1 ? shape[ndim - 1] : 1; }
  size_t row_bytes() const { return dtype_row_bytes(dtype, cols()); }
  size_t nbytes() const { return dtype_row_bytes(dtype, numel()); }
  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes(); }
  const float* f32() const { return static_cast<const float*>(data); }
  bool empty() const { return data == nullptr; }
};

inline TensorView make_view(DType t, std::initializer_list<int64_t> shape, const void* data) {
  TensorView v;
  v.dtype = t;
  v.data = data;
  v.ndim = int(shape.size());
  int i = 0;
  for (int64_t s : shape) v.shape[i++] = s;
  return v;
}

std::string shape_str(const TensorView& v);

}  // namespace tessera
