// Reward models (`tessera train-reward`): the language model with a scalar head
// r = w . h_last + b on the final-norm state of a sequence's last token, trained on
// preference pairs (train/dpo.h's data) with the pairwise Bradley-Terry loss
//   -log sigmoid(r_chosen - r_rejected),
// evaluated by pairwise accuracy. The head's C + 1 parameters follow the model's in
// the trained buffer (checkpoints record "reward_head").
#pragma once
#include <cstdint>
#include <vector>

#include "train/dpo.h"
#include "train/transformer.h"

namespace tessera::train {

// Elements of the head (C weights and a bias) and its padded size in the flat buffer.
inline size_t reward_head_size(const ModelConfig& c) { return size_t(c.dim + 1); }
inline size_t reward_head_padded(const ModelConfig& c) {
  return (reward_head_size(c) + Layout::kAlign - 1) / Layout::kAlign * Layout::kAlign;
}

// Each row's last token (the position whose state the head reads): the one after the
// row's last target, i.e. the example's final token.
void last_tokens(const int32_t* y, int64_t B, int64_t T, int32_t* last);

// The pair losses of rewards r (chosen, rejected per pair) and d loss / d r per row.
DpoStats reward_pairs(const double* r, int64_t pairs, float* dr);

class RewardStep {
 public:
  RewardStep(int64_t B, int64_t T) : B_(B), T_(T), last_(static_cast<size_t>(B)), r_(static_cast<size_t>(B)), dr_(static_cast<size_t>(B)) {}
  // One micro-batch: rewards, pair losses, backward into g (model) and g_head (C + 1).
  DpoStats run(Transformer<float>& m, const float* p, const float* head, float* g, float* g_head, const int32_t* x,
               const int32_t* y, float grad_scale, uint64_t key);
  DpoStats eval(Transformer<float>& m, const float* p, const float* head, const int32_t* x, const int32_t* y);
  // The rewards of rows (B) without pairing (scoring).
  const std::vector<double>& score(Transformer<float>& m, const float* p, const float* head, const int32_t* x,
                                   const int32_t* y);

 private:
  int64_t B_, T_;
  std::vector<int32_t> last_;
  std::vector<double> r_;
  std::vector<float> dr_;
};

}  // namespace tessera::train
