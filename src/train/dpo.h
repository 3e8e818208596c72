// Direct preference optimisation (Rafailov et al., 2023) on preference pairs.
// Data: `tessera data prepare-pref` writes an SFT dataset (train/sft.h) whose
// examples come in pairs: 2i = prompt + chosen, 2i + 1 = prompt + rejected, the
// response tokens learned. Per pair, with log-probabilities of the responses under
// the policy (pi) and the frozen reference (ref: the base model, or with LoRA the
// base without the adapter):
//   z = beta ((pi_c - ref_c) - (pi_r - ref_r)),   loss = -log sigmoid(z)
//   d loss / d pi_c = -beta sigmoid(-z),   d loss / d pi_r = +beta sigmoid(-z),
// so the backward is the cross-entropy's with every token of the chosen response
// weighted +beta sigmoid(-z) and of the rejected -beta sigmoid(-z).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "infer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "train/sft.h"
#include "train/transformer.h"

namespace tessera::train {

struct DpoStats {
  double loss = 0;      // sum over pairs of -log sigmoid(z)
  double margin = 0;    // sum over pairs of z (the implicit reward margin, times beta)
  double correct = 0;   // pairs with z > 0
  int64_t pairs = 0;
};

// The pair losses and, for each sequence, the weight of its tokens' gradients.
// pol / ref: each sequence's response log-probability (2 per pair: chosen, rejected).
DpoStats dpo_pairs(const double* pol, const double* ref, int64_t pairs, float beta, float* seq_weight);

// JSONL {"prompt": ... | "messages": [...], "chosen": ..., "rejected": ...} -> an SFT dataset of pairs.
SftStats prepare_pref(const Tokenizer& tok, const std::string& tokenizer_path, const ChatTemplate& tmpl,
                      const std::vector<std::string>& files, const std::string& dir, double val_fraction);

// Rows (B, T), B even: pairs chosen by (seed, step, micro), chosen in row 2b, rejected in 2b + 1.
void pref_batch(const SftSplit& s, uint64_t seed, int64_t step, int64_t micro, int64_t B, int64_t T, int32_t* x,
                int32_t* y);

// One micro-batch of DPO on model m: the reference's response log-probabilities (reference
// parameters, or null: the policy parameters with LoRA switched off), the policy's, then the
// weighted forward + backward into g (grad_scale: 1 / pairs of the step). Returns the pair stats.
class DpoStep {
 public:
  DpoStep(int64_t B, int64_t T, float beta)
      : B_(B), T_(T), beta_(beta), nll_(static_cast<size_t>(B * T)), w_(static_cast<size_t>(B * T)) {}
  DpoStats run(Transformer<float>& m, const float* policy, const float* reference, float* g, const int32_t* x,
               const int32_t* y, float grad_scale, uint64_t key, bool overwrite);
  // Evaluation: the stats only.
  DpoStats eval(Transformer<float>& m, const float* policy, const float* reference, const int32_t* x,
                const int32_t* y);

 private:
  int64_t B_, T_;
  float beta_;
  std::vector<double> nll_;
  std::vector<float> w_;
  std::vector<double> seq(Transformer<float>& m, const float* p, const int32_t* x, const int32_t* y, uint64_t key);
};

}  // namespace tessera::train
