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

namespace {
// A local tensor (shape[0] = m rows of w elements) is rows [r m, (r + 1) m) of the full one
// when its first dimension shrank; columns [r w, (r + 1) w) of each row when its second did.
// Copies between full (offsets of Layout full) and local, in the direction to_local says.
void copy_slices(const Layout& full, const Layout& local, int r, float* fullp, float* localp, bool to_local) {
  each_pair(full, local, [&](const ParamInfo& a, const ParamInfo& b) {
    float* f = fullp + a.offset;
    float* l = localp + b.offset;
    const auto copy = [&](float* fp, float* lp, size_t n) {
      to_local ? std::memcpy(lp, fp, n * sizeof(float)) : std::memcpy(fp, lp, n * sizeof(float));
    };
    if (a.numel == b.numel) return copy(f, l, a.numel);
    const size_t rows = size_t(b.shape[0]), w = b.numel / rows;
    if (a.shape[0] != b.shape[0]) return copy(f + size_t(r) * b.numel, l, b.numel);
    const size_t fw = a.numel / rows;  // the full row
    for (size_t i = 0; i < rows; ++i) copy(f + i * fw + size_t(r) * w, l + i * w, w);
  });
}
}  // namespace

void tp_slice(const Layout& full, const Layout& local, int r, const float* src, float* dst) {
  copy_slices(full, local, r, const_cast<float*>(src), dst, true);  // src is only read
}

void tp_gather(const Layout& full, const Layout& local, int r, const float* src, float* dst) {
  copy_slices(full, local, r, dst, const_cast<float*>(src), false);  // src is only read
}

std::vector<std::pair<size_t, size_t>> tp_split_ranges(const Layout& full, const Layout& local) {
  std::vector<std::pair<size_t, size_t>> r;
  each_pair(full, local, [&](const ParamInfo& a, const ParamInfo& b) {
    if (a.numel != b.numel) r.emplace_back(b.offset, b.offset + b.numel);
  });
  return r;
}

}  // namespace tessera::train
