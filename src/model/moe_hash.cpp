#include "model/moe_hash.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace tessera {

namespace {

uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// k distinct experts of E from the key: draw d_i = splitmix64^(i+1)(key) mod (E - i),
// take the d_i-th expert not taken yet.
void select_from_key(uint64_t key, int64_t E, int64_t k, int32_t* sel) {
  uint64_t h = key;
  for (int64_t i = 0; i < k; ++i) {
    h = splitmix64(h);
    int64_t r = int64_t(h % uint64_t(E - i));
    int32_t e = 0;
    for (;; ++e) {  // the r-th untaken expert
      bool taken = false;
      for (int64_t j = 0; j < i; ++j) taken = taken || sel[j] == e;
      if (taken) continue;
      if (r-- == 0) break;
    }
    sel[i] = e;
  }
}

// Distinct salts keep the keys of the different rules apart.
constexpr uint64_t kTokenSalt = 0x746f6b656e000000ull, kPrevSalt = 0x7072657600000000ull,
                   kPosSalt = 0x706f730000000000ull;

}  // namespace

void moe_hash_select(const ModelConfig& c, int32_t token, int32_t prev, int64_t pos, int32_t* sel) {
  const int64_t E = c.moe_experts, k = c.moe_used;
  const uint64_t pv = uint64_t(int64_t(prev) + 1);  // 0: none
  switch (c.moe_routing) {
    case MoeRouting::HashBalanced:
      std::copy_n(c.moe_hash_table.data() + size_t(token) * size_t(k), size_t(k), sel);
      return;
    case MoeRouting::HashRandom: return select_from_key(kTokenSalt ^ uint64_t(token), E, k, sel);
    case MoeRouting::HashBigram:
      return select_from_key(splitmix64(kPrevSalt ^ pv) ^ kTokenSalt ^ uint64_t(token), E, k, sel);
    case MoeRouting::HashPrevToken: return select_from_key(kPrevSalt ^ pv, E, k, sel);
    case MoeRouting::HashPosition: return select_from_key(kPosSalt ^ uint64_t(pos), E, k, sel);
    case MoeRouting::Learned: break;
  }
  fail("moe_hash_select: the model's experts are routed by a learned router, not a hash");
}

std::vector<int32_t> moe_balanced_table(const ModelConfig& c, const std::vector<int64_t>& counts) {
  const int64_t V = c.vocab_size, E = c.moe_experts, k = c.moe_used;
  if (int64_t(counts.size()) != V) fail("moe_balanced_table: ", counts.size(), " token counts for a vocabulary of ", V);
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return counts[size_t(a)] > counts[size_t(b)]; });
  std::vector<int32_t> table(static_cast<size_t>(V * k));
  std::vector<int64_t> load(static_cast<size_t>(E), 0);
  std::vector<int32_t> by_load(static_cast<size_t>(E));
  for (int32_t t : order) {
    int32_t* sel = table.data() + size_t(t) * size_t(k);
    if (counts[size_t(t)] == 0) {  // unseen: the hash-random rule
      select_from_key(kTokenSalt ^ uint64_t(t), E, k, sel);
      continue;
    }
    std::iota(by_load.begin(), by_load.end(), 0);
    std::partial_sort(by_load.begin(), by_load.begin() + k, by_load.end(), [&](int32_t a, int32_t b) {
      return load[size_t(a)] != load[size_t(b)] ? load[size_t(a)] < load[size_t(b)] : a < b;
    });
    for (int64_t i = 0; i < k; ++i) sel[i] = by_load[size_t(i)], load[size_t(sel[i])] += counts[size_t(t)];
  }
  return table;
}

std::vector<int64_t> moe_hash_loads(const ModelConfig& c, const std::vector<int64_t>& counts) {
  if (c.moe_routing != MoeRouting::HashBalanced && c.moe_routing != MoeRouting::HashRandom)
    fail("moe_hash_loads: routing by ", moe_routing_name(c.moe_routing), " does not depend on the token alone");
  std::vector<int64_t> load(static_cast<size_t>(c.moe_experts), 0);
  std::vector<int32_t> sel(static_cast<size_t>(c.moe_used));
  for (size_t t = 0; t < counts.size(); ++t) {
    moe_hash_select(c, int32_t(t), -1, 0, sel.data());
    for (int32_t e : sel) load[size_t(e)] += counts[t];
  }
  return load;
}

}  // namespace tessera
