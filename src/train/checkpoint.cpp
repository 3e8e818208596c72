#include "train/checkpoint.h"

#include "train/reward.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/mmap.h"
#include "train/params.h"

namespace fs = std::filesystem;

namespace tessera::train {

namespace {
constexpr char kMagic[8] = {'T', 'S', 'R', 'C', 'K', 'P', 'T', '1'};
constexpr char kShardMagic[8] = {'T', 'S', 'R', 'C', 'K', 'S', 'H', '1'};
constexpr char kManifestMagic[8] = {'T', 'S', 'R', 'C', 'K', 'M', 'N', '1'};

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
};

// Writes through an AtomicFileWriter while hashing.
struct HashedWriter {
  AtomicFileWriter w;
  Fnv fnv;
  explicit HashedWriter(const std::string& p) : w(p) {}
  void write(const void* p, size_t n) {
    fnv.add(p, n);
    w.write(p, n);
  }
  void pad64() {
    static const char z[64] = {};
    const size_t pad = (64 - w.offset() % 64) % 64;
    write(z, pad);
  }
};
}  // namespace

nlohmann::json config_to_json(const ModelConfig& c) {
  nlohmann::json j = {{"arch", arch_name(c.arch)},
          {"dim", c.dim},
          {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},
          {"head_dim", c.head_dim},
          {"hidden_dim", c.hidden_dim},
          {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len},
          {"norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},
          {"rope_style", c.rope_style == ops::RopeStyle::Interleaved ? "interleaved" : "half-split"},
          {"tied_embeddings", c.tied_embeddings},
          {"qkv_bias", c.qkv_bias},
          {"qk_norm", c.qk_norm},
          {"attn_softcap", c.attn_softcap},
          {"final_softcap", c.final_softcap},
          {"name", c.name}};
  if (!c.rope_freq_factors.empty()) j["rope_freq_factors"] = c.rope_freq_factors;
  if (c.ffn_act != FfnAct::Default) j["ffn_act"] = ffn_act_name(c.ffn_act);  // absent: the arch's own
  if (c.norm_placement == NormPlacement::Post) j["norm_placement"] = "post";  // absent: pre
  if (c.mtp_depth > 0) j["mtp_depth"] = c.mtp_depth;  // absent: none
  if (c.mla())  // absent: plain attention
    j["mla"] = {{"q_lora", c.mla_q_lora}, {"kv_lora", c.mla_kv_lora}, {"rope", c.mla_rope}, {"v_dim", c.mla_v_dim}};
  if (c.is_moe())  // absent: dense
    j["moe"] = {{"experts", c.moe_experts},         {"used", c.moe_used},
                {"hidden", c.moe_hidden},           {"shared_hidden", c.moe_shared_hidden},
                {"first_dense", c.moe_first_dense}, {"gate", moe_gate_name(c.moe_gate)},
                {"norm_topk", c.moe_norm_topk},     {"scale", c.moe_scale},
                {"shared_gate", c.moe_shared_gate}, {"every", c.moe_every}};
  if (c.moe_score_bias) j["moe"]["score_bias"] = true;
  if (c.moe_hashed()) j["moe"]["routing"] = moe_routing_name(c.moe_routing);
  if (!c.moe_hash_table.empty()) j["moe"]["hash_table"] = c.moe_hash_table;
  if (!c.layer_cfg.empty()) {  // absent in older checkpoints: every layer the default
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : c.layer_cfg) {
      nlohmann::json e = {{"attn", attn_kind_name(l.attn)}, {"ffn", l.ffn == FfnKind::MoE ? "moe" : "dense"}};
      if (l.attn == AttnKind::SlidingWindow) e["window"] = l.window;
      if (l.attn == AttnKind::Sparse)
        e["window"] = l.window, e["dilation"] = l.dilation, e["global"] = l.global, e["random"] = l.random,
        e["seed"] = l.seed;
      if (!l.head_dilation.empty()) e["head_dilation"] = l.head_dilation;
      layers.push_back(e);
    }
    j["layers"] = layers;
  }
  return j;
}

