// Data-parallel training over MPI (`mpirun -np 2 tessera train --zero S`): the
// same loss trajectory as one process with gradient accumulation, weights bit
// for bit the same across ZeRO stages 0-3, the traffic and memory per step, resuming on
// another number of ranks, and a killed rank ending the job. Skips when Tessera
// was built without MPI or mpirun is missing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"
#include "train/grad_buckets.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

class Mpi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
#ifndef TESSERA_HAVE_MPI
    return;
#endif
    if (std::system("command -v mpirun >/dev/null 2>&1") != 0 ||
        !fs::exists(test::shared_path("data/tinyshakespeare.txt")))
      return;
    dir_ = test::temp_path("mpi");
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ifstream in(test::shared_path("data/tinyshakespeare.txt"));
    std::string text(100000, '\0');
    in.read(text.data(), std::streamsize(text.size()));
    std::ofstream(dir_ + "/corpus.txt") << text;
    auto r = run_cli("tokenizer train --vocab-size 300 -o " + q(dir_ + "/tok.json") + " " + q(dir_ + "/corpus.txt"));
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_cli("data prepare --tokenizer " + q(dir_ + "/tok.json") + " -o " + q(dir_ + "/data") + " " +
                q(dir_ + "/corpus.txt"));
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
#ifndef TESSERA_HAVE_MPI
    GTEST_SKIP() << "built without MPI (libopenmpi-dev)";
#endif
    if (dir_.empty()) GTEST_SKIP() << "mpirun or ../shared/data/tinyshakespeare.txt missing";
  }
  static std::string args(const std::string& out, int steps) {
    return "train --data " + q(dir_ + "/data") + " -o " + q(out) +
           " --dim 32 --layers 2 --heads 4 --kv-heads 2 --batch 4 --seq 32 --eval-interval 10 --eval-batches 2"
           " --log-interval 100 -t 1 --seed 11 --lr 3e-3 --ckpt-interval 5 --steps " +
           std::to_string(steps);
  }
  // mpirun -np 2 tessera ARGS; its exit status, stderr in err.
  static int mpirun(const std::string& a, std::string* err = nullptr) {
    const std::string log = dir_ + "/mpirun.log";
    const int rc = std::system(("mpirun --allow-run-as-root --oversubscribe -np 2 " + std::string(TESSERA_CLI) + " " +
                                a + " >/dev/null 2>" + q(log))
                                   .c_str());
    if (err) *err = test::slurp(log);
    return rc;
  }
  static std::vector<nlohmann::json> metrics(const std::string& run) {
    std::vector<nlohmann::json> r;
    std::ifstream in(run + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) r.push_back(nlohmann::json::parse(line));
    return r;
  }
  static void expect_same_losses(const std::string& a, const std::string& b, double tol) {
    const auto ma = metrics(a), mb = metrics(b);
    ASSERT_EQ(ma.size(), mb.size());
    for (size_t i = 0; i < ma.size(); ++i) {
      const double x = ma[i]["loss"], y = mb[i]["loss"];
      EXPECT_NEAR(x, y, tol * std::abs(x)) << a << " vs " << b << " at step " << ma[i]["step"];
    }
  }
  static inline std::string dir_;
};

}  // namespace

