// bench_kernels: decode (M = 1) and prefill (M = 512) speed of matmul for every
// weight dtype on the matrices of a 1B model (TinyLlama 1.1B shapes: q, k, v,
// o, gate, up, down per layer, 22 layers, and the 32000 x 2048 output
// projection), as fractions of this machine's read bandwidth and sgemm peak
// measured in the same run. Decode streams all 22 layers (each its own
// memory, so nothing is served from the LLC); prefill runs one layer and the
// output. Prints one JSON object.
//
//   bench_kernels [--threads N] [--isa scalar|avx2|avx512] [--reps N] [--crossover]
//                 [--types f32,q4_0,...] [--decode-only] [--attention] [--prefill-m M]
//
// --prefill-m times the prefill pass with M rows (1..512, default 512): 16 is
// the matrix products of a 16-sequence batched decode step. Both passes take
// the best of --reps runs (prefill at least 3).
//
// --attention times decode attention instead (kernels/attention.h): one token of
// the 1B shape (32 query heads in 8 KV groups, head size 64) against 256 to 4096
// cached positions, f32, f16 and q8_0 caches, one thread, the scalar reference against
// the ISA's kernel.
//
// --crossover also times, for a few M, the matrix-vector path against the
// sgemm path (to set detail::blas_min_rows).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cctype>
#include <cstring>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/blas_env.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "measure/measure.h"
#include "kernels/repack.h"

using namespace tessera;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Page-aligned anonymous memory (huge pages where allowed), pre-faulted.
class Buffer {
 public:
  explicit Buffer(size_t n) : n_(std::max<size_t>(n, 1)) {
    p_ = mmap(nullptr, n_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p_ == MAP_FAILED) {
      std::perror("mmap");
      std::exit(1);
    }
    madvise(p_, n_, MADV_HUGEPAGE);
  }
  ~Buffer() { munmap(p_, n_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data() const { return static_cast<uint8_t*>(p_); }
  size_t size() const { return n_; }

 private:
  void* p_;
  size_t n_;
};

uint64_t next(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

float rand_unit(uint64_t& s) { return float(next(s) >> 40) / float(1 << 24) * 2.f - 1.f; }

// Fills W's bytes with valid random values of its dtype (cheaply: no quantization pass).
void fill_weights(DType t, uint8_t* p, int64_t numel, float* scales, int group, uint64_t seed) {
  uint64_t s = seed | 1;
  switch (t) {
    case DType::F32:
      for (int64_t i = 0; i < numel; ++i) reinterpret_cast<float*>(p)[i] = rand_unit(s) * 0.05f;
      break;
    case DType::F16:
    case DType::BF16:
      for (int64_t i = 0; i < numel; ++i) {
        const float f = rand_unit(s) * 0.05f;
        reinterpret_cast<uint16_t*>(p)[i] = t == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f);
      }
      break;
    case DType::Q8_0:
    case DType::Q4_0: {
      const size_t bytes = dtype_row_bytes(t, numel), bb = dtype_block_bytes(t);
      for (size_t i = 0; i + 8 <= bytes; i += 8) {
        const uint64_t v = next(s);
        std::memcpy(p + i, &v, 8);
      }
      const uint16_t d = f32_to_f16(0.002f);
      for (size_t i = 0; i < bytes; i += bb) std::memcpy(p + i, &d, 2);
      break;
    }
    case DType::Q4_0_R4:  // made from their file types by add_matrix
    case DType::Q8_0_R4:
    case DType::IQ4_NL_R4:
    case DType::Q4_1_R4:
    case DType::Q5_0_R4:
    case DType::Q5_1_R4:
    case DType::Q4_K_R4:
    case DType::Q5_K_R4:
    case DType::Q6_K_R4:
      break;
    case DType::Q8_G:
      for (int64_t i = 0; i + 8 <= numel; i += 8) {
        const uint64_t v = next(s);
        std::memcpy(p + i, &v, 8);
      }
      for (int64_t g = 0; g < numel / group; ++g) scales[g] = 0.001f + 0.0001f * float(g % 7);
      break;
    default: {  // the other block types: random values through their quantizer, 4096 at a time
      std::vector<float> x(4096);
      for (int64_t i = 0; i < numel; i += 4096) {
        const int64_t n = std::min<int64_t>(4096, numel - i);
        for (int64_t j = 0; j < n; ++j) x[size_t(j)] = rand_unit(s) * 0.05f;
        quantize_row(t, x.data(), p + dtype_row_bytes(t, i), n);
      }
      break;
    }
  }
}

struct Shape {
  const char* name;
  int64_t N, K;
};
// One TinyLlama-1.1B layer (dim 2048, 4 KV heads x 64, hidden 5632); the model has 22.
const Shape kLayer[] = {{"q", 2048, 2048},    {"k", 256, 2048},    {"v", 256, 2048},   {"o", 2048, 2048},
                        {"gate", 5632, 2048}, {"up", 5632, 2048}, {"down", 2048, 5632}};
const Shape kOutput = {"output", 32000, 2048};
constexpr int kLayers = 22;

// Weights of `layers` layers plus the output projection, each matrix its own
// memory (so a decode pass streams them all from DRAM, as a real token does).
struct Matrices {
  std::vector<TensorView> views;
  std::vector<std::unique_ptr<Buffer>> owned;
  size_t bytes = 0;  // weight bytes read per pass (scales included)
  double flops_per_row = 0;
};

TensorView add_matrix(Matrices& m, DType t, int group, const Shape& s, const TensorView* copy_of, uint64_t seed) {
  const int64_t numel = s.N * s.K;
  const size_t wbytes = dtype_row_bytes(t, numel);
  const size_t soff = (wbytes + 63) & ~size_t(63);
  const size_t sbytes = t == DType::Q8_G ? size_t(numel / group) * sizeof(float) : 0;
  m.owned.push_back(std::make_unique<Buffer>(soff + sbytes));
  uint8_t* p = m.owned.back()->data();
  float* scales = t == DType::Q8_G ? reinterpret_cast<float*>(p + soff) : nullptr;
  if (copy_of) {
    std::memcpy(p, copy_of->data, wbytes);
    if (scales) std::memcpy(scales, copy_of->scales, sbytes);
  } else if (const DType src = r4_file_type(t); src != t) {  // the load-time layout of random weights (N % 4 == 0)
    Buffer q(dtype_row_bytes(src, numel));
    fill_weights(src, q.data(), numel, nullptr, 0, seed);
    repack_r4(make_view(src, {s.N, s.K}, q.data()), p, 2);
  } else {
    fill_weights(t, p, numel, scales, group, seed);
  }
  TensorView v = make_view(t, {s.N, s.K}, p);
  v.scales = scales;
  v.group = t == DType::Q8_G ? group : 0;
  m.views.push_back(v);
  m.bytes += wbytes + sbytes;
  m.flops_per_row += 2.0 * double(numel);
  return v;
}

void build(Matrices& m, DType t, int group, int layers) {
  std::vector<TensorView> first;
  for (int l = 0; l < layers; ++l)
    for (size_t i = 0; i < std::size(kLayer); ++i)
      first.push_back(add_matrix(m, t, group, kLayer[i], l ? &first[i] : nullptr, 1000 + i));
  add_matrix(m, t, group, kOutput, nullptr, 7);
}

// Best time of one pass of matmul() over all matrices with M activation rows.
double time_pass(KernelContext& ctx, const Matrices& m, int64_t M, int reps, const float* X, float* Y) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    for (const TensorView& v : m.views) matmul(ctx, v, X, M, Y);
    best = std::min(best, now_s() - t0);
  }
  return best;
}

