// Training checkpoints: model config, run state (step) and the parameters
// with AdamW's two moments, in one file written to a temporary name and
// renamed into place. A 64-bit FNV-1a checksum over the whole file catches
// corruption and truncation on load.
//
// File: "TSRCKPT1", uint64 JSON length, JSON (config, step, options), zero
// padding to 64 bytes, params, m, v (f32: the tensors back to back in layout
// order, without the in-memory alignment padding of Layout; each array padded
// to 64 bytes), uint64 checksum of everything before it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "train/lora.h"
#include "train/params.h"

namespace tessera::train {

nlohmann::json config_to_json(const ModelConfig& c);
ModelConfig config_from_json(const nlohmann::json& j, const std::string& where);  // Error naming the field

struct Checkpoint {
  ModelConfig cfg;
  int64_t step = 0;      // optimizer steps completed
  nlohmann::json extra;  // run options (free-form, stored as given)
  LoraConfig lora;       // enabled: an adapter checkpoint (params, m, v are the adapter's; cfg is the base's)
  bool reward_head = false;  // a reward model: the head's C + 1 parameters follow the model's (train/reward.h)
  ParamVec params, m, v;  // Layout(cfg).total (or LoraLayout total) elements each (the in-memory layout)
};

void save_checkpoint(const std::string& path, const Checkpoint& ck);
Checkpoint load_checkpoint(const std::string& path);

// DIR/ckpt_00000123.bin; the list of existing ones sorted by step; the newest ("" if none).
std::string checkpoint_path(const std::string& dir, int64_t step);
std::vector<std::string> list_checkpoints(const std::string& dir);
std::string latest_checkpoint(const std::string& dir);

}  // namespace tessera::train
