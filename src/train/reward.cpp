#include "train/reward.h"

namespace tessera::train {

void last_tokens(const int32_t* y, int64_t B, int64_t T, int32_t* last) {
  for (int64_t b = 0; b < B; ++b) {
    int32_t l = 0;
    for (int64_t t = 0; t < T; ++t)
      if (y[b * T + t] >= 0) l = int32_t(std::min<int64_t>(t + 1, T - 1));
    last[b] = l;
  }
}

DpoStats reward_pairs(const double* r, int64_t pairs, float* dr) {
  // Bradley-Terry is DPO's loss with beta 1 and no reference: z = r_c - r_r. dpo_pairs
  // returns d loss / d nll = -d loss / d r.
  const std::vector<double> zero(size_t(2 * pairs), 0.0);
  const DpoStats st = dpo_pairs(r, zero.data(), pairs, 1.f, dr);
  if (dr)
    for (int64_t i = 0; i < 2 * pairs; ++i) dr[i] = -dr[i];
  return st;
}

const std::vector<double>& RewardStep::score(Transformer<float>& m, const float* p, const float* head,
                                             const int32_t* x, const int32_t* y) {
  last_tokens(y, B_, T_, last_.data());
  m.set_reward(head, nullptr, last_.data(), nullptr, r_.data());
  m.forward(p, x, y);
  m.set_reward(nullptr, nullptr, nullptr, nullptr, nullptr);
  return r_;
}

DpoStats RewardStep::eval(Transformer<float>& m, const float* p, const float* head, const int32_t* x,
                          const int32_t* y) {
  score(m, p, head, x, y);
  return reward_pairs(r_.data(), B_ / 2, nullptr);
}

DpoStats RewardStep::run(Transformer<float>& m, const float* p, const float* head, float* g, float* g_head,
                         const int32_t* x, const int32_t* y, float grad_scale, uint64_t key) {
  last_tokens(y, B_, T_, last_.data());
  m.set_reward(head, nullptr, last_.data(), nullptr, r_.data());
  m.forward(p, x, y, key);
  const DpoStats st = reward_pairs(r_.data(), B_ / 2, dr_.data());
  m.set_reward(head, g_head, last_.data(), dr_.data(), r_.data());
  m.forward_backward(p, g, x, y, grad_scale, key, false);
  m.set_reward(nullptr, nullptr, nullptr, nullptr, nullptr);
  return st;
}

}  // namespace tessera::train
