#include "train/tensor_parallel.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace tessera::train {

namespace {
// Calls f(full tensor, local tensor, rows, cols split) for every tensor.
template <class F>
void each_pair(const Layout& full, const Layout& local, F f) {
  if (full.tensors.size() != local.tensors.size()) fail("internal: tensor-parallel layouts differ");
  for (size_t i = 0; i < full.tensors.size(); ++i) {
    const ParamInfo &a = full.tensors[i], &b = local.tensors[i];
    if (a.name != b.name || a.shape.size() != b.shape.size()) fail("internal: tensor-parallel layouts differ at ", a.name);
    f(a, b);
  }
}
}  // namespace

// A local tensor (shape[0] = m rows of w elements) is rows [r m, (r + 1) m) of the full one
// when its first dimension shrank; columns [r w, (r + 1) w) of each row when its second did.
void tp_slice(const Layout& full, const Layout& local, int r, int tp, const float* src, float* dst) {
  (void)tp;
  each_pair(full, local, [&](const ParamInfo& a, const ParamInfo& b) {
    const float* s = src + a.offset;
    float* d = dst + b.offset;
    if (a.numel == b.numel) return (void)std::memcpy(d, s, a.numel * sizeof(float));
    const size_t rows = size_t(b.shape[0]), w = b.numel / rows;
    if (a.shape[0] != b.shape[0]) return (void)std::memcpy(d, s + size_t(r) * b.numel, b.numel * sizeof(float));
    const size_t fw = a.numel / rows;  // the full row
    for (size_t i = 0; i < rows; ++i) std::memcpy(d + i * w, s + i * fw + size_t(r) * w, w * sizeof(float));
  });
}

void tp_gather(const Layout& full, const Layout& local, int r, int tp, const float* src, float* dst) {
  (void)tp;
  each_pair(full, local, [&](const ParamInfo& a, const ParamInfo& b) {
    const float* s = src + b.offset;
    float* d = dst + a.offset;
    if (a.numel == b.numel) return (void)std::memcpy(d, s, a.numel * sizeof(float));
    const size_t rows = size_t(b.shape[0]), w = b.numel / rows;
    if (a.shape[0] != b.shape[0]) return (void)std::memcpy(d + size_t(r) * b.numel, s, b.numel * sizeof(float));
    const size_t fw = a.numel / rows;
    for (size_t i = 0; i < rows; ++i) std::memcpy(d + i * fw + size_t(r) * w, s + i * w, w * sizeof(float));
  });
}

std::vector<std::pair<size_t, size_t>> tp_split_ranges(const Layout& full, const Layout& local) {
  std::vector<std::pair<size_t, size_t>> r;
  each_pair(full, local, [&](const ParamInfo& a, const ParamInfo& b) {
    if (a.numel != b.numel) r.emplace_back(b.offset, b.offset + b.numel);
  });
  return r;
}

}  // namespace tessera::train
