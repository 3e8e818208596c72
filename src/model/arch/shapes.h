// Shape and presence functions the architecture tables share (model/arch/*.cpp).
#pragma once
#include "model/arch.h"

namespace tessera::arch_shapes {
using Shape = std::vector<int64_t>;
inline Shape vc(const ModelConfig& c, int64_t) { return {c.vocab_size, c.dim}; }  // embedding / output
inline Shape c1(const ModelConfig& c, int64_t) { return {c.dim}; }                // norm gain / bias
inline Shape hc(const ModelConfig& c, int64_t) { return {c.hidden_dim, c.dim}; }  // up / gate
inline Shape ch(const ModelConfig& c, int64_t) { return {c.dim, c.hidden_dim}; }  // down
inline bool untied(const ModelConfig& c, int64_t) { return !c.tied_embeddings; }
constexpr auto M = TensorKind::Matrix, E = TensorKind::Embedding, V = TensorKind::Vector;
}  // namespace tessera::arch_shapes
