// Knowledge distillation (`tessera distill --teacher T`): word-level KD with
// the teacher's distribution computed on the fly by the inference engine (any
// format and weight type it loads; never stored beyond the current batch).
// Per target token the objective is
//   (1 - alpha) CE(y, p_s) + alpha tau^2 KL(p_t^tau || p_s^tau)      (forward KL, Hinton et al.)
//   (1 - alpha) CE(y, p_s) + alpha tau^2 KL(p_s^tau || p_t^tau)      (reverse, MiniLLM-style)
// with p^tau = softmax(logits / tau).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "formats/load.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "train/blocks.h"

namespace tessera::train {

struct KdOptions {
  std::string teacher;  // model path ("" : no distillation)
  std::string teacher_tokenizer;
  float alpha = 0.5f;   // weight of the KD term (1: KD only)
  float temp = 1.f;     // tau
  bool reverse = false; // KL(student || teacher)
  bool enabled() const { return !teacher.empty(); }
  void validate() const;  // Error naming the flag
};

// The KD term and the data term fused with the softmax, in place over the student's
// logits (N, V): returns the data loss sums (as cross_entropy) plus kd_sum (the sum of
// tau^2 KL over the rows with a target), and replaces each row by
// d[(1 - alpha) nll + alpha tau^2 KL] / d(logits) * scale (rows without a target: 0).
// teacher_logp (N, V): log softmax(teacher logits / tau).
template <class T>
blk::CeResult kd_cross_entropy(T* logits, const int32_t* targets, const float* teacher_logp, int64_t N, int64_t V,
                               const KdOptions& kd, float scale);

// The teacher: a loaded model and its engine, producing log softmax(logits / tau) of
// every position of a (B, T) batch. Error when its vocabulary differs from vocab.
class Teacher {
 public:
  Teacher(const KdOptions& kd, int64_t vocab, int64_t B, int64_t T, int threads);
  const float* logprobs(const int32_t* x);  // (B * T, V), valid until the next call
  const ModelConfig& config() const { return lm_.weights.cfg; }

 private:
  LoadedModel lm_;
  std::unique_ptr<Model> model_;
  KernelContext ctx_;
  int64_t B_, T_, V_;
  float temp_;
  std::vector<float> out_;
};

}  // namespace tessera::train