TEST_F(Mpi, TwoRanksFollowOneProcessAndZeroStagesAgreeBitForBit) {
  const std::string one = dir_ + "/one";
  auto r = run_cli(args(one, 50) + " --grad-accum 2");
  ASSERT_EQ(r.code, 0) << r.err;
  std::string err;
  for (int stage : {0, 1, 2, 3}) {
    const std::string run = dir_ + "/z" + std::to_string(stage);
    ASSERT_EQ(mpirun(args(run, 50) + " --zero " + std::to_string(stage), &err), 0) << err;
    if (stage == 0) {  // the all-reduce started block by block during the backward: the same sums
      ASSERT_EQ(mpirun(args(dir_ + "/z0o", 50) + " --zero 0 --overlap-comm", &err), 0) << err;
      const auto a = train::load_checkpoint(train::latest_checkpoint(run));
      const auto b = train::load_checkpoint(train::latest_checkpoint(dir_ + "/z0o"));
      EXPECT_TRUE(a.params == b.params && a.m == b.m && a.v == b.v) << "--overlap-comm";
      EXPECT_NEAR(double(metrics(dir_ + "/z0o").back()["comm_bytes"]["all_reduce"]),
                  double(metrics(run).back()["comm_bytes"]["all_reduce"]), 64.0);
    }
    // 2 ranks x batch 4 = one process x batch 4 x 2 micro-batches: the same batches, summed in another order.
    expect_same_losses(one, run, 1e-6);
    const auto m = metrics(run);
    const auto& t = m.back()["comm_bytes"];
    const auto ck = train::load_checkpoint(train::latest_checkpoint(run));
    const double params = double(ck.params.size()) * 4;
    const double rest = double(train::GradBuckets::rest_elements(train::Layout(ck.cfg))) * 4;
    // Per step and rank, the ring algorithms move the parameter bytes: 2 (N-1)/N x P for the
    // gradient all-reduce (stage 0), or (N-1)/N x P reduce-scattered + (N-1)/N x P all-gathered.
    // Besides, a few doubles are all-reduced (the loss sums, the norm, the stop flags): < 256 bytes.
    if (stage == 0) {
      EXPECT_GE(double(t["all_reduce"]), params);
      EXPECT_LT(double(t["all_reduce"]), params + 256);
      EXPECT_EQ(double(t["all_gather"]), 0.0);
    } else if (stage < 3) {
      EXPECT_NEAR(double(t["reduce_scatter"]), params / 2, 64.0);
      EXPECT_NEAR(double(t["all_gather"]), params / 2, 64.0);
      EXPECT_LT(double(t["all_reduce"]), 256.0) << "only the loss sums, the norm and the flags";
    } else {
      // Stage 3 gathers each block's weights twice (forward, backward) and the rest once per
      // step, instead of all weights once after the update: ~1.5x stage 1-2's traffic.
      EXPECT_NEAR(double(t["reduce_scatter"]), params / 2, 64.0);
      EXPECT_NEAR(double(t["all_gather"]), (2 * (params - rest) + rest) / 2, 64.0);
      EXPECT_LT(double(t["all_reduce"]), 256.0) << "only the loss sums, the norm and the flags";
    }
  }
  // With 2 ranks the sums are the same whichever collective forms them: identical weights and moments.
  for (int stage : {1, 2, 3}) {
    const auto a = train::load_checkpoint(train::latest_checkpoint(dir_ + "/z0"));
    const auto b = train::load_checkpoint(train::latest_checkpoint(dir_ + "/z" + std::to_string(stage)));
    EXPECT_TRUE(a.params == b.params && a.m == b.m && a.v == b.v) << "stage " << stage;
  }
}

TEST_F(Mpi, ResumeOnAnotherNumberOfRanksKeepsTheGlobalBatch) {
  const std::string full = dir_ + "/full", a = dir_ + "/a", b = dir_ + "/b";
  std::string err;
  ASSERT_EQ(mpirun(args(full, 20) + " --zero 1", &err), 0) << err;
  // Stopped at step 10 of 20 on 2 ranks (the cosine runs to --steps 20 from the start), continued on 1.
  ASSERT_EQ(mpirun(args(a, 20) + " --zero 1 --max-time 1e-9", &err), 0) << err;
  const int64_t stopped = train::load_checkpoint(train::latest_checkpoint(a)).step;
  ASSERT_LT(stopped, 20);
  auto r = run_cli("train --resume " + q(a));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming on 1 rank(s) with --grad-accum 2"), std::string::npos) << r.err;
  expect_same_losses(full, a, 1e-6);
  // One process with 2 micro-batches, continued on 2 ranks.
  r = run_cli(args(b, 20) + " --grad-accum 2 --max-time 1e-9");
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(mpirun("train --resume " + q(b), &err), 0) << err;
  expect_same_losses(full, b, 1e-6);
}

