// tessera logits: the model's logits at every position of a token-id sequence,
// in the layout of the llama.cpp reference files under ../shared/reference/
// (first line "n_tokens n_vocab", then one line of n_vocab logits per position).
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/mmap.h"

namespace tessera::cli {

namespace {

// Whitespace-separated token ids; Error naming the file and the item on anything else.
std::vector<int32_t> read_ids(const std::string& path, int64_t n_vocab) {
  const std::string text = read_file(path);
  std::vector<int32_t> ids;
  const char* p = text.c_str();
  const char* end = p + text.size();
  while (true) {
    while (p < end && std::isspace(static_cast<unsigned char>(*p))) ++p;
    if (p >= end) break;
    char* q = nullptr;
    errno = 0;
    const long long v = std::strtoll(p, &q, 10);
    if (q == p || (q < end && !std::isspace(static_cast<unsigned char>(*q))) || errno == ERANGE)
      fail(path, ": token ", ids.size() + 1, " is not an integer id (\"", std::string(p, size_t(std::min<ptrdiff_t>(end - p, 20))), "\")");
    if (v < 0 || v >= n_vocab)
      fail(path, ": token ", ids.size() + 1, " is id ", v, ", outside the vocabulary (", n_vocab, ")");
    ids.push_back(int32_t(v));
    p = q;
  }
  if (ids.empty()) fail(path, ": no token ids");
  return ids;
}

}  // namespace

int cmd_logits(int argc, char** argv) {
  CLI::App app{"Logits at every position of a sequence of token ids (the reference files' layout).",
               "tessera logits"};
  ModelArgs ma;
  add_model_options(app, ma);
  std::string ids_path, out_path;
  bool sequential = false;
  app.add_option("--ids", ids_path, "file of whitespace-separated token ids")->required();
  app.add_flag("--sequential", sequential, "run the tokens one at a time (decode) instead of as one batch");
  app.add_option("-o,--out", out_path, "output file (default: stdout)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  Loaded L = load(ma);
  const int64_t V = L.model->config().vocab_size;
  const std::vector<int32_t> ids = read_ids(ids_path, V);
  const int64_t n = int64_t(ids.size());
  if (n > L.model->n_ctx())
    fail(ids_path, ": ", n, " tokens do not fit in the context of ", L.model->n_ctx(), " (raise -c)");
  std::vector<float> logits(size_t(n * V));
  if (sequential) {
    for (int64_t p = 0; p < n; ++p) {
      const float* lg = L.model->forward(*L.ctx, &ids[size_t(p)], 1, p);
      std::copy(lg, lg + V, logits.begin() + p * V);
    }
  } else {
    L.model->forward_all(*L.ctx, ids.data(), n, 0, logits.data());
  }
  std::string text = std::to_string(n) + " " + std::to_string(V) + "\n";
  char buf[32];
  for (int64_t p = 0; p < n; ++p) {
    for (int64_t i = 0; i < V; ++i) {
      const int k = std::snprintf(buf, sizeof buf, i ? " %.6e" : "%.6e", double(logits[size_t(p * V + i)]));
      text.append(buf, size_t(k));
    }
    text += '\n';
  }
  if (out_path.empty()) {
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    AtomicFileWriter w(out_path);
    w.write(text.data(), text.size());
    w.commit();
  }
  std::fprintf(stderr, "logits: %lld positions x %lld (%s)%s%s\n", (long long)n, (long long)V,
               sequential ? "one token at a time" : "one batch", out_path.empty() ? "" : " -> ", out_path.c_str());
  report_verbose(ma, L);
  return 0;
}

}  // namespace tessera::cli
