// tessera memory: training memory per device -- weights, gradients and Adam
// states under ZeRO stages 0-3 over N data-parallel ranks, and (for a model)
// the activations kept for backward, with and without per-block recomputation.
// GB here is 1e9 bytes, as in the ZeRO paper.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "model/synthetic.h"
#include "train/grad_buckets.h"
#include "train/memory.h"
#include "train/tensor_parallel.h"

namespace tessera::cli {

namespace {

const int64_t kTableDp[] = {1, 4, 16, 64, 256, 1024};  // the ZeRO paper's Table 1 columns

struct ModelShape {
  ModelConfig cfg;
  int64_t params = 0;
};

// synthetic:NAME[:TYPE] needs only its config (no random weights are generated);
// any other path is opened with load_model (memory-mapped) for its config and count.
ModelShape model_shape(const std::string& path) {
  ModelShape s;
  const std::string prefix = "synthetic:";
  if (path.rfind(prefix, 0) == 0) {
    std::string name = path.substr(prefix.size());
    if (const size_t colon = name.find(':'); colon != std::string::npos) name.resize(colon);
    s.cfg = synthetic_config(name);
    s.params = train::count_params(s.cfg);
    return s;
  }
  LoadedModel lm = load_model(path);
  s.cfg = lm.weights.cfg;
  s.params = lm.weights.n_params();
  return s;
}

double gb3(double bytes) { return std::stod(train::format_gb(bytes)); }  // GB rounded as printed

}  // namespace

int cmd_memory(int argc, char** argv) {
  CLI::App app{"Training memory per device: weights, gradients and Adam states under ZeRO sharding, "
               "and activations for a model. GB = 1e9 bytes.",
               "tessera memory"};
  double params = 0;
  int64_t dp = 1, batch = 1, seq = 0;
  int zero = 0;
  std::string precision = "mixed", model;
  bool table = false, json = false, recompute = false;
  std::string attention = "standard";
  int64_t logit_rows = 0;
  app.add_option("--params", params, "number of parameters (7.5e9 is accepted)");
  app.add_option("--dp", dp, "data-parallel ranks sharing the ZeRO shards (default 1)");
  int tp = 1;
  app.add_option("--tp", tp,
                 "tensor-parallel ranks per model: with -m, each holds 1/tp of every block's heads and hidden units "
                 "(embeddings and norms replicated); with --params, params / tp")
      ->check(CLI::Range(1, 1024));
  app.add_option("--zero", zero, "ZeRO stage 0-3: 1 shards optimizer states, 2 also gradients, 3 also "
                                 "weights (default: all stages)");
  app.add_option("--precision", precision,
                 "mixed (2+2+12 bytes/param: bf16 weights and gradients, fp32 master+m+v), "
                 "fp32 (4+4+8), bf16 (2+2+4: pure bf16 incl. m and v)");
  app.add_flag("--table", table, "print the ZeRO table over DP 1, 4, 16, 64, 256, 1024");
  app.add_option("-m,--model", model,
                 "model (any format, or synthetic:NAME): parameter count and config for the activation estimate");
  app.add_option("--batch", batch, "sequences per device for the activation estimate (default 1)");
  app.add_option("--seq", seq, "tokens per sequence for the activation estimate (default: the model's context)");
  app.add_flag("--recompute", recompute, "count activations with per-block recomputation in the totals");
  app.add_option("--logit-rows", logit_rows,
                 "fused output + loss holding the logits of N tokens at a time (Tessera's trainer: 256); "
                 "0 (default): all tokens' logits, as a standard implementation");
  app.add_option("--attention", attention,
                 "standard (default): the (T, T) attention probabilities are kept, n_heads x T per token; "
                 "flash: one log-sum-exp per head and token, as Tessera's trainer keeps")
      ->check(CLI::IsMember({"standard", "flash"}));
  app.add_flag("--json", json, "print one JSON object (bytes and GB)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  const bool have_params = app.count("--params") > 0, have_model = !model.empty();
  if (have_params && have_model) fail("--params and -m both give the parameter count: use one");
  if (!have_params && !have_model) fail("--params N or -m MODEL is required");
  if (!have_model && (app.count("--batch") || app.count("--seq") || recompute || app.count("--attention")))
    fail("--batch, --seq, --recompute and --attention need -m MODEL (the activation estimate needs a config)");
  const train::Precision prec = train::parse_precision(precision);
  std::vector<int> stages = {0, 1, 2, 3};
  if (app.count("--zero")) stages = {zero};
  train::zero_memory(have_params ? params : 1, dp, stages[0], prec);  // validates --params/--dp/--zero first

  ModelShape shape;
  ModelConfig full_cfg;  // the model's (shape.cfg: one tensor-parallel rank's slice)
  if (have_model) {
    shape = model_shape(model);
    params = double(shape.params);
    full_cfg = shape.cfg;
    if (tp > 1) {  // one rank's slice: the block of a model with heads, KV heads and hidden units / tp
      shape.cfg = tp_local_config(shape.cfg, tp);
      params = double(train::Layout(shape.cfg).n_params);
    }
  } else if (tp > 1) {
    params /= double(tp);
  }
  train::ActivationEstimate act;
  if (have_model)
    act = train::activation_memory(shape.cfg, batch, app.count("--seq") ? seq : shape.cfg.max_seq_len, prec, logit_rows,
                                   attention == "flash");
  const double act_bytes = !have_model ? 0 : (recompute ? act.recompute : act.full);
  // With a model, stage 2+ counts the gradient buckets a rank holds whole while the backward
  // runs (Tessera's trainer: the embedding/output tensors and the largest block).
  double in_flight = 0;
  if (have_model) {
    try {
      in_flight = double(train::GradBuckets::in_flight_elements(train::Layout(shape.cfg)));
    } catch (const Error&) {  // an architecture the trainer does not lay out: the paper's figure
    }
  }
  const train::BytesPerParam bpp = train::bytes_per_param(prec);

  if (json) {
    nlohmann::json j;
    j["params"] = params;
    j["precision"] = train::precision_name(prec);
    j["bytes_per_param"] = {{"weights", bpp.weights}, {"grads", bpp.grads}, {"optimizer", bpp.optimizer}};
    j["dp"] = dp;
    j["tp"] = tp;
    if (have_model) {
      const auto& c = full_cfg;
      j["model"] = {{"path", model}, {"arch", arch_name(c.arch)}, {"layers", c.n_layers}, {"dim", c.dim},
                    {"heads", c.n_heads}, {"kv_heads", c.n_kv_heads}, {"hidden", c.hidden_dim},
                    {"vocab", c.vocab_size}};
      j["activations"] = {{"batch", batch},
                          {"seq", act.tokens / batch},
                          {"tokens", act.tokens},
                          {"per_token_layer_bytes", act.per_token_layer},
                          {"per_token_head_bytes", act.per_token_head},
                          {"full_bytes", act.full},
                          {"full_gb", gb3(act.full)},
                          {"recompute_bytes", act.recompute},
                          {"recompute_gb", gb3(act.recompute)},
                          {"attention", attention},
                          {"counted", recompute ? "recompute" : "full"}};
    }
    j["stages"] = nlohmann::json::array();
    for (int s : stages) {
      const train::DeviceMemory m = train::zero_memory(params, dp, s, prec, in_flight);
      nlohmann::json row = {{"stage", s},
                            {"weights_bytes", m.weights},
                            {"grads_bytes", m.grads},
                            {"grads_in_flight_bytes", s >= 2 && dp > 1 ? in_flight * bpp.grads : 0.0},
                            {"weights_in_flight_bytes", s >= 3 && dp > 1 ? in_flight * bpp.weights : 0.0},
                            {"optimizer_bytes", m.optimizer},
                            {"states_bytes", m.total()},
                            {"states_gb", gb3(m.total())}};
      if (have_model) {
        row["activations_bytes"] = act_bytes;
        row["total_bytes"] = m.total() + act_bytes;
        row["total_gb"] = gb3(m.total() + act_bytes);
      }
      j["stages"].push_back(row);
    }
    if (table) {
      j["table"] = nlohmann::json::array();
      for (int s : stages)
        for (int64_t n : kTableDp) {
          const double b = train::zero_memory(params, n, s, prec).total();
          j["table"].push_back({{"stage", s}, {"dp", n}, {"states_bytes", b}, {"states_gb", gb3(b)}});
        }
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  if (have_model) {
    const auto& c = full_cfg;
    std::printf("model:          %s (%s, %lld layers, dim %lld, %lld heads, ffn %lld, vocab %lld)\n", model.c_str(),
                arch_name(c.arch), (long long)c.n_layers, (long long)c.dim, (long long)c.n_heads,
                (long long)c.hidden_dim, (long long)c.vocab_size);
  }
  std::printf("parameters:     %.0f (%.2f%s)\n", params, params >= 1e9 ? params / 1e9 : params / 1e6,
              params >= 1e9 ? "B" : "M");
  std::printf("precision:      %s (weights %g + gradients %g + optimizer %g = %g bytes/param)\n",
              train::precision_name(prec), bpp.weights, bpp.grads, bpp.optimizer, bpp.total());
  std::printf("data parallel:  %lld\n", (long long)dp);
  if (tp > 1)
    std::printf("tensor parallel: %d (parameters above: one rank's slice%s)\n", tp,
                have_model ? "" : ", --params / tp: the replicated embeddings and norms not counted");
  if (have_model) {
    std::printf("activations:    batch %lld x seq %lld = %lld tokens per device (not sharded by ZeRO), %s attention\n",
                (long long)batch, (long long)(act.tokens / batch), (long long)act.tokens, attention.c_str());
    std::printf("  full storage:            %s GB  (%.0f bytes/token/layer)\n", train::format_gb(act.full).c_str(),
                act.per_token_layer);
    std::printf("  per-block recomputation: %s GB\n", train::format_gb(act.recompute).c_str());
  }
  std::printf("\nGB per device    weights     grads  optimizer    states%s\n",
              have_model ? (recompute ? "  act(recompute)     total" : "  act(full)     total") : "");
  for (int s : stages) {
    const train::DeviceMemory m = train::zero_memory(params, dp, s, prec, in_flight);
    std::printf("ZeRO-%d         %10s%10s%11s%10s", s, train::format_gb(m.weights).c_str(),
                train::format_gb(m.grads).c_str(), train::format_gb(m.optimizer).c_str(),
                train::format_gb(m.total()).c_str());
    if (have_model)
      std::printf("%*s%10s", recompute ? 16 : 11, train::format_gb(act_bytes).c_str(),
                  train::format_gb(m.total() + act_bytes).c_str());
    std::printf("\n");
  }
  if (in_flight > 0 && dp > 1 && stages.back() >= 2)
    std::printf("(ZeRO-2/3 grads include %s GB of buckets held whole during the backward, and ZeRO-3 weights %s GB "
                "during a pass: the embedding/output tensors and the largest block)\n",
                train::format_gb(in_flight * bpp.grads).c_str(), train::format_gb(in_flight * bpp.weights).c_str());
  if (table) {
    std::printf("\nmodel states, GB per device, by data-parallel ranks\nDP        ");
    for (int64_t n : kTableDp) std::printf("%8lld", (long long)n);
    std::printf("\n");
    for (int s : stages) {
      std::printf("ZeRO-%d    ", s);
      for (int64_t n : kTableDp)
        std::printf("%8s", train::format_gb(train::zero_memory(params, n, s, prec).total()).c_str());
      std::printf("\n");
    }
  }
  return 0;
}

}  // namespace tessera::cli
