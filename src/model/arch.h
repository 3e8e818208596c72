// Architecture descriptions: for each architecture, the table of its tensors
// (where each lives in Weights, its shape as a function of the config and the
// layer, when it is present, its GGUF and Hugging Face names) and the plain
// config keys it reads and writes in each format. Loaders, writers, shape
// validation, the training parameter layout and the parameter count all
// iterate these tables; one file per architecture under model/arch/ defines
// its table, and registry.cpp lists them. See docs/DESIGN.md, "Adding an
// architecture".
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/quant_mix.h"
#include "model/weights.h"

namespace tessera {

// The Weights slot a tensor fills: globals, then the per-layer ones
// (LayerWeights' members, in LayerWeights::slots() order).
enum class Slot : uint8_t {
  TokEmbd, PosEmbd, OutNorm, OutNormB, Output,
  AttnNorm, AttnNormB, Wq, Wk, Wv, Bq, Bk, Bv, Wqkv, Bqkv, Wo, Bo,
  FfnNorm, FfnNormB, WGate, WUp, WDown, BUp, BDown, QNorm, KNorm,
  Router, RouterBias, WGateExps, WUpExps, WDownExps, WGateSh, WUpSh, WDownSh, ShGate,
  WqA, QANorm, WqB, WkvA, KvANorm, WkvB, PostAttnNorm, PostFfnNorm,
  MtpENorm, MtpHNorm, MtpEhProj, MtpHeadNorm,
};
constexpr int kGlobalSlots = 5;
inline bool is_layer_slot(Slot s) { return int(s) >= kGlobalSlots; }
TensorView& slot_ref(Weights& w, Slot s, int64_t layer);
const TensorView& slot_ref(const Weights& w, Slot s, int64_t layer);

enum class TensorKind : uint8_t {
  Matrix,     // 2-D weight: quantized by convert, decayed by AdamW
  Embedding,  // rows looked up by id (token / position)
  Vector,     // norm gain or bias: kept f32
};

struct TensorSpec {
  Slot slot;
  const char* gguf;  // GGUF name; a layer tensor is "blk.N." + this
  const char* hf;    // Hugging Face name (a layer tensor: hf_layer_prefix + "N." + this)
  TensorKind kind;
  std::vector<int64_t> (*shape)(const ModelConfig& c, int64_t layer);  // outermost first
  // Part of the model under this config (null: always). A tensor present in a
  // file but not here is refused by the loaders.
  bool (*present)(const ModelConfig& c, int64_t layer) = nullptr;
  // Optional in files: when present it turns this config flag on (e.g. Qwen2's
  // q/k/v biases -> qkv_bias); present() must then say c.*flag.
  bool ModelConfig::* flag = nullptr;
  bool hf_conv1d = false;  // stored transposed, (in, out), in Hugging Face files (GPT-2's Conv1D)
  // Mixture-of-experts tensors (E, N, K): Hugging Face files hold one (N, K)
  // tensor per expert, named with "{e}" in hf replaced by the expert index.
  // hf_alt: Mixtral's name for the same tensor (read as well; written for
  // models without a shared expert, which are saved as MixtralForCausalLM).
  const char* hf_alt = nullptr;
  bool is_layer() const { return is_layer_slot(slot); }
};

// A config field read from / written to a file's metadata under the given key
// (GGUF: "<arch>." + key; Hugging Face: a config.json field). Exactly one of
// i64 / f32 is set. A missing optional key keeps the field's current value
// (set a default before reading).
struct ConfigKey {
  const char* gguf;  // null: not in GGUF
  const char* hf;    // null: not in config.json
  int64_t ModelConfig::* i64 = nullptr;
  float ModelConfig::* f32 = nullptr;
  bool gguf_required = false, hf_required = false;
  bool write_if_zero = true;  // false: written only when the field is non-zero (soft-caps)
};

struct ArchDesc {
  Arch arch;
  const char* name;             // "llama", "gpt2"
  std::vector<std::string> gguf_archs;  // general.architecture values this reads
  std::vector<std::string> hf_archs;    // config.json architectures[0] values this reads
  // Tensors in parameter-layout order: globals before the layers, the layer
  // tensors, globals after the layers (training checkpoints store this order).
  std::vector<TensorSpec> head, layer, tail;
  const char* hf_layer_prefix;     // layer names before the index ("model.layers.", "transformer.h.")
  // A leading part of the Hugging Face names that files may omit (GPT-2's
  // "transformer."): written, and read with or without it.
  const char* hf_optional_prefix;
  std::vector<ConfigKey> keys;
};

// The registered architectures (model/arch/registry.cpp).
const std::vector<const ArchDesc*>& architectures();
const ArchDesc& arch_desc(Arch a);
// By GGUF general.architecture / Hugging Face architectures[0]; null when none reads it.
const ArchDesc* find_arch_gguf(const std::string& name);
const ArchDesc* find_arch_hf(const std::string& name);

// Every tensor of d present under c, in layout order, with its layer (-1 for globals).
void for_each_tensor_spec(const ArchDesc& d, const ModelConfig& c,
                          const std::function<void(const TensorSpec&, int64_t layer)>& f);
std::string gguf_tensor_name(const TensorSpec& s, int64_t layer);
// without_prefix: the file omits d.hf_optional_prefix.
std::string hf_tensor_name(const ArchDesc& d, const TensorSpec& s, int64_t layer, bool without_prefix = false);
// Parameters of the model c describes: the sum of its present tensors' sizes.
int64_t count_params(const ModelConfig& c);
// Parameters one token reaches: count_params less the unselected routed experts.
int64_t count_active_params(const ModelConfig& c);
// What llama.cpp's quantization rules need to know of a mixture-of-experts model (core/quant_mix.h).
MoeMixInfo moe_mix_info(const ModelConfig& c);
// Whether s is a routed-experts tensor (E, N, K).
inline bool is_expert_slot(Slot s) { return s == Slot::WGateExps || s == Slot::WUpExps || s == Slot::WDownExps; }

}  // namespace tessera
