// Helpers shared by the tokenizer tests: shared-data paths and llama.cpp's
// .inp/.out test vectors.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace tessera::testutil {

inline std::string shared_path(const std::string& rel) { return std::string(TESSERA_SHARED_DIR) + "/" + rel; }
inline bool shared_exists(const std::string& rel) { return std::filesystem::exists(shared_path(rel)); }

inline std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct VectorCase {
  std::string text;
  std::vector<int32_t> ids;
};

// llama.cpp's format: .inp holds each string followed by "\n__ggml_vocab_test__\n";
// .out holds one line of space-separated ids per string.
inline std::vector<VectorCase> read_vectors(const std::string& base) {
  const std::string inp = read_all(base + ".inp"), out = read_all(base + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<VectorCase> cases;
  for (size_t pos = 0; pos < inp.size();) {
    size_t e = inp.find(sep, pos);
    if (e == std::string::npos) break;
    cases.push_back({inp.substr(pos, e - pos), {}});
    pos = e + sep.size();
  }
  std::istringstream lines(out);
  std::string line;
  for (auto& c : cases) {
    if (!std::getline(lines, line)) break;
    std::istringstream ls(line);
    int32_t id;
    while (ls >> id) c.ids.push_back(id);
  }
  return cases;
}

inline std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

}  // namespace tessera::testutil