ModelConfig config_from_json(const nlohmann::json& j, const std::string& where) {
  ModelConfig c;
  auto need = [&](const char* k) -> const nlohmann::json& {
    if (!j.contains(k)) fail(where, ": missing field '", k, "'");
    return j[k];
  };
  try {
    const std::string arch = need("arch").get<std::string>();
    if (arch == "llama") c.arch = Arch::Llama;
    else if (arch == "gpt2") c.arch = Arch::GPT2;
    else fail(where, ": unknown arch '", arch, "'");
    c.dim = need("dim").get<int64_t>();
    c.n_layers = need("n_layers").get<int64_t>();
    c.n_heads = need("n_heads").get<int64_t>();
    c.n_kv_heads = need("n_kv_heads").get<int64_t>();
    c.head_dim = need("head_dim").get<int64_t>();
    c.hidden_dim = need("hidden_dim").get<int64_t>();
    c.vocab_size = need("vocab_size").get<int64_t>();
    c.max_seq_len = need("max_seq_len").get<int64_t>();
    c.norm_eps = need("norm_eps").get<float>();
    c.rope_theta = need("rope_theta").get<float>();
    c.rope_style = need("rope_style").get<std::string>() == "half-split" ? ops::RopeStyle::HalfSplit
                                                                         : ops::RopeStyle::Interleaved;
    c.tied_embeddings = need("tied_embeddings").get<bool>();
    c.qkv_bias = need("qkv_bias").get<bool>();
    c.name = j.value("name", std::string());
    c.qk_norm = j.value("qk_norm", false);
    c.attn_softcap = j.value("attn_softcap", 0.f);
    c.final_softcap = j.value("final_softcap", 0.f);
    c.mtp_depth = j.value("mtp_depth", int64_t(0));
    if (j.contains("rope_freq_factors")) c.rope_freq_factors = j["rope_freq_factors"].get<std::vector<float>>();
    if (j.contains("ffn_act")) c.ffn_act = parse_ffn_act(j["ffn_act"].get<std::string>(), where);
    if (j.contains("norm_placement")) {
      const std::string np = j["norm_placement"].get<std::string>();
      if (np != "pre" && np != "post") fail(where, ": norm_placement must be pre or post, got '", np, "'");
      c.norm_placement = np == "post" ? NormPlacement::Post : NormPlacement::Pre;
    }
    if (j.contains("mla")) {
      const auto& m = j["mla"];
      c.mla_q_lora = m.at("q_lora").get<int64_t>(), c.mla_kv_lora = m.at("kv_lora").get<int64_t>();
      c.mla_rope = m.at("rope").get<int64_t>(), c.mla_v_dim = m.at("v_dim").get<int64_t>();
    }
    if (j.contains("moe")) {
      const auto& m = j["moe"];
      c.moe_experts = m.at("experts").get<int64_t>(), c.moe_used = m.at("used").get<int64_t>();
      c.moe_hidden = m.at("hidden").get<int64_t>(), c.moe_shared_hidden = m.at("shared_hidden").get<int64_t>();
      c.moe_first_dense = m.at("first_dense").get<int64_t>();
      c.moe_gate = m.at("gate").get<std::string>() == "sigmoid" ? MoeGate::Sigmoid : MoeGate::Softmax;
      c.moe_norm_topk = m.at("norm_topk").get<bool>(), c.moe_scale = m.at("scale").get<float>();
      c.moe_shared_gate = m.at("shared_gate").get<bool>();
      c.moe_every = m.value("every", int64_t(1));
      c.moe_score_bias = m.value("score_bias", false);
      c.moe_routing = parse_moe_routing(m.value("routing", std::string("learned")), where + ": moe.routing");
      c.moe_hash_table = m.value("hash_table", std::vector<int32_t>());
    }
    if (j.contains("layers")) {
      for (const auto& e : j["layers"]) {
        LayerConfig l;
        const std::string attn = e.at("attn").get<std::string>();
        if (attn == "sliding") l.attn = AttnKind::SlidingWindow, l.window = e.at("window").get<int64_t>();
        else if (attn == "sparse")
          l.attn = AttnKind::Sparse, l.window = e.at("window").get<int64_t>(), l.dilation = e.at("dilation").get<int64_t>(),
          l.global = e.at("global").get<int64_t>(), l.random = e.at("random").get<int64_t>(),
          l.seed = e.at("seed").get<uint32_t>(),
          l.head_dilation = e.value("head_dilation", std::vector<int32_t>());
        else if (attn != "full") fail(where, ": layer ", c.layer_cfg.size(), ": unknown attention kind '", attn, "'");
        const std::string ffn = e.value("ffn", std::string("dense"));
        if (ffn == "moe") l.ffn = FfnKind::MoE;
        else if (ffn != "dense")
          fail(where, ": layer ", c.layer_cfg.size(), ": unknown feed-forward kind '", e["ffn"].dump(), "'");
        c.layer_cfg.push_back(l);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": bad model config: ", e.what());
  }
  c.validate(where);
  return c;
}

namespace {
// The tensors stored: the model's, or an adapter checkpoint's.
struct Stored {
  std::vector<ParamInfo> tensors;
  size_t total = 0, n_params = 0;
};
Stored stored_tensors(const Checkpoint& ck) {
  const Layout L(ck.cfg);
  if (ck.reward_head) {
    Stored s{L.tensors, L.total + reward_head_padded(ck.cfg), L.n_params + reward_head_size(ck.cfg)};
    ParamInfo h;
    h.name = "reward_head", h.shape = {int64_t(reward_head_size(ck.cfg))}, h.offset = L.total;
    h.numel = reward_head_size(ck.cfg);
    s.tensors.push_back(h);
    return s;
  }
  if (!ck.lora.enabled()) return {L.tensors, L.total, L.n_params};
  const LoraLayout LL(L, ck.lora);
  return {LL.tensors, LL.total, LL.n_params};
}
}  // namespace

namespace {
nlohmann::json header_json(const Checkpoint& ck, const Stored& L) {
  nlohmann::json j = {{"config", config_to_json(ck.cfg)}, {"step", ck.step}, {"n_params", L.n_params},
                      {"options", ck.extra}};
  if (ck.lora.enabled()) j["lora"] = lora_to_json(ck.lora);
  if (ck.reward_head) j["reward_head"] = true;
  return j;
}

// A file of ours: magic, checksum over all but its last 8 bytes, the JSON header; *body
// gets the offset after the header.
nlohmann::json open_file(const MappedFile& f, const std::string& path, const char* magic, const char* what,
                         uint64_t* checksum, size_t* body) {
  const uint8_t* d = f.data();
  const size_t n = f.size();
  if (n < 24 || std::memcmp(d, magic, 8) != 0) fail(path, ": not a Tessera ", what, " (bad magic)");
  Fnv fnv;
  fnv.add(d, n - 8);
  uint64_t stored;
  std::memcpy(&stored, d + n - 8, 8);
  if (stored != fnv.h) fail(path, ": ", what, " is corrupt or truncated (checksum mismatch)");
  if (checksum) *checksum = stored;
  uint64_t len;
  std::memcpy(&len, d + 8, 8);
  if (len > n - 24) fail(path, ": header length ", len, " exceeds the file");
  *body = 16 + len;
  try {
    return nlohmann::json::parse(std::string(reinterpret_cast<const char*>(d + 16), len));
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": invalid ", what, " header: ", e.what());
  }
}

// The header fields every checkpoint has (a whole file's or a manifest's).
void read_header(Checkpoint& ck, const nlohmann::json& j, const std::string& path) {
  if (!j.contains("config") || !j.contains("step")) fail(path, ": checkpoint header lacks config/step");
  ck.cfg = config_from_json(j["config"], path);
  ck.step = j["step"].get<int64_t>();
  ck.extra = j.value("options", nlohmann::json::object());
  if (j.contains("lora")) ck.lora = lora_from_json(j["lora"], path);
  ck.reward_head = j.value("reward_head", false);
}

// The elements [b, e) of array a (0 params, 1 m, 2 v) go to dst[b - base ...].
struct Want {
  size_t b = 0, e = 0, base = 0;
  float* dst = nullptr;
};

// A manifest's shards, read into the wanted ranges of ck's arrays; a shard outside them is
// not opened.
void load_shards(const nlohmann::json& j, const std::string& path, int64_t step, size_t total, const Want (&want)[3]) {
  try {
    if (j.at("total").get<size_t>() != total)
      fail(path, ": manifest total ", j.at("total").get<size_t>(), " does not match the model's layout (", total, ")");
    size_t at = 0;
    for (const auto& e : j.at("shards")) {
      ShardRef r{e.at("file").get<std::string>(), e.at("begin").get<size_t>(), e.at("end").get<size_t>(),
                 e.at("checksum").get<uint64_t>()};
      if (r.file.find('/') != std::string::npos) fail(path, ": shard file name '", r.file, "' is not a plain name");
      if (r.begin != at || r.end < r.begin || r.end > total)
        fail(path, ": shard ", r.file, " covers [", r.begin, ", ", r.end, "), expected to start at ", at);
      at = r.end;
      bool needed = false;
      for (const Want& w : want) needed = needed || (w.dst && std::max(w.b, r.begin) < std::min(w.e, r.end));
      if (!needed) continue;
      const std::string sp = (fs::path(path).parent_path() / r.file).string();
      if (!fs::exists(sp)) fail(sp, ": shard of checkpoint ", path, " is missing");
      MappedFile f(sp);
      uint64_t sum = 0;
      size_t off = 0;
      const nlohmann::json h = open_file(f, sp, kShardMagic, "checkpoint shard", &sum, &off);
      if (sum != r.checksum) fail(sp, ": is not the shard that ", path, " names (checksum differs: another save's?)");
      if (h.at("step").get<int64_t>() != step || h.at("begin").get<size_t>() != r.begin ||
          h.at("end").get<size_t>() != r.end)
        fail(sp, ": header does not match its manifest ", path);
      const size_t bytes = (r.end - r.begin) * sizeof(float);
      for (const Want& w : want) {
        off = (off + 63) / 64 * 64;
        if (off + bytes > f.size() - 8) fail(sp, ": shard is shorter than its range needs");
        const size_t lo = std::max(w.b, r.begin), hi = std::min(w.e, r.end);
        if (w.dst && lo < hi)
          std::memcpy(w.dst + (lo - w.base), f.data() + off + (lo - r.begin) * sizeof(float), (hi - lo) * sizeof(float));
        off += bytes;
      }
      if (off != f.size() - 8) fail(sp, ": shard has ", f.size() - 8 - off, " unexpected trailing bytes");
    }
    if (at != total) fail(path, ": the shards cover [0, ", at, ") of ", total, " elements");
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": bad checkpoint manifest: ", e.what());
  }
}
}  // namespace