TEST_F(Mpi, AKilledRankEndsTheJobAndResumeFinishesTheRun) {
  const std::string full = dir_ + "/kfull", k = dir_ + "/killed";
  std::string err;
  ASSERT_EQ(mpirun(args(full, 400), &err), 0) << err;
  // Kill rank 1 (a child of mpirun) once checkpoint 10 exists.
  const std::string script = dir_ + "/kill.sh";
  std::ofstream(script) << "mpirun --allow-run-as-root --oversubscribe -np 2 " << TESSERA_CLI << " " << args(k, 400)
                        << " >/dev/null 2>" << q(dir_ + "/kill.log") << " & pid=$!\n"
                        << "while [ ! -f " << q(train::checkpoint_path(k, 10)) << " ]; do sleep 0.01; done\n"
                        << "kill -9 $(pgrep -P $pid | tail -1)\n"
                        << "wait $pid; echo $? > " << q(dir_ + "/kill.rc") << "\n";
  ASSERT_EQ(std::system(("bash " + q(script)).c_str()), 0);
  EXPECT_NE(test::slurp(dir_ + "/kill.rc"), "0\n") << "the job must fail when a rank dies";
  EXPECT_FALSE(fs::exists(train::checkpoint_path(k, 400))) << "the run finished before the kill; make it longer";
  const std::string log = test::slurp(dir_ + "/kill.log");
  EXPECT_NE(log.find("rank 1"), std::string::npos) << "mpirun names the rank that died:\n" << log;
  ASSERT_EQ(mpirun("train --resume " + q(k), &err), 0) << err;
  const double a = metrics(full).back()["loss"], b = metrics(k).back()["loss"];
  EXPECT_NEAR(a, b, 1e-6 * std::abs(a));
}

// The training state a rank holds, measured in the run (stage 2's gradient: its
// shard plus the resident pages of the buckets in flight, by mincore), equals
// what `tessera memory -m MODEL --dp 2 --zero S` says for that model within 5%,
// stage 2 holds less gradient than stage 1 and stage 3 fewer weights than stage 2.
TEST_F(Mpi, MemoryPerRankMatchesTesseraMemory) {
  const std::string shape = " --dim 128 --layers 4 --heads 4 --kv-heads 4 --batch 4 --seq 32 -t 1 --steps 2"
                            " --eval-interval 10 --log-interval 100";
  const std::string gguf = dir_ + "/mem.gguf";
  std::string err;
  double grads[4] = {0, 0, 0, 0}, weights[4] = {0, 0, 0, 0};
  for (int stage : {0, 1, 2, 3}) {
    const std::string run = dir_ + "/mem" + std::to_string(stage);
    ASSERT_EQ(mpirun("train --data " + q(dir_ + "/data") + " -o " + q(run) + shape + " --zero " + std::to_string(stage),
                     &err), 0) << err;
    if (stage == 0) {
      auto r = run_cli("export " + q(run) + " -o " + q(gguf));
      ASSERT_EQ(r.code, 0) << r.err;
    }
    const auto measured = metrics(run).back()["state_bytes"];
    auto r = run_cli("memory -m " + q(gguf) + " --dp 2 --precision fp32 --json --zero " + std::to_string(stage));
    ASSERT_EQ(r.code, 0) << r.err;
    const auto model = nlohmann::json::parse(r.out)["stages"][0];
    for (const char* k : {"weights", "grads", "optimizer"}) {
      const double got = measured[k], want = model[std::string(k) + "_bytes"];
      EXPECT_NEAR(got, want, 0.05 * want) << "stage " << stage << " " << k;
    }
    grads[stage] = measured["grads"], weights[stage] = measured["weights"];
  }
  EXPECT_EQ(grads[0], grads[1]) << "stage 1 reduce-scatters in place: one full gradient buffer";
  EXPECT_LT(grads[2], 0.85 * grads[1]) << "stage 2 holds its shard and the buckets in flight";
  EXPECT_EQ(weights[2], weights[1]);
  EXPECT_LT(weights[3], 0.85 * weights[2]) << "stage 3 holds its shard and the blocks in flight";
}

