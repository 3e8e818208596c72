#include "model/tensor_parallel.h"

#include <cstring>
#include <string>

#include "core/error.h"

namespace tessera {

ModelConfig tp_local_config(const ModelConfig& full, int tp) {
  if (tp < 1) fail("--tp must be at least 1, got ", tp);
  if (full.arch != Arch::Llama)
    fail("--tp: tensor parallelism covers the llama family (GPT-2's fused qkv projection is not split)");
  if (full.is_moe() || full.mla() || full.post_norms || full.mtp_depth > 0)
    fail("--tp: tensor parallelism covers dense blocks (no experts, latent attention, sandwich norms or "
         "multi-token prediction modules)");
  const auto split = [&](const char* what, int64_t n) {
    if (n % tp != 0) fail("--tp ", tp, ": the model's ", what, " (", n, ") do not split evenly over ", tp, " ranks");
    return n / tp;
  };
  ModelConfig c = full;
  c.n_heads = split("attention heads", full.n_heads);
  c.n_kv_heads = split("KV heads", full.n_kv_heads);
  c.hidden_dim = split("feed-forward hidden units", full.hidden_dim);
  return c;
}

namespace {
void check_type(const TensorView& v, const std::string& name) {
  if (v.scales || v.outlier_threshold > 0.f)
    fail("--tp: ", name, " is stored as int8 rows with separate scales, which tensor parallelism does not split");
}

// Rows [r m, (r + 1) m) of v (m = rows / tp); a 1-D view: elements [r m, (r + 1) m).
TensorView rows_of(const TensorView& v, int r, int tp, const std::string& name) {
  if (v.empty()) return v;
  check_type(v, name);
  TensorView s = v;
  if (v.ndim == 1) {
    const int64_t m = v.shape[0] / tp;
    if (m * tp != v.shape[0] || dtype_row_bytes(v.dtype, m) * size_t(tp) != v.row_bytes())
      fail("--tp: ", name, " (", v.shape[0], " elements) does not split into ", tp, " whole parts");
    s.shape[0] = m;
    s.data = static_cast<const uint8_t*>(v.data) + size_t(r) * dtype_row_bytes(v.dtype, m);
    return s;
  }
  const int64_t m = v.shape[0] / tp;
  if (m * tp != v.shape[0]) fail("--tp: ", name, " has ", v.shape[0], " rows, not a multiple of ", tp);
  s.shape[0] = m;
  s.data = v.row(int64_t(r) * m);
  return s;
}

// Columns [r m, (r + 1) m) of every row of v, copied into a buffer of owned.
TensorView cols_of(const TensorView& v, int r, int tp, const std::string& name, std::vector<aligned_vector<uint8_t>>& owned) {
  if (v.empty()) return v;
  check_type(v, name);
  if (v.ndim != 2) fail("--tp: ", name, " is not a matrix");
  const int64_t m = v.cols() / tp, blk = dtype_block_elems(v.dtype);
  if (m * tp != v.cols() || m % blk != 0)
    fail("--tp ", tp, ": ", name, " has ", v.cols(), " columns, which do not split into ", tp, " parts of whole ",
         dtype_name(v.dtype), " blocks (", blk, " columns); use more even sizes or an f16/f32 file");
  const size_t part = dtype_row_bytes(v.dtype, m), rows = size_t(v.rows());
  auto& buf = owned.emplace_back(rows * part);
  for (size_t i = 0; i < rows; ++i) std::memcpy(buf.data() + i * part, v.row(int64_t(i)) + size_t(r) * part, part);
  TensorView s = v;
  s.shape[1] = m;
  s.data = buf.data();
  return s;
}
}  // namespace

Weights tp_slice_weights(const Weights& w, int r, int tp, std::vector<aligned_vector<uint8_t>>& owned) {
  Weights s = w;
  s.cfg = tp_local_config(w.cfg, tp);
  for (size_t l = 0; l < s.layers.size(); ++l) {
    auto& L = s.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    L.wq = rows_of(L.wq, r, tp, p + "attn_q.weight");
    L.wk = rows_of(L.wk, r, tp, p + "attn_k.weight");
    L.wv = rows_of(L.wv, r, tp, p + "attn_v.weight");
    L.bq = rows_of(L.bq, r, tp, p + "attn_q.bias");
    L.bk = rows_of(L.bk, r, tp, p + "attn_k.bias");
    L.bv = rows_of(L.bv, r, tp, p + "attn_v.bias");
    L.wo = cols_of(L.wo, r, tp, p + "attn_output.weight", owned);
    L.w_gate = rows_of(L.w_gate, r, tp, p + "ffn_gate.weight");
    L.w_up = rows_of(L.w_up, r, tp, p + "ffn_up.weight");
    L.b_up = rows_of(L.b_up, r, tp, p + "ffn_up.bias");
    L.w_down = cols_of(L.w_down, r, tp, p + "ffn_down.weight", owned);
    if (r != 0) L.bo = TensorView{}, L.b_down = TensorView{};  // added once, by rank 0's partial sum
  }
  return s;
}

}  // namespace tessera
