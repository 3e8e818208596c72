// tessera prune: unstructured, 2:4 and structured pruning of a model (train/prune.h).
#include <cmath>
#include <cstdio>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "train/data.h"
#include "train/params.h"
#include "train/prune.h"
#include "train/transformer.h"

namespace tessera::cli {

int cmd_prune(int argc, char** argv) {
  CLI::App app{"Prune a model: zero its smallest weights (--sparsity, --2:4) or remove attention heads, FFN channels "
               "and layers (--kv-heads, --hidden, --layers), scored by magnitude or by |w dL/dw| on calibration data.",
               "tessera prune"};
  std::string in, out, tok_path, type_name, score = "magnitude", data;
  train::PruneOptions po;
  int64_t calib_batches = 4, seq = 128, batch = 4;
  app.add_option("MODEL", in, "model (any format the engine loads)")->required();
  app.add_option("-o,--out", out, "FILE.gguf or a directory (safetensors)")->required();
  app.add_option("--tokenizer", tok_path, "tokenizer of MODEL when its file has none (embedded in the output)");
  app.add_option("--sparsity", po.sparsity, "unstructured: fraction of the blocks' matrix weights set to zero");
  app.add_flag("--per-layer", po.per_layer, "--sparsity per matrix instead of over all of them (global)");
  app.add_flag("--two-four", po.two_four, "semi-structured: 2 of every 4 consecutive weights of each row set to zero");
  app.add_option("--kv-heads", po.kv_heads, "structured: key/value heads kept per layer (with their query heads)");
  app.add_option("--hidden", po.hidden, "structured: FFN channels kept per layer");
  app.add_option("--layers", po.layers, "structured: layers kept (the lowest-scored are removed)");
  app.add_option("--score", score, "importance: magnitude (|w|) or taylor (|w dL/dw| on --data's validation text)")
      ->check(CLI::IsMember({"magnitude", "taylor"}));
  app.add_option("--data", data, "--score taylor: a token dataset from 'tessera data prepare' (its validation split)");
  app.add_option("--calib-batches", calib_batches, "--score taylor: batches of calibration text")->check(positive());
  app.add_option("--seq", seq, "--score taylor: tokens per calibration sequence")->check(positive());
  app.add_option("--type", type_name, "weight type of the output (default f32)")->check(weight_type_validator());
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (po.sparsity == 0 && !po.two_four && po.kv_heads == 0 && po.hidden == 0 && po.layers == 0)
    fail("nothing to prune: give --sparsity, --two-four, --kv-heads, --hidden or --layers");
  LoadedModel lm = load_model(in, tok_path);
  const train::Layout L(lm.weights.cfg);
  train::ParamVec p(L.total);
  train::params_from_weights(L, lm.weights, p.data());
  std::vector<float> sc;
  if (score == "taylor") {
    if (data.empty()) fail("--score taylor needs --data DIR (calibration text)");
    const train::Dataset d = train::open_dataset(data);
    if (d.vocab_size > L.cfg.vocab_size)
      fail(data, ": tokens of a vocabulary of ", d.vocab_size, ", the model has ", L.cfg.vocab_size);
    seq = std::min(seq, L.cfg.max_seq_len);
    train::Transformer<float> m(L, batch, seq, train::ModelOptions{});
    train::ParamVec g(L.total, 0.f);
    std::vector<int32_t> x(size_t(batch * seq)), y(size_t(batch * seq));
    for (int64_t b = 0; b < calib_batches; ++b) {
      for (int64_t r = 0; r < batch; ++r) train::eval_window(*d.val, b * batch + r, seq, x.data() + r * seq, y.data() + r * seq);
      m.forward_backward(p.data(), g.data(), x.data(), y.data(), 1.f / float(batch * seq * calib_batches));
    }
    sc.resize(L.total);
    for (size_t i = 0; i < L.total; ++i) sc[i] = std::abs(p[i] * g[i]);
  }
  train::ParamVec q;
  const auto rep = train::prune(L, p.data(), sc.empty() ? nullptr : sc.data(), po, q);
  const train::Layout L2(rep.cfg);
  const Weights w = train::weights_view(L2, q.data());
  write_model(w, lm.tokenizer ? &*lm.tokenizer : nullptr, out, type_name, "prune", lm.chat_template);
  const auto& c = L.cfg;
  std::fprintf(stderr,
               "prune: %s -> %s: %.3fM -> %.3fM params; layers %lld -> %lld, kv heads %lld -> %lld (query %lld -> "
               "%lld), FFN %lld -> %lld; %lld zero weights in the blocks' matrices (%s scores)\n",
               in.c_str(), out.c_str(), double(rep.params_before) / 1e6, double(rep.params_after) / 1e6,
               (long long)c.n_layers, (long long)rep.cfg.n_layers, (long long)c.n_kv_heads,
               (long long)rep.cfg.n_kv_heads, (long long)c.n_heads, (long long)rep.cfg.n_heads,
               (long long)c.hidden_dim, (long long)rep.cfg.hidden_dim, (long long)rep.zeros, score.c_str());
  return 0;
}

}  // namespace tessera::cli