// ZeRO runs write sharded checkpoints: each rank its part, rank 0 a manifest naming the
// parts and their checksums. Old checkpoints go with their shards; export consolidates;
// a damaged or missing shard is refused naming the file.
TEST_F(Mpi, ShardedCheckpointsKeepExportAndRefuseABadShard) {
  const std::string run = dir_ + "/sharded";
  std::string err;
  ASSERT_EQ(mpirun(args(run, 20) + " --zero 3 --keep 2", &err), 0) << err;
  const auto manifests = train::list_checkpoints(run);
  ASSERT_EQ(manifests.size(), 2u);
  size_t shard_files = 0;
  for (const auto& e : fs::directory_iterator(run))
    if (e.path().filename().string().find(".rank") != std::string::npos) ++shard_files;
  EXPECT_EQ(shard_files, 4u) << "the shards of the deleted checkpoints go with them";
  const std::string last = train::latest_checkpoint(run);
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(fs::exists(train::shard_path(last, r, 2)));
  // Stopped after its first step and resumed: on 2 ranks (each reads only its part of the
  // weights and moments) and on one process (all of it), onto the uninterrupted losses.
  for (const bool two : {true, false}) {
    const std::string cut = dir_ + (two ? "/sharded_cut2" : "/sharded_cut1");
    ASSERT_EQ(mpirun(args(cut, 20) + " --zero 3 --keep 2 --max-time 1e-9", &err), 0) << err;
    ASSERT_LT(train::load_checkpoint(train::latest_checkpoint(cut)).step, 20);
    if (two) {
      ASSERT_EQ(mpirun("train --resume " + q(cut), &err), 0) << err;
    } else {
      const auto one = run_cli("train --resume " + q(cut));
      ASSERT_EQ(one.code, 0) << one.err;
    }
    expect_same_losses(run, cut, 1e-6);
  }
  EXPECT_LT(fs::file_size(last), 16384u) << "the manifest holds no tensors";
  auto r = run_cli("export " + q(run) + " -o " + q(dir_ + "/sharded.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  // A flipped byte in rank 1's part, then a missing part: refused, naming the shard.
  const std::string shard = train::shard_path(last, 1, 2);
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x5a');
  }
  r = run_cli("export " + q(run) + " -o " + q(dir_ + "/bad.gguf"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find(shard), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("corrupt"), std::string::npos) << r.err;
  fs::remove(shard);
  r = run_cli("train --resume " + q(run) + " --steps 30");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("missing"), std::string::npos) << r.err;
}

// Tensor parallelism: 2 ranks each holding half of every block's heads and hidden units
// follow one process to 1e-6; 4 ranks as 2 data-parallel x 2 tensor-parallel follow one
// process with --grad-accum 2; the whole checkpoint of a TP run resumes on one process
// (--tp 1); what does not split is refused with the reason.
TEST_F(Mpi, TensorParallelFollowsOneProcessAndResumesOnOne) {
  const std::string one = dir_ + "/tp_one", tp = dir_ + "/tp2", part = dir_ + "/tp_part";
  auto r = run_cli(args(one, 50));
  ASSERT_EQ(r.code, 0) << r.err;
  std::string err;
  ASSERT_EQ(mpirun(args(tp, 50) + " --tp 2", &err), 0) << err;
  expect_same_losses(one, tp, 1e-6);
  // Per step: an all-reduce of the (B T, C) activations after each sublayer's row-parallel
  // product, and of its input gradient in the backward: 4 per layer (2 layers, B T C = 4 x 32 x 32).
  const double acts = 4.0 * 32 * 32 * 4;
  EXPECT_NEAR(double(metrics(tp).back()["comm_bytes"]["all_reduce"]), 2 * 4 * acts, 256.0);
  // A rank holds its slice: what tessera memory --tp 2 says for the model.
  r = run_cli("export " + q(tp) + " -o " + q(dir_ + "/tp.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("memory -m " + q(dir_ + "/tp.gguf") + " --tp 2 --zero 0 --precision fp32 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto model = nlohmann::json::parse(r.out)["stages"][0];
  const auto measured = metrics(tp).back()["state_bytes"];
  for (const char* k : {"weights", "grads", "optimizer"})
    EXPECT_NEAR(double(measured[k]), double(model[std::string(k) + "_bytes"]), 0.05 * double(model[std::string(k) + "_bytes"])) << k;
  // Stopped early on 2 ranks, continued on one process.
  ASSERT_EQ(mpirun(args(part, 50) + " --tp 2 --max-time 1e-9", &err), 0) << err;
  ASSERT_LT(train::load_checkpoint(train::latest_checkpoint(part)).step, 50);
  r = run_cli("train --resume " + q(part) + " --tp 1");
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_losses(one, part, 1e-6);
  // 2 x 2 ranks: data parallel over tensor-parallel pairs.
  const std::string acc = dir_ + "/tp_acc", dp_tp = dir_ + "/dp_tp";
  r = run_cli(args(acc, 10) + " --grad-accum 2");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string four = "mpirun --allow-run-as-root --oversubscribe -np 4 " + std::string(TESSERA_CLI) + " " +
                           args(dp_tp, 10) + " --tp 2 >/dev/null 2>" + q(dir_ + "/four.log");
  ASSERT_EQ(std::system(four.c_str()), 0) << test::slurp(dir_ + "/four.log");
  expect_same_losses(acc, dp_tp, 1e-6);
  // Refusals: 2 ranks in groups of 4, ZeRO with TP, 1 KV head over 2 ranks.
  EXPECT_NE(mpirun(args(dir_ + "/bad1", 5) + " --tp 4", &err), 0);
  EXPECT_NE(err.find("do not split into tensor-parallel groups"), std::string::npos) << err;
  EXPECT_NE(mpirun(args(dir_ + "/bad2", 5) + " --tp 2 --zero 1", &err), 0);
  EXPECT_NE(err.find("ZeRO stage 0 only"), std::string::npos) << err;
  EXPECT_NE(mpirun(args(dir_ + "/bad3", 5) + " --tp 2 --kv-heads 1", &err), 0);
  EXPECT_NE(err.find("KV heads (1) do not split"), std::string::npos) << err;
}

// Inference over MPI: `mpirun -np 2 tessera generate --tp 2` (each rank half of every
// block's heads and hidden units, the partial sums added in rank order) prints what one
// process prints, greedy and sampled, f32 and Q8_0; a matrix whose columns do not split
// into whole blocks is refused naming it.
TEST_F(Mpi, GenerateWithTensorParallelismPrintsWhatOneProcessPrints) {
  const std::string m260 = test::shared_path("models/stories260K.bin"), tok = test::shared_path("models/tok512.bin");
  const std::string q8 = test::shared_path("reference/quant/tinystories-q8_0.gguf");
  const std::string q4k = test::shared_path("reference/quant/tinystories-q4_k_m.gguf");
  if (!fs::exists(m260) || !fs::exists(q8)) GTEST_SKIP() << "needs ../shared models";
  const auto gen = [&](const std::string& model_args, const std::string& extra, bool tp, std::string* err) {
    const std::string out = dir_ + "/gen.txt";
    const std::string cmd = (tp ? "mpirun --allow-run-as-root --oversubscribe -np 2 " : "") + std::string(TESSERA_CLI) +
                            " generate " + model_args + " -p 'Once upon a time' -t 1 " + extra +
                            (tp ? " --tp 2" : "") + " >" + q(out) + " 2>" + q(dir_ + "/gen.err");
    const int rc = std::system(cmd.c_str());
    if (err) *err = test::slurp(dir_ + "/gen.err");
    return rc == 0 ? test::slurp(out) : "<failed: " + test::slurp(dir_ + "/gen.err") + ">";
  };
  const std::string f32 = "-m " + q(m260) + " --tokenizer " + q(tok);
  for (const std::string& extra : {std::string("-n 80 --temp 0"), std::string("-n 120 --temp 0.8 --seed 9")}) {
    const std::string one = gen(f32, extra, false, nullptr);
    ASSERT_GT(one.size(), 100u) << one;
    EXPECT_EQ(gen(f32, extra, true, nullptr), one) << extra;
  }
  EXPECT_EQ(gen("-m " + q(q8), "-n 60 --temp 0", true, nullptr), gen("-m " + q(q8), "-n 60 --temp 0", false, nullptr));
  std::string err;
  gen("-m " + q(q4k), "-n 4", true, &err);
  EXPECT_NE(err.find("attn_output.weight has 256 columns"), std::string::npos) << err;
  EXPECT_NE(err.find("error: rank"), std::string::npos) << err;
}
