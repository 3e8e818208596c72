// Hash routing of mixture-of-experts layers (ModelConfig::moe_routing other than
// Learned; Roller et al., "Hash Layers For Large Sparse Models", 2021): a token's
// k experts are a fixed function of the token, shared by every MoE layer, by
// training (train/moe_train.cpp) and inference (model/moe.cpp) alike.
//   hash-random      key = the token id
//   hash-bigram      key = (previous token, token)
//   hash-prev-token  key = the previous token
//   hash-position    key = the position
//   hash-balanced    ModelConfig::moe_hash_table[token] (moe_balanced_table)
// A key picks k distinct experts by successive splitmix64 draws, each choosing
// among the experts not yet taken (in index order). The previous token of
// position 0 (or of the first token of a packed segment) is "none" (-1).
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace tessera {

// The k = c.moe_used experts of a token into sel (k), in the order their outputs are summed.
void moe_hash_select(const ModelConfig& c, int32_t token, int32_t prev, int64_t pos, int32_t* sel);

// The hash-balanced table (vocab_size x k) from token counts (vocab_size):
// tokens in order of decreasing count (ties: lower id) each go to the k experts
// with the least load so far (ties: lower index), adding their count to each;
// tokens never seen are placed by the hash-random rule.
std::vector<int32_t> moe_balanced_table(const ModelConfig& c, const std::vector<int64_t>& counts);

// Tokens routed to each expert (E) when every token of counts goes to its
// experts under c's hash-balanced or hash-random rule (the table's loads).
std::vector<int64_t> moe_hash_loads(const ModelConfig& c, const std::vector<int64_t>& counts);

}  // namespace tessera
