#include "train/dpo.h"

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/mmap.h"
#include "core/rng.h"

namespace fs = std::filesystem;

namespace tessera::train {

DpoStats dpo_pairs(const double* pol, const double* ref, int64_t pairs, float beta, float* seq_weight) {
  DpoStats st;
  for (int64_t i = 0; i < pairs; ++i) {
    const double z = double(beta) * ((pol[2 * i] - ref[2 * i]) - (pol[2 * i + 1] - ref[2 * i + 1]));
    // -log sigmoid(z) = softplus(-z), stable both ways; sigmoid(-z) likewise.
    const double loss = z > 0 ? std::log1p(std::exp(-z)) : -z + std::log1p(std::exp(z));
    const double s = z > 0 ? std::exp(-z) / (1 + std::exp(-z)) : 1 / (1 + std::exp(z));
    st.loss += loss, st.margin += z, st.correct += z > 0 ? 1 : 0, ++st.pairs;
    // A token's loss is its nll = -(its log-prob): d loss / d nll = -d loss / d pi.
    if (seq_weight) seq_weight[2 * i] = float(double(beta) * s), seq_weight[2 * i + 1] = float(-double(beta) * s);
  }
  return st;
}

SftStats prepare_pref(const Tokenizer& tok, const std::string& tokenizer_path, const ChatTemplate& tmpl,
                      const std::vector<std::string>& files, const std::string& dir, double val_fraction) {
  // Each pair becomes two SFT lines in a temporary JSONL, chosen then rejected, and
  // prepare_sft's split keeps pairs together (val_fraction applies to whole pairs).
  const std::string tmp = dir + ".pairs.jsonl";
  fs::create_directories(fs::path(dir).parent_path().empty() ? "." : fs::path(dir).parent_path());
  std::string lines;
  int64_t pairs = 0;
  for (const auto& f : files) {
    for_each_jsonl(f, [&](const nlohmann::json& j, const std::string& where) {
      for (const char* k : {"chosen", "rejected"})
        if (!j.is_object() || !j.contains(k) || !j[k].is_string()) fail(where, ": missing string field \"", k, "\"");
      for (const char* k : {"chosen", "rejected"}) {
        nlohmann::json ex;
        if (j.contains("messages")) {
          ex["messages"] = j["messages"];
          ex["messages"].push_back({{"role", "assistant"}, {"content", j[k]}});
        } else if (j.contains("prompt") && j["prompt"].is_string()) {
          ex["prompt"] = j["prompt"], ex["completion"] = j[k];
        } else {
          fail(where, ": expected \"prompt\" (a string) or \"messages\"");
        }
        sft_example(ex, tok, tmpl, where);  // validates with the line's own location
        lines += ex.dump() + "\n";
      }
      ++pairs;
    });
  }
  if (pairs < 2) fail("data prepare-pref: ", pairs, " preference pair(s); need at least 2 (training and validation)");
  {
    AtomicFileWriter w(tmp);
    w.write(lines.data(), lines.size());
    w.commit();
  }
  // Whole pairs to validation: the fraction rounded to an even number of examples.
  const int64_t n_val = std::max<int64_t>(1, std::min<int64_t>(pairs - 1, std::llround(double(pairs) * val_fraction)));
  SftStats st;
  try {
    st = prepare_sft(tok, tokenizer_path, tmpl, {tmp}, dir, double(2 * n_val) / double(2 * pairs) - 1e-9);
  } catch (...) {
    fs::remove(tmp);
    throw;
  }
  fs::remove(tmp);
  if (st.val_examples % 2 != 0 || st.train_examples % 2 != 0) fail("internal: preference pairs split apart");
  nlohmann::json meta = nlohmann::json::parse(read_file(dir + "/meta.json"));
  meta["files"] = files;
  meta["preference"] = {{"train_pairs", st.train_examples / 2}, {"val_pairs", st.val_examples / 2}};
  write_meta(dir, meta);
  return st;
}

void pref_batch(const SftSplit& s, uint64_t seed, int64_t step, int64_t micro, int64_t B, int64_t T, int32_t* x,
                int32_t* y) {
  const int64_t pairs = s.examples() / 2;
  if (pairs <= 0) fail(s.tokens->path(), ": no preference pairs");
  for (int64_t b = 0; b < B / 2; ++b) {
    const uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ uint64_t(step)) ^ (uint64_t(micro) << 20 | uint64_t(b)));
    const int64_t e = int64_t(h % uint64_t(pairs));
    sft_eval_row(s, 2 * e, T, x + 2 * b * T, y + 2 * b * T);
    sft_eval_row(s, 2 * e + 1, T, x + (2 * b + 1) * T, y + (2 * b + 1) * T);
  }
}

std::vector<double> DpoStep::seq(Transformer<float>& m, const float* p, const int32_t* x, const int32_t* y,
                                 uint64_t key) {
  m.set_row_nll(nll_.data());
  m.forward(p, x, y, key);
  m.set_row_nll(nullptr);
  std::vector<double> lp(static_cast<size_t>(B_), 0.0);
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t t = 0; t < T_; ++t) lp[size_t(b)] -= nll_[size_t(b * T_ + t)];
  return lp;
}

DpoStats DpoStep::eval(Transformer<float>& m, const float* policy, const float* reference, const int32_t* x,
                       const int32_t* y) {
  if (!reference) m.enable_lora(false);
  const std::vector<double> ref = seq(m, reference ? reference : policy, x, y, 0);
  m.enable_lora(true);
  const std::vector<double> pol = seq(m, policy, x, y, 0);
  return dpo_pairs(pol.data(), ref.data(), B_ / 2, beta_, nullptr);
}

DpoStats DpoStep::run(Transformer<float>& m, const float* policy, const float* reference, float* g,
                      const int32_t* x, const int32_t* y, float grad_scale, uint64_t key, bool overwrite) {
  if (!reference) m.enable_lora(false);
  const std::vector<double> ref = seq(m, reference ? reference : policy, x, y, 0);
  m.enable_lora(true);
  const std::vector<double> pol = seq(m, policy, x, y, key);
  std::vector<float> sw(static_cast<size_t>(B_));
  const DpoStats st = dpo_pairs(pol.data(), ref.data(), B_ / 2, beta_, sw.data());
  for (int64_t b = 0; b < B_; ++b) std::fill(w_.begin() + b * T_, w_.begin() + (b + 1) * T_, sw[size_t(b)]);
  m.set_row_weights(w_.data());
  m.forward_backward(policy, g, x, y, grad_scale, key, overwrite);
  m.set_row_weights(nullptr);
  return st;
}

}  // namespace tessera::train