std::string shard_path(const std::string& checkpoint, int rank, int ranks) {
  std::string p = checkpoint;
  if (p.size() > 4 && p.compare(p.size() - 4, 4, ".bin") == 0) p.resize(p.size() - 4);
  return p + ".rank" + std::to_string(rank) + "of" + std::to_string(ranks) + ".bin";
}

uint64_t save_checkpoint_shard(const std::string& path, int64_t step, size_t begin, size_t end, const float* params,
                               const float* m, const float* v) {
  const std::string js = nlohmann::json{{"step", step}, {"begin", begin}, {"end", end}}.dump();
  const uint64_t len = js.size();
  HashedWriter w(path);
  w.write(kShardMagic, 8);
  w.write(&len, 8);
  w.write(js.data(), js.size());
  for (const float* a : {params, m, v}) {
    w.pad64();
    w.write(a, (end - begin) * sizeof(float));
  }
  const uint64_t h = w.fnv.h;
  w.w.write(&h, 8);
  w.w.commit();
  return h;
}

void save_checkpoint_manifest(const std::string& path, const Checkpoint& ck, size_t total,
                              const std::vector<ShardRef>& shards) {
  nlohmann::json j = header_json(ck, stored_tensors(ck));
  j["total"] = total;
  j["shards"] = nlohmann::json::array();
  for (const auto& r : shards)
    j["shards"].push_back({{"file", fs::path(r.file).filename().string()}, {"begin", r.begin}, {"end", r.end},
                           {"checksum", r.checksum}});
  const std::string js = j.dump();
  const uint64_t len = js.size();
  HashedWriter w(path);
  w.write(kManifestMagic, 8);
  w.write(&len, 8);
  w.write(js.data(), js.size());
  const uint64_t h = w.fnv.h;
  w.w.write(&h, 8);
  w.w.commit();
}