double time_matvec_pass(KernelContext& ctx, const Matrices& m, int64_t M, int reps, const float* X, float* Y) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    for (const TensorView& v : m.views) detail::matmul_matvec(ctx, v, X, M, Y);
    best = std::min(best, now_s() - t0);
  }
  return best;
}

double time_blas_pass(KernelContext& ctx, const Matrices& m, int64_t M, int reps, const float* X, float* Y) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    for (const TensorView& v : m.views) detail::matmul_blas(ctx, v, X, M, Y, dequantize_row);
    best = std::min(best, now_s() - t0);
  }
  return best;
}

// Decode attention of one token, 1B shape, per KV-cache length and type: the
// scalar reference and the ISA's kernel, microseconds per layer.
nlohmann::json bench_attention(Isa isa, int reps) {
  const int64_t n_heads = 32, n_kv = 8, hd = 64, kvd = n_kv * hd, group = n_heads / n_kv;
  nlohmann::json out;
  uint64_t s = 7;
  std::vector<float> q(size_t(n_heads * hd)), o(q.size());
  for (float& x : q) x = rand_unit(s);
  for (int64_t n : {256, 1024, 4096}) {
    std::vector<float> k(size_t(n * kvd)), v(k.size());
    std::vector<float> scores(static_cast<size_t>(group * n));
    for (float& x : k) x = rand_unit(s);
    for (float& x : v) x = rand_unit(s);
    std::vector<uint16_t> kh(k.size()), vh(v.size());
    for (size_t i = 0; i < k.size(); ++i) kh[i] = f32_to_f16(k[i]), vh[i] = f32_to_f16(v[i]);
    std::vector<uint8_t> kq(dtype_row_bytes(DType::Q8_0, int64_t(k.size()))), vq(kq.size());
    quantize_row(DType::Q8_0, k.data(), kq.data(), int64_t(k.size()));
    quantize_row(DType::Q8_0, v.data(), vq.data(), int64_t(v.size()));
    for (DType kvt : {DType::F32, DType::F16, DType::Q8_0}) {
      auto at = [&](const std::vector<float>& f, const std::vector<uint16_t>& h, const std::vector<uint8_t>& q8,
                    int64_t e) -> const void* {
        if (kvt == DType::F16) return h.data() + e;
        if (kvt == DType::Q8_0) return q8.data() + dtype_row_bytes(DType::Q8_0, e);
        return f.data() + e;
      };
      auto pass = [&](bool reference) {
        for (int64_t g = 0; g < n_kv; ++g) {
          DecodeAttnArgs a;
          a.q = q.data() + g * group * hd;
          a.q_stride = hd;
          a.G = group;
          a.hd = hd;
          a.k = at(k, kh, kq, g * hd);
          a.v = at(v, vh, vq, g * hd);
          a.kv = kvt;
          a.kv_stride = kvd;
          a.n = n;
          a.scale = 0.125f;
          a.scores = scores.data();
          a.out = o.data() + g * group * hd;
          a.out_stride = hd;
          if (reference) ref::attend_decode(a);
          else attend_decode(isa, a);
        }
      };
      auto best_us = [&](bool reference) {
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
          const double t0 = now_s();
          pass(reference);
          best = std::min(best, now_s() - t0);
        }
        return best * 1e6;
      };
      const double tr = best_us(true), tk = best_us(false);
      const double kv_bytes = 2.0 * double(dtype_row_bytes(kvt, n * kvd));
      out[std::string(dtype_name(kvt)) + "_" + std::to_string(n)] = {
          {"reference_us", tr}, {"kernel_us", tk}, {"speedup", tr / tk}, {"kernel_kv_gbs", kv_bytes / tk / 1e3}};
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  ensure_openblas_coretype(argc, argv);
  int threads = 2, reps = 15;
  int64_t Mp = 512;  // prefill rows
  bool crossover = false, decode_only = false, attention = false;
  std::string only;  // comma-separated dtype names; empty: all
  Isa isa = detect_isa();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--isa" && i + 1 < argc) {
      const std::string s = argv[++i];
      isa = s == "scalar" ? Isa::Scalar : s == "avx2" ? Isa::AVX2 : Isa::AVX512;
    } else if (a == "--crossover") {
      crossover = true;
    } else if (a == "--prefill-m" && i + 1 < argc) {
      Mp = std::clamp<int64_t>(std::atoll(argv[++i]), 1, 512);
    } else if (a == "--decode-only") {
      decode_only = true;
    } else if (a == "--attention") {
      attention = true;
    } else if (a == "--types" && i + 1 < argc) {
      only = "," + std::string(argv[++i]) + ",";
    } else {
      std::fprintf(stderr,
                   "usage: bench_kernels [--threads N] [--isa scalar|avx2|avx512] [--reps N] [--crossover] "
                   "[--types f32,f16,bf16,q8_0,q8_0_r4,q4_0,q4_0_r4,q8_g,iq4_nl[_r4],q4_1[_r4],q5_0[_r4],q5_1[_r4],"
                   "q4_k[_r4],q5_k[_r4],q6_k[_r4]] [--decode-only] [--attention] [--prefill-m M]\n");
      return 2;
    }
  }
  if (attention) {
    nlohmann::json a;
    a["isa"] = isa_name(isa);
    a["attention"] = bench_attention(isa, reps);
    std::printf("%s\n", a.dump(2).c_str());
    return 0;
  }
  KernelContext ctx(threads, isa);
  nlohmann::json out;
  out["threads"] = threads;
  out["isa"] = isa_name(isa);
  out["openblas_core"] = openblas_core_name();
  const char* env_core = std::getenv("OPENBLAS_CORETYPE");
  out["openblas_coretype_env"] = env_core ? env_core : "";
  // The machine is shared: limits are re-measured during the run and the
  // highest value seen is the denominator (the conservative choice).
  double bw = measure_read_bandwidth_gbs(ctx);
  double peak = measure_gemm_peak_gflops(ctx);

  const int64_t Kmax = 5632, Nmax = 32000;
  std::vector<float> X(size_t(512 * Kmax)), Y(size_t(512 * Nmax));
  uint64_t s = 99;
  for (float& x : X) x = rand_unit(s);

  std::vector<std::pair<DType, int>> types;
  for (auto [t, group] : {std::pair{DType::F32, 0}, {DType::F16, 0}, {DType::BF16, 0}, {DType::Q8_0, 0},
                          {DType::Q8_0_R4, 0}, {DType::Q4_0, 0}, {DType::Q4_0_R4, 0}, {DType::Q8_G, 64},
                          {DType::IQ4_NL, 0}, {DType::IQ4_NL_R4, 0}, {DType::Q4_1, 0}, {DType::Q4_1_R4, 0},
                          {DType::Q5_0, 0}, {DType::Q5_0_R4, 0}, {DType::Q5_1, 0}, {DType::Q5_1_R4, 0},
                          {DType::Q4_K, 0}, {DType::Q4_K_R4, 0}, {DType::Q5_K, 0}, {DType::Q5_K_R4, 0},
                          {DType::Q6_K, 0}, {DType::Q6_K_R4, 0}}) {
    std::string name = dtype_name(t);
    for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (only.empty() || only.find("," + name + ",") != std::string::npos) types.emplace_back(t, group);
  }
  if (types.empty()) {
    std::fprintf(stderr, "bench_kernels: --types names no known dtype (f32,f16,bf16,q8_0,q8_0_r4,q4_0,q4_0_r4,q8_g,"
                 "iq4_nl,iq4_nl_r4,q4_1,q4_1_r4,q5_0,q5_0_r4,q5_1,q5_1_r4,q4_k,q4_k_r4,q5_k,q5_k_r4,q6_k,q6_k_r4)\n");
    return 2;
  }
  for (auto [t, group] : types) {
    nlohmann::json r;
    {
      // Decode: one token through all 22 layers and the output projection.
      Matrices m;
      build(m, t, group, kLayers);
      time_pass(ctx, m, 1, 1, X.data(), Y.data());  // warm-up: scratch, page tables
      bw = std::max(bw, measure_read_bandwidth_gbs(ctx));
      const double td = time_pass(ctx, m, 1, reps, X.data(), Y.data());
      r["model_weight_bytes"] = m.bytes;
      r["decode_ms_per_token"] = td * 1e3;
      r["decode_tok_s"] = 1.0 / td;
      r["decode_gbs"] = double(m.bytes) / td / 1e9;
    }
    if (!decode_only) {
      // Prefill: 512 rows through one layer and the output projection (compute bound).
      Matrices m;
      build(m, t, group, 1);
      peak = std::max(peak, measure_gemm_peak_gflops(ctx));
      const double tp = time_pass(ctx, m, Mp, std::max(3, reps), X.data(), Y.data());
      r["prefill_m"] = Mp;
      r["prefill_gflops"] = m.flops_per_row * double(Mp) / tp / 1e9;
      if (isa != Isa::Scalar) {
        // The two paths matmul() chooses between, forced.
        const double tm = time_matvec_pass(ctx, m, Mp, 1, X.data(), Y.data());
        r["prefill_matvec_path_gflops"] = m.flops_per_row * double(Mp) / tm / 1e9;
        const double tb = time_blas_pass(ctx, m, Mp, 1, X.data(), Y.data());
        r["prefill_sgemm_path_gflops"] = m.flops_per_row * double(Mp) / tb / 1e9;
      }
      if (crossover && isa != Isa::Scalar) {
        nlohmann::json c;
        for (int64_t M : {8, 16, 32, 48, 64, 128, 256}) {
          const double tv = time_matvec_pass(ctx, m, M, 3, X.data(), Y.data());
          const double tb = time_blas_pass(ctx, m, M, 3, X.data(), Y.data());
          c[std::to_string(M)] = {{"matvec_gflops", m.flops_per_row * double(M) / tv / 1e9},
                                  {"sgemm_gflops", m.flops_per_row * double(M) / tb / 1e9}};
        }
        r["crossover"] = c;
      }
    }
    out[dtype_name(t)] = r;
    std::fprintf(stderr, "%s done\n", dtype_name(t));
  }
  out["read_bandwidth_gbs"] = bw;
  out["sgemm_peak_gflops"] = peak;
  for (auto [t, group] : types) {
    nlohmann::json& r = out[dtype_name(t)];
    r["decode_fraction_of_bandwidth"] = r["decode_gbs"].get<double>() / bw;
    if (!decode_only) r["prefill_fraction_of_peak"] = r["prefill_gflops"].get<double>() / peak;
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
