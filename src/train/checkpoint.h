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
#include <cstddef>
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

// What a reader takes of a checkpoint: by default everything. A rank resuming a ZeRO run
// takes the parameters it needs (all of them, or at stage 3 its part) into a whole-size
// params array (zero outside the range) and its part of the moments into m and v of that
// range's size; header_only: the config, step and options alone. Ranges are in the
// in-memory layout's elements.
struct CheckpointRange {
  size_t params_begin = 0, params_end = SIZE_MAX;
  size_t moments_begin = 0, moments_end = SIZE_MAX;
  bool header_only = false;
};

void save_checkpoint(const std::string& path, const Checkpoint& ck);
// A whole file, or a manifest's shards (only those the range touches are opened); the
// checksums of what is read are verified.
Checkpoint load_checkpoint(const std::string& path, const CheckpointRange& range = {});

// Sharded checkpoints (ZeRO runs over N > 1 ranks): each rank writes the range [begin, end)
// of the flat params, m and v it owns to its shard file (shard_path: next to the
// checkpoint), then rank 0 writes the manifest at checkpoint_path, which names every shard,
// its range and its checksum. The manifest is the commit point: a checkpoint exists once
// its manifest does, so a crash while shards are written leaves the previous one current.
// load_checkpoint reads a manifest's shards into a whole Checkpoint (resume on any number
// of ranks, export). Every rank must see the run directory (a shared filesystem).
//
// Shard file: "TSRCKSH1", uint64 JSON length, JSON (step, begin, end), then params, m and v
// of the range (f32, the in-memory layout, each padded to 64 bytes), uint64 checksum.
// Manifest: "TSRCKMN1", uint64 JSON length, JSON (a checkpoint's header plus total and
// shards: file, begin, end, checksum), uint64 checksum.
struct ShardRef {
  std::string file;  // the shard file's name, in the manifest's directory
  size_t begin = 0, end = 0;
  uint64_t checksum = 0;
};
std::string shard_path(const std::string& checkpoint, int rank, int ranks);  // DIR/ckpt_00000123.rank0of2.bin
// Writes one rank's shard (atomically); returns its checksum for the manifest.
uint64_t save_checkpoint_shard(const std::string& path, int64_t step, size_t begin, size_t end, const float* params,
                               const float* m, const float* v);
// The manifest of ck's config, step, options, LoRA / reward head (ck's arrays are not
// read); the shards must cover [0, total) in order.
void save_checkpoint_manifest(const std::string& path, const Checkpoint& ck, size_t total,
                              const std::vector<ShardRef>& shards);
// Deletes a checkpoint: its file, and a manifest's shard files.
void remove_checkpoint(const std::string& path);

// DIR/ckpt_00000123.bin; the list of existing ones sorted by step; the newest ("" if none).
std::string checkpoint_path(const std::string& dir, int64_t step);
std::vector<std::string> list_checkpoints(const std::string& dir);
std::string latest_checkpoint(const std::string& dir);

}  // namespace tessera::train