void remove_checkpoint(const std::string& path) {
  std::vector<std::string> files;
  try {
    MappedFile f(path);
    size_t off = 0;
    if (f.size() >= 24 && std::memcmp(f.data(), kManifestMagic, 8) == 0) {
      const nlohmann::json j = open_file(f, path, kManifestMagic, "checkpoint manifest", nullptr, &off);
      for (const auto& e : j.at("shards"))
        files.push_back((fs::path(path).parent_path() / e.at("file").get<std::string>()).string());
    }
  } catch (const std::exception&) {  // unreadable: the file alone goes
  }
  std::error_code ec;
  fs::remove(path, ec);  // the manifest first: the checkpoint stops existing before its shards go
  for (const auto& f : files) fs::remove(f, ec);
}

void save_checkpoint(const std::string& path, const Checkpoint& ck) {
  const Stored L = stored_tensors(ck);
  if (ck.params.size() != L.total || ck.m.size() != L.total || ck.v.size() != L.total)
    fail(path, ": internal: checkpoint arrays do not match the layout");
  const std::string js = header_json(ck, L).dump();
  const uint64_t len = js.size();
  HashedWriter w(path);
  w.write(kMagic, 8);
  w.write(&len, 8);
  w.write(js.data(), js.size());
  for (const auto* a : {&ck.params, &ck.m, &ck.v}) {
    w.pad64();
    for (const auto& t : L.tensors) w.write(a->data() + t.offset, t.numel * sizeof(float));
  }
  const uint64_t h = w.fnv.h;
  w.w.write(&h, 8);
  w.w.commit();
}

