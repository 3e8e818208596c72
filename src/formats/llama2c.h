// llama2.c checkpoints: the legacy fp32 .bin (seven int32 then fp32 tensors)
// and the int8 "ak42" version-2 export (group-quantized, per-group f32 scales).
#pragma once
#include <string>

#include "core/mmap.h"
#include "model/weights.h"

namespace tessera {

// True when the mapped bytes start with the "ak42" magic.
bool is_llama2c_ak42(const MappedFile& f);
// Loads either variant; weights are views into the mapping. Throws Error naming
// the file and field (header values, expected vs actual size).
Weights load_llama2c(const std::string& path);

}  // namespace tessera
