// Measured limits of this machine, for `tessera bench` and bench_kernels:
// the ratios reported there are to these numbers, measured in the same run.
#pragma once

#include <vector>

#include "kernels/kernels.h"

namespace tessera {

// DRAM read bandwidth in GB/s (1e9 bytes/s): a streaming read of a 1 GiB
// buffer (far larger than the LLC), pre-faulted, split across ctx.n_threads
// threads with the widest loads ctx.isa has; best of several runs. ~0.5 s.
double measure_read_bandwidth_gbs(KernelContext& ctx);

// Seconds for one streaming read (no arithmetic but an xor) of every span,
// each split evenly across ctx.n_threads threads. `tessera bench` reads the
// model's weights with it between every few decoded tokens: the time a plain
// read of those very bytes takes, in the same time window, is the decode bound
// that the host's drifting bandwidth and the placement of the memory do not skew.
struct ByteSpan {
  const void* data;
  size_t bytes;
};
double stream_read_seconds(KernelContext& ctx, const std::vector<ByteSpan>& spans);

// Best sgemm GFLOP/s on a 2048^3 problem through the prefill path
// (OpenBLAS with ctx.n_threads threads); best of a few runs. ~0.5 s.
double measure_gemm_peak_gflops(KernelContext& ctx);

// Best bf16 GEMM GFLOP/s (kernels/gemm_bf16.h, bf16 operands) on 2048^3; 0 when
// the CPU has no AVX-512 BF16. The denominator for bf16 prefill and training.
double measure_gemm_bf16_peak_gflops(KernelContext& ctx);

// Best f32 GEMM GFLOP/s of kernels/gemm_bf16.h's gemm_f32 on 2048^3; 0 without
// AVX-512. fp32 training takes gemm_f32, so its peak fraction divides by the
// higher of this and the sgemm peak.
double measure_gemm_f32_peak_gflops(KernelContext& ctx);

// The arithmetic ceiling in GFLOP/s: every one of ctx.n_threads threads runs a
// register-only loop of independent multiply-adds (fp32 FMA, or with bf16 the
// AVX-512 BF16 dot-product instruction); best of a few runs, ~0.3 s. This is
// the physical limit a GEMM or a training step can approach. 0 where the ISA
// has no such loop (scalar builds) or where bf16 products run on AMX tiles,
// whose ceiling this loop does not measure.
double measure_fma_peak_gflops(KernelContext& ctx, bool bf16);

}  // namespace tessera
