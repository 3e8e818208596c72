// Helpers for tests that compare whole-model outputs.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/model.h"

namespace tessera::test {

// Logits of every position of `toks` (prefill from position 0), (n, vocab) row-major.
inline std::vector<float> all_logits(const Weights& w, const std::vector<int32_t>& toks) {
  Model m(w, RunOptions{});
  KernelContext ctx(2);
  std::vector<float> out(toks.size() * size_t(w.cfg.vocab_size));
  m.forward_all(ctx, toks.data(), int64_t(toks.size()), 0, out.data());
  return out;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

}  // namespace tessera::test
