#include "common.h"

#include <cstdio>
#include <thread>

#include "core/error.h"

namespace tessera::cli {

void add_model_options(CLI::App& app, ModelArgs& a, bool need_ctx) {
  app.add_option("-m,--model", a.model, "model: GGUF file, Hugging Face directory, llama2.c .bin, or synthetic:NAME[:TYPE] (random weights)")->required();
  app.add_option("--tokenizer", a.tokenizer, "tokenizer file for models that carry none (llama2.c tokenizer.bin)");
  if (need_ctx) app.add_option("-c,--ctx-size", a.ctx, "context size in tokens (default: the model's)");
  app.add_option("-t,--threads", a.threads, "threads (default: all cores)");
  app.add_option("-b,--batch-size", a.batch, "prefill chunk size in tokens")->check(CLI::PositiveNumber);
  app.add_option("--kv-type", a.kv_type, "KV cache type")->check(CLI::IsMember({"f32", "f16"}));
}

Loaded load(const ModelArgs& a) {
  Loaded L;
  L.lm = load_model(a.model, a.tokenizer);
  if (a.ctx < 0) fail("-c/--ctx-size must be positive, got ", a.ctx);
  RunOptions ro;
  ro.n_ctx = a.ctx;
  ro.max_batch = a.batch;
  ro.kv_f16 = a.kv_type == "f16";
  const int threads = a.threads > 0 ? a.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  ro.max_threads = threads;
  L.model = std::make_unique<Model>(L.lm.weights, ro);
  L.ctx = std::make_unique<KernelContext>(threads);
  const auto& c = L.lm.weights.cfg;
  std::fprintf(stderr, "tessera: %s (%s, %s) %lld layers, dim %lld, %s weights, ctx %lld, %d threads, %s\n",
               a.model.c_str(), L.lm.format.c_str(), arch_name(c.arch), (long long)c.n_layers, (long long)c.dim,
               human_bytes(double(L.lm.weights.weight_bytes())).c_str(), (long long)L.model->n_ctx(), threads,
               isa_name(L.ctx->isa));
  return L;
}

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return -1;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace tessera::cli
