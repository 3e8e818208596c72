// `tessera distill` from the command line: a student learns from stories260K's
// distribution (the KD term falls and, with no labels at all, the validation
// loss with it), resumes bit for bit, and bad input is refused. (The loss's gradient: TrainGrad.DistillationLossMatchesFiniteDifferences.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

std::vector<nlohmann::json> metrics(const std::string& run) {
  std::vector<nlohmann::json> r;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) r.push_back(nlohmann::json::parse(line));
  return r;
}

}  // namespace

TEST(Distill, AStudentLearnsFromTheTeacher) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  const std::string dir = test::temp_path("distill");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string tok = test::shared_path("models/tok512.bin"), teacher = test::shared_path("models/stories260K.bin");
  test::copy_shared_prefix("data/tinystories_val.txt", 150000, dir + "/ts.txt");
  auto r = run_cli("data prepare --tokenizer " + q(tok) + " -o " + q(dir + "/data") + " " + q(dir + "/ts.txt"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string S = "--data " + q(dir + "/data") +
                        " --dim 32 --layers 2 --heads 4 --batch 8 --seq 64 --lr 3e-3 --eval-interval 60 "
                        "--eval-batches 8 --log-interval 100 -t 2 --seed 2 --steps 60 --ckpt-interval 30";
  const std::string T = " --teacher " + q(teacher) + " --teacher-tokenizer " + q(tok) + " --kd-alpha 1";
  r = run_cli("distill " + S + T + " -o " + q(dir + "/kd"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train " + S + " -o " + q(dir + "/plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto kd = metrics(dir + "/kd"), plain = metrics(dir + "/plain");
  ASSERT_EQ(kd.size(), 60u);
  EXPECT_LT(double(kd.back()["kd_loss"]), 0.8 * double(kd.front()["kd_loss"])) << "the student moves toward the teacher";
  // With alpha 1 the student sees no labels, only the teacher: it still learns the data.
  EXPECT_LT(double(kd.back()["val_loss"]), double(kd.front()["loss"]) - 0.5);
  EXPECT_FALSE(plain.back().contains("kd_loss"));
  // Resume: stopped at step 30, continued, the same final state.
  r = run_cli("distill " + S + T + " -o " + q(dir + "/kd2") + " --max-time 1e-9");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("distill --resume " + q(dir + "/kd2"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto a = train::load_checkpoint(train::checkpoint_path(dir + "/kd", 60));
  const auto b = train::load_checkpoint(train::checkpoint_path(dir + "/kd2", 60));
  EXPECT_TRUE(a.params == b.params && a.m == b.m) << "resume reproduces the uninterrupted run";
  // Bad input: no teacher, another vocabulary, --pack, a bad temperature.
  r = run_cli("distill " + S + " -o " + q(dir + "/x1"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--teacher MODEL is required"), std::string::npos) << r.err;
  r = run_cli("distill " + S + T + " --vocab 600 -o " + q(dir + "/x2"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("must share the tokenizer"), std::string::npos) << r.err;
  r = run_cli("distill " + S + T + " --kd-temp 0 -o " + q(dir + "/x3"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--kd-temp"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
