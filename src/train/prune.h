// Pruning (`tessera prune`) on a model's f32 parameters (train/params.h Layout):
// - unstructured: the smallest-magnitude (or lowest-score) weights of the blocks'
//   matrices set to zero, over all of them (global) or per matrix (layer);
// - 2:4 semi-structured: in every 4 consecutive weights of a row, the 2 smallest zeroed;
// - structured: attention head groups (a KV head with its query heads), FFN channels
//   and whole layers removed, giving a smaller dense model (a new config, fewer
//   parameters) that every loader reads.
// Scores are |w| (magnitude) or |w dL/dw| (first-order Taylor, on calibration batches).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/params.h"

namespace tessera::train {

struct PruneOptions {
  double sparsity = 0;        // unstructured: fraction of the blocks' matrix weights zeroed
  bool per_layer = false;     // unstructured: the fraction per matrix instead of over all of them
  bool two_four = false;      // 2:4: 2 of every 4 consecutive weights in each row zeroed
  int64_t kv_heads = 0;       // structured: key/value heads kept per layer (0: unchanged)
  int64_t hidden = 0;         // structured: FFN channels kept per layer (0: unchanged)
  int64_t layers = 0;         // structured: layers kept (0: unchanged)
};

struct PruneReport {
  ModelConfig cfg;            // the result's config
  int64_t params_before = 0, params_after = 0;
  int64_t zeros = 0;          // zeroed weights (unstructured / 2:4) in the result
  std::vector<int64_t> kept_layers;                 // old index of each new layer
  std::vector<std::vector<int64_t>> kept_groups;    // per new layer: the old KV head groups kept (empty: all)
  std::vector<std::vector<int64_t>> kept_channels;  // per new layer: the old FFN channels kept (empty: all)
};

// Prunes p (layout L) into out (the returned Layout's total, allocated here).
// score: per-element importance (same layout as p; null: |p|). Error naming the
// option when the request does not fit the model (more heads than it has, a GPT-2
// head count, a mixture-of-experts model for structured pruning).
PruneReport prune(const Layout& L, const float* p, const float* score, const PruneOptions& o, ParamVec& out);

// The mask of a model's exact zeros in its blocks' matrices (1 = trainable): what
// `train --keep-sparsity` holds fixed while recovering a pruned model.
std::vector<uint8_t> sparsity_mask(const Layout& L, const float* p);

}  // namespace tessera::train