Checkpoint load_checkpoint(const std::string& path, const CheckpointRange& range) {
  MappedFile f(path);
  const uint8_t* d = f.data();
  const size_t n = f.size();
  Checkpoint ck;
  size_t off = 0;
  const bool manifest = n >= 24 && std::memcmp(d, kManifestMagic, 8) == 0;
  const nlohmann::json j = manifest ? open_file(f, path, kManifestMagic, "checkpoint manifest", nullptr, &off)
                                    : open_file(f, path, kMagic, "checkpoint", nullptr, &off);
  read_header(ck, j, path);
  if (range.header_only) return ck;
  const Stored L = stored_tensors(ck);
  // The params array is whole (its elements outside the range zero), the moments hold their range.
  const size_t pb = std::min(range.params_begin, L.total), pe = std::min(range.params_end, L.total);
  const size_t mb = std::min(range.moments_begin, L.total), me = std::min(range.moments_end, L.total);
  if (pb > pe || mb > me) fail("internal: bad checkpoint range");
  ck.params.assign(L.total, 0.f), ck.m.assign(me - mb, 0.f), ck.v.assign(me - mb, 0.f);
  const Want want[3] = {{pb, pe, 0, ck.params.data()}, {mb, me, mb, ck.m.data()}, {mb, me, mb, ck.v.data()}};
  if (manifest) {
    load_shards(j, path, ck.step, L.total, want);
    return ck;
  }
  for (const Want& w : want) {  // the tensors back to back, without the in-memory padding
    off = (off + 63) / 64 * 64;
    if (off + L.n_params * sizeof(float) > n - 8) fail(path, ": checkpoint is shorter than its model needs");
    for (const auto& t : L.tensors) {
      const size_t lo = std::max(w.b, t.offset), hi = std::min(w.e, t.offset + t.numel);
      if (lo < hi) std::memcpy(w.dst + (lo - w.base), d + off + (lo - t.offset) * sizeof(float), (hi - lo) * sizeof(float));
      off += t.numel * sizeof(float);
    }
  }
  if (off != n - 8) fail(path, ": checkpoint has ", n - 8 - off, " unexpected trailing bytes");
  return ck;
}

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof name, "ckpt_%08lld.bin", (long long)step);
  return (fs::path(dir) / name).string();
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> r;
  if (!fs::is_directory(dir)) return r;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string nm = e.path().filename().string();
    if (nm.size() == 17 && nm.rfind("ckpt_", 0) == 0 && nm.substr(13) == ".bin") r.push_back(e.path().string());
  }
  std::sort(r.begin(), r.end());
  return r;
}

std::string latest_checkpoint(const std::string& dir) {
  auto v = list_checkpoints(dir);
  return v.empty() ? "" : v.back();
}

}  // namespace tessera::train
