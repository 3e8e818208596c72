// tessera bench --train: training throughput (tokens/s of full steps: forward,
// backward, AdamW) and the fraction of this machine's measured sgemm peak that
// 6 * N * tokens FLOPs represent (N = parameters in matrix products; 4 * N * tokens
// for a LoRA step, whose frozen weights take no gradient product).
#pragma once
#include <cstdint>
#include <string>

namespace tessera::cli {

struct TrainBenchArgs {
  bool enabled = false;
  int64_t batch = 8, seq = 256, steps = 3;
  bool recompute = false;
  int64_t logit_rows = 256;
  std::string precision = "fp32";
  int64_t lora_rank = 0;  // > 0: a LoRA step (rank r on every linear layer, alpha 2r, base frozen)
};

int bench_train(const std::string& model, const TrainBenchArgs& a, int threads, bool json);

}  // namespace tessera::cli
