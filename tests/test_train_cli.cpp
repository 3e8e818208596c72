// Training from the command line: data prepare, train, SIGKILL + resume
// (bit-identical), export into the inference engine, and bad input.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "cli_util.h"
#include "core/error.h"
#include "formats/any_tokenizer.h"
#include "formats/llama2c.h"
#include "formats/load.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/trainer.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

// A tokenizer and a token dataset from the first 300 KB of tinyshakespeare, made once.
class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(test::shared_path("data/tinyshakespeare.txt"))) return;
    dir_ = test::temp_path("train_cli");
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ifstream in(test::shared_path("data/tinyshakespeare.txt"));
    std::string text(300000, '\0');
    in.read(text.data(), std::streamsize(text.size()));
    std::ofstream(dir_ + "/corpus.txt") << text;
    std::ofstream(dir_ + "/tiny.txt") << "To be, or not to be.";
    auto r = run_cli("tokenizer train --vocab-size 320 --special '<|endoftext|>' -o " + q(dir_ + "/tok.json") + " " +
                     q(dir_ + "/corpus.txt"));
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_cli("data prepare --tokenizer " + q(dir_ + "/tok.json") + " -o " + q(dir_ + "/data") + " " +
                q(dir_ + "/corpus.txt"));
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override { TESSERA_REQUIRE_SHARED("data/tinyshakespeare.txt"); }
  static std::string train_args(const std::string& out, int steps) {
    return "train --data " + q(dir_ + "/data") + " -o " + q(out) +
           " --dim 32 --layers 2 --heads 4 --kv-heads 2 --batch 4 --seq 32 --ckpt-interval 5 --eval-interval 10"
           " --eval-batches 2 --log-interval 50 -t 2 --seed 7 --lr 3e-3 --steps " +
           std::to_string(steps);
  }
  // (step, loss, grad_norm, lr, val_loss) of every metrics line, as the JSON text wrote them.
  static std::vector<std::string> trajectory(const std::string& run) {
    std::vector<std::string> r;
    std::ifstream in(run + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      std::string s = j["step"].dump() + " " + j["loss"].dump() + " " + j["grad_norm"].dump() + " " + j["lr"].dump();
      if (j.contains("val_loss")) s += " " + j["val_loss"].dump();
      r.push_back(s);
    }
    return r;
  }
  // Runs a bash script (written to a file, so it needs no quoting); returns system()'s status.
  static int bash(const std::string& script) {
    const std::string path = dir_ + "/script.sh";
    std::ofstream(path) << script << "\n";
    return std::system(("bash " + q(path)).c_str());
  }
  static inline std::string dir_;
};

}  // namespace

TEST_F(TrainCli, TrainsExportsAndTheEngineLoadsTheModel) {
  const std::string run = dir_ + "/run_basic";
  auto r = run_cli(train_args(run, 40));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("step     40/40"), std::string::npos) << r.err;
  for (const char* f : {"metrics.jsonl", "loss.svg", "run.json", "ckpt_00000040.bin"})
    EXPECT_TRUE(fs::exists(run + "/" + f)) << f;
  EXPECT_EQ(train::list_checkpoints(run).size(), 3u);  // --keep 3
  const auto traj = trajectory(run);
  ASSERT_EQ(traj.size(), 40u);
  // Learning happened: the last loss is well below the first (ln 320 = 5.77 at random init).
  std::ifstream in(run + "/metrics.jsonl");
  std::string l1, ln, line;
  std::getline(in, l1);
  while (std::getline(in, line)) ln = line;
  EXPECT_LT(nlohmann::json::parse(ln)["loss"].get<double>(), nlohmann::json::parse(l1)["loss"].get<double>() - 0.5);

  r = run_cli("export " + q(run) + " -o " + q(run + "/model.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("export " + q(run) + " -o " + q(run + "/hf") + " --type bf16");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(run + "/hf/tokenizer.json"));
  r = run_cli("generate -m " + q(run + "/model.gguf") + " -p 'ROMEO:' -n 10 --seed 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  r = run_cli("perplexity -m " + q(run + "/hf") + " -f " + q(dir_ + "/corpus.txt") + " -c 32");
  ASSERT_EQ(r.code, 0) << r.err;
}

TEST_F(TrainCli, SigkillAtARandomStepThenResumeGivesTheSameLossLog) {
  const std::string a = dir_ + "/run_a", b = dir_ + "/run_b";
  const int steps = 300;
  auto r = run_cli(train_args(a, steps));
  ASSERT_EQ(r.code, 0) << r.err;
  std::mt19937 rng(uint32_t(std::random_device{}()));
  const int ck = 5 * (2 + int(rng() % 10));        // wait for this checkpoint...
  const int delay_ms = int(rng() % 40);            // ...then kill a moment later
  const std::string script = std::string(TESSERA_CLI) + " " + train_args(b, steps) + " 2>/dev/null & pid=$!; " +
                             "while [ ! -f " + q(train::checkpoint_path(b, ck)) + " ]; do sleep 0.005; done; " +
                             "sleep " + std::to_string(delay_ms / 1000.0) + "; kill -9 $pid; wait $pid; exit 0";
  ASSERT_EQ(bash(script), 0);
  ASSERT_FALSE(fs::exists(train::checkpoint_path(b, steps))) << "the run finished before the kill; make it longer";
  r = run_cli("train --resume " + q(b));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming"), std::string::npos);
  EXPECT_EQ(trajectory(a), trajectory(b)) << "killed after checkpoint " << ck << " + " << delay_ms << " ms";
  // And the final weights and optimizer state are bit-identical.
  EXPECT_EQ(test::slurp(train::checkpoint_path(a, steps)), test::slurp(train::checkpoint_path(b, steps)));
}

// SIGTERM (or Ctrl-C's SIGINT) stops a run at the end of its step with a checkpoint of that step and exit
// status 130; resuming from it gives the uninterrupted run's loss log and final state bit for bit.
TEST_F(TrainCli, SigtermCheckpointsTheCurrentStepAndResumesBitIdentically) {
  const std::string a = dir_ + "/run_term_a", b = dir_ + "/run_term_b";
  const int steps = 200;
  auto r = run_cli(train_args(a, steps) + " --ckpt-interval 1000");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string rc_file = dir_ + "/term_rc";
  const std::string script = std::string(TESSERA_CLI) + " " + train_args(b, steps) + " --ckpt-interval 1000" +
                             " 2>/dev/null & pid=$!; while [ ! -s " + q(b + "/metrics.jsonl") +
                             " ]; do sleep 0.005; done; kill -TERM $pid; wait $pid; echo $? > " + q(rc_file);
  ASSERT_EQ(bash(script), 0);
  EXPECT_EQ(test::slurp(rc_file), "130\n");
  const auto ckpts = train::list_checkpoints(b);
  ASSERT_EQ(ckpts.size(), 1u) << "the stop writes one checkpoint (the interval is past the run's end)";
  ASSERT_FALSE(fs::exists(train::checkpoint_path(b, steps))) << "the run finished before the signal";
  r = run_cli("train --resume " + q(b));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trajectory(a), trajectory(b));
  EXPECT_EQ(test::slurp(train::checkpoint_path(a, steps)), test::slurp(train::checkpoint_path(b, steps)));
}

// --resume continues the run as run.json describes it: flags that would change it are errors, a --steps
// that does not extend it is an error, and an extension is recorded so that a later --resume keeps it.
TEST_F(TrainCli, ResumeKeepsTheRunsOptionsAndRecordsAnExtension) {
  const std::string c = dir_ + "/run_ext";
  auto r = run_cli(train_args(c, 10));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(c) + " --steps 15 --dim 64");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--dim cannot be changed when resuming"), std::string::npos) << r.err;
  r = run_cli("train --resume " + q(c) + " --steps 5");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("already at step 10"), std::string::npos) << r.err;
  r = run_cli("train --resume " + q(c));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("the run is complete (step 10)"), std::string::npos) << r.err;
  r = run_cli("train --resume " + q(c) + " --steps 15");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(train::checkpoint_path(c, 15)));
  EXPECT_EQ(nlohmann::json::parse(test::slurp(c + "/run.json"))["steps"], 15);
  r = run_cli("train --resume " + q(c));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("the run is complete (step 15)"), std::string::npos) << r.err;
}

// A run directory in use (its .lock held, as a running `tessera train` holds it) is refused, for a resume
// and for a new run alike; once the holder is gone the resume works.
TEST_F(TrainCli, ARunDirectoryInUseIsRefused) {
  const std::string c = dir_ + "/run_locked";
  auto r = run_cli(train_args(c, 5));
  ASSERT_EQ(r.code, 0) << r.err;
  const int fd = ::open((c + "/.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  r = run_cli("train --resume " + q(c) + " --steps 8");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("another 'tessera train' is using this run directory"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(train::checkpoint_path(c, 8)));
  ::close(fd);
  r = run_cli("train --resume " + q(c) + " --steps 8");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(train::checkpoint_path(c, 8)));
  // A new run into a directory whose lock is held (another run starting there) is refused before it writes.
  const std::string n = dir_ + "/run_locked_new";
  fs::create_directories(n);
  const int fd2 = ::open((n + "/.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd2, 0);
  ASSERT_EQ(::flock(fd2, LOCK_EX | LOCK_NB), 0);
  r = run_cli(train_args(n, 3));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("another 'tessera train' is using this run directory"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(n + "/run.json"));
  ::close(fd2);
}

TEST_F(TrainCli, BadConfigsAndDataGetClearErrors) {
  auto r = run_cli(train_args(dir_ + "/bad1", 5) + " --heads 5");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--heads (5) must divide --dim (32)"), std::string::npos) << r.err;
  r = run_cli(train_args(dir_ + "/bad2", 5) + " --dim -4");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
  r = run_cli(train_args(dir_ + "/bad3", 0));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--steps must be positive"), std::string::npos) << r.err;
  r = run_cli("train --data " + q(dir_ + "/nowhere") + " -o " + q(dir_ + "/bad4") + " --steps 3");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("meta.json"), std::string::npos) << r.err;
  // Activations that cannot fit in memory (2 layers x 3e10 tokens x a few hundred floats: ~100 TiB)
  // are refused up front with the flags to change, not std::bad_alloc.
  r = run_cli(train_args(dir_ + "/bad6", 3) + " --seq 150000 --batch 200000");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("lower --batch or --seq"), std::string::npos) << r.err;
  // An empty corpus: an error naming the file, and no dataset directory.
  std::ofstream(dir_ + "/empty.txt").flush();
  r = run_cli("data prepare --tokenizer " + q(dir_ + "/tok.json") + " -o " + q(dir_ + "/emptydata") + " " +
              q(dir_ + "/empty.txt"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("empty.txt: no text to tokenize"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ + "/emptydata"));
  r = run_cli("tokenizer train --vocab-size 300 -o " + q(dir_ + "/emptytok.json") + " " + q(dir_ + "/empty.txt"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("empty.txt: no text to train on"), std::string::npos) << r.err;
  // A vocabulary larger than the text can give: written, with a note saying how many tokens it has.
  r = run_cli("tokenizer train --vocab-size 5000 -o " + q(dir_ + "/tinytok.json") + " " + q(dir_ + "/tiny.txt"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("fewer than --vocab-size 5000"), std::string::npos) << r.err;
  // A corpus smaller than one sequence.
  r = run_cli("data prepare --tokenizer " + q(dir_ + "/tok.json") + " -o " + q(dir_ + "/tinydata") + " " +
              q(dir_ + "/tiny.txt"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --data " + q(dir_ + "/tinydata") + " -o " + q(dir_ + "/bad5") + " --dim 32 --layers 1 --heads 4 --seq 32 --steps 3");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("fewer than one sequence"), std::string::npos) << r.err;
}

TEST_F(TrainCli, ExistingRunCorruptCheckpointAndFullDisk) {
  const std::string run = dir_ + "/run_c";
  auto r = run_cli(train_args(run, 5));
  ASSERT_EQ(r.code, 0) << r.err;
  // A second run into the same directory would overwrite it: refused.
  r = run_cli(train_args(run, 5));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;
  // The disk fills while checkpointing step 10: a clear error, the step-5 checkpoint survives.
  const std::string ck5 = train::checkpoint_path(run, 5);
  const std::string before = test::slurp(ck5);
  const std::string script = "trap '' XFSZ; ulimit -f 64; exec " + std::string(TESSERA_CLI) + " train --resume " +
                             q(run) + " --steps 10 2>" + q(run + "/err.txt");
  const int st = bash(script);
  EXPECT_NE(st, 0);
  const std::string err = test::slurp(run + "/err.txt");
  EXPECT_NE(err.find("checkpoint at step 10 failed"), std::string::npos) << err;
  EXPECT_NE(err.find("is intact"), std::string::npos) << err;
  EXPECT_EQ(test::slurp(ck5), before);
  for (const auto& e : fs::directory_iterator(run))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "leftover " << e.path();
  // A corrupt checkpoint is named on resume.
  {
    std::fstream f(ck5, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  r = run_cli("train --resume " + q(run));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("corrupt"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ckpt_00000005.bin"), std::string::npos) << r.err;
}

TEST_F(TrainCli, TomlConfigFileGivesTheOptions) {
  const std::string run = dir_ + "/run_toml", cfg = dir_ + "/run.toml";
  std::ofstream(cfg) << "data = \"" << dir_ << "/data\"\nout = \"" << run
                     << "\"\ndim = 32\nlayers = 1\nheads = 4\nbatch = 2\nseq = 16\nsteps = 7\nqk-norm = true\n";
  auto r = run_cli("train --config " + q(cfg));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(train::checkpoint_path(run, 7)));
  const auto ck = train::load_checkpoint(train::checkpoint_path(run, 7));
  EXPECT_EQ(ck.cfg.dim, 32);
  EXPECT_EQ(ck.cfg.n_layers, 1);
  EXPECT_TRUE(ck.cfg.qk_norm);
  // A misspelt key is an error (exit 1), not silently ignored.
  const std::string bad = dir_ + "/typo.toml";
  std::ofstream(bad) << "data = \"" << dir_ << "/data\"\nout = \"" << dir_ << "/run_typo\"\ndimm = 32\nsteps = 3\n";
  r = run_cli("train --config " + q(bad));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("error: --config"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("dimm"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ + "/run_typo"));
}

TEST_F(TrainCli, NonFiniteLossStopsOrIsSkipped) {
  auto r = run_cli(train_args(dir_ + "/nan1", 20) + " --lr 1e30 --clip 0 --warmup 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("non-finite at step"), std::string::npos) << r.err;
  r = run_cli(train_args(dir_ + "/nan2", 6) + " --lr 1e30 --clip 0 --warmup 0 --skip-nonfinite");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("batch skipped"), std::string::npos) << r.err;
}

// Continued training of stories260K on TinyStories text lowers its validation loss.
TEST(TrainLib, ContinuedTrainingOfStories260KLowersValLoss) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  const std::string dir = test::temp_path("stories_ft");
  fs::remove_all(dir);
  const Tokenizer tok = load_any_tokenizer(test::shared_path("models/tok512.bin"));
  train::PrepareOptions po;
  po.val_fraction = 0.1;
  train::prepare_data(tok, test::shared_path("models/tok512.bin"), {test::shared_path("data/tinystories_val.txt")},
                      dir + "/data", po);
  train::TrainOptions o;
  o.data_dir = dir + "/data", o.out_dir = dir + "/run";
  o.init_model = test::shared_path("models/stories260K.bin");
  o.init_tokenizer = test::shared_path("models/tok512.bin");
  o.batch = 8, o.seq = 128, o.steps = 30, o.eval_interval = 30, o.eval_batches = 4, o.ckpt_interval = 30;
  o.sched.lr = 5e-4f, o.sched.min_lr = 5e-5f, o.sched.warmup = 0, o.sched.total = 30;
  // Validation loss before: the same evaluation on the initial weights.
  const Weights w = load_llama2c(o.init_model);
  const train::Layout L(w.cfg);
  std::vector<float> p(L.total);
  train::params_from_weights(L, w, p.data());
  train::Transformer<float> m(L, o.batch, o.seq, o.mo);
  const auto data = train::open_dataset(o.data_dir);
  const double before = train::evaluate(m, p.data(), *data.val, o.eval_batches * o.batch);
  std::FILE* devnull = std::fopen("/dev/null", "w");
  const auto s = train::run_training(o, false, devnull);
  std::fclose(devnull);
  EXPECT_LT(s.val_loss, before - 0.01) << "before " << before << " after " << s.val_loss;
  fs::remove_all(dir);
}

// Tensors start on 64-byte boundaries in memory; the checkpoint file stores
// them back to back (n_params floats per array), and loading restores the
// padded layout with zero padding.
TEST(TrainLib, CheckpointStoresTensorsWithoutTheAlignmentPadding) {
  ModelConfig c;
  c.arch = Arch::Llama, c.dim = 24, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 6;
  c.hidden_dim = 28, c.vocab_size = 37, c.max_seq_len = 16;
  const train::Layout L(c);
  for (const auto& t : L.tensors) EXPECT_EQ(t.offset % train::Layout::kAlign, 0u) << t.name;
  ASSERT_GT(L.total, L.n_params);  // odd sizes: there is padding
  train::Checkpoint ck;
  ck.cfg = c, ck.step = 3;
  ck.params.assign(L.total, 0.f), ck.m.assign(L.total, 0.f), ck.v.assign(L.total, 0.f);
  float x = 1.f;
  for (const auto& t : L.tensors)
    for (size_t i = 0; i < t.numel; ++i, x += 1.f)
      ck.params[t.offset + i] = x, ck.m[t.offset + i] = -x, ck.v[t.offset + i] = 2 * x;
  const std::string path = test::temp_path("ckpt_padding.bin");
  train::save_checkpoint(path, ck);
  const auto sz = fs::file_size(path);
  EXPECT_LT(sz, 3 * L.n_params * sizeof(float) + 3 * 64 + 1024);  // header, three packed arrays, checksum
  EXPECT_GE(sz, 3 * L.n_params * sizeof(float));
  const auto back = train::load_checkpoint(path);
  EXPECT_EQ(back.params, ck.params);
  EXPECT_EQ(back.m, ck.m);
  EXPECT_EQ(back.v, ck.v);
  fs::remove(path);
}

// A run written before the Trainer / KV-cache redesign (tests/fixtures/checkpoint_v1:
// its token data, run.json and the checkpoint of step 4 of 8, plus the metrics the
// old binary logged for all 8 steps) resumes and follows the old trajectory.
TEST(TrainLib, CheckpointFromBeforeTheRedesignResumes) {
  const std::string fixture = std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/checkpoint_v1";
  ASSERT_TRUE(fs::exists(fixture + "/run/ckpt_00000004.bin")) << fixture;
  const std::string dir = test::temp_path("ckpt_v1");
  fs::remove_all(dir);
  fs::copy(fixture, dir, fs::copy_options::recursive);
  // run.json names its data directory as the old run saw it: point it at the copy.
  const std::string rj = dir + "/run/run.json";
  auto j = nlohmann::json::parse(test::slurp(rj));
  j["data_dir"] = dir + "/data";
  std::ofstream(rj) << j.dump(2);
  const auto r = run_cli("train --resume " + q(dir + "/run"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("(step 4)"), std::string::npos) << r.err;
  std::vector<nlohmann::json> want, got;
  std::istringstream a(test::slurp(fixture + "/expected_metrics.jsonl")), b(test::slurp(dir + "/run/metrics.jsonl"));
  for (std::string line; std::getline(a, line);) want.push_back(nlohmann::json::parse(line));
  for (std::string line; std::getline(b, line);) got.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(want.size(), 8u);
  ASSERT_EQ(got.size(), 4u);  // steps 5..8 (the fixture carries no metrics of steps 1..4)
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& w = want[4 + i];
    EXPECT_EQ(got[i]["step"], w["step"]);
    // Same data, same weights and moments: the same losses (to rounding, should the CPU's kernels differ).
    EXPECT_NEAR(got[i]["loss"].get<double>(), w["loss"].get<double>(), 1e-4) << "step " << w["step"];
    EXPECT_NEAR(got[i]["grad_norm"].get<double>(), w["grad_norm"].get<double>(), 1e-3) << "step " << w["step"];
  }
  fs::remove_all(dir);
}

// The flat layout splits into contiguous, aligned shards that cover it in rank order.
TEST(TrainLib, LayoutShardsCoverTheFlatBuffer) {
  ModelConfig c;
  c.arch = Arch::Llama, c.dim = 24, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 6;
  c.hidden_dim = 28, c.vocab_size = 37, c.max_seq_len = 16;
  const train::Layout L(c);
  for (int n : {1, 2, 3, 7, 64}) {
    size_t at = 0;
    for (int r = 0; r < n; ++r) {
      const auto s = L.shard(r, n);
      EXPECT_EQ(s.begin, at) << r << "/" << n;
      EXPECT_LE(s.begin, s.end);
      EXPECT_TRUE(s.begin % train::Layout::kAlign == 0) << r << "/" << n;
      at = s.end;
    }
    EXPECT_EQ(at, L.total) << n;
  }
  EXPECT_EQ(L.shard(0, 1).end, L.total);
  EXPECT_THROW(L.shard(2, 2), Error);
}

// Stepping a Trainer by hand (train_step, evaluate, save) is what run() does.
TEST_F(TrainCli, TrainerStepsByHandMatchRun) {
  train::TrainOptions o;
  o.data_dir = dir_ + "/data";
  o.model.arch = Arch::Llama, o.model.dim = 32, o.model.n_layers = 1, o.model.n_heads = 4, o.model.n_kv_heads = 2;
  o.model.head_dim = 8, o.model.hidden_dim = 64, o.model.vocab_size = 320, o.model.max_seq_len = 32;
  o.batch = 2, o.seq = 32, o.steps = 4, o.eval_interval = 4, o.eval_batches = 1, o.ckpt_interval = 4, o.threads = 2;
  o.sched.total = 4;
  std::FILE* devnull = std::fopen("/dev/null", "w");
  o.out_dir = dir_ + "/by_run";
  const auto s = train::run_training(o, false, devnull);
  o.out_dir = dir_ + "/by_hand";
  train::LocalCommunicator comm;
  train::Trainer t(o, false, devnull, comm);
  double loss = 0;
  while (t.step() < o.steps) loss = t.train_step().loss;
  EXPECT_EQ(loss, s.last_loss);
  EXPECT_EQ(t.evaluate(), s.val_loss);
  const std::string path = t.save();
  EXPECT_EQ(fs::path(path).filename(), "ckpt_00000004.bin");
  const auto a = train::load_checkpoint(path), b = train::load_checkpoint(s.checkpoint);
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.m, b.m);
  std::fclose(devnull);
}

// --sliding-window / --sliding-window-layers / --ffn-act / --norm-placement: the model is what was asked, the
// run resumes with it, export keeps it and info says it.
TEST_F(TrainCli, SlidingWindowLayersTrainResumeAndExport) {
  const std::string run = dir_ + "/sliding";
  auto r = run_cli(train_args(run, 6) + " --sliding-window 8 --sliding-window-layers even --ffn-act geglu --norm-placement post");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(run) + " --steps 8");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto ck = train::load_checkpoint(train::latest_checkpoint(run));
  ASSERT_EQ(ck.cfg.layer_cfg.size(), 2u);
  EXPECT_EQ(ck.cfg.layer(0).attn, AttnKind::SlidingWindow);
  EXPECT_EQ(ck.cfg.layer(0).window, 8);
  EXPECT_EQ(ck.cfg.layer(1).attn, AttnKind::Full);
  r = run_cli("export " + q(run) + " -o " + q(run + "/m.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("info -m " + q(run + "/m.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("sliding window on layers 0(8)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(GeGLU)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("post-norm"), std::string::npos) << r.out;
  EXPECT_EQ(ck.cfg.norm_placement, NormPlacement::Post);
  EXPECT_EQ(ck.cfg.ffn_act, FfnAct::GeGLU);
  r = run_cli(train_args(dir_ + "/sliding_bad", 2) + " --sliding-window 8 --sliding-window-layers 5");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("sliding-window layer 5 does not exist (2 layers)"), std::string::npos) << r.err;
}

// A mixture-of-experts model from the command line: trains (the loss falls), logs the router
// losses and each expert's tokens, resumes bit-identically, exports to GGUF, and the engine
// loads the export with the same logits as the training parameters.
TEST_F(TrainCli, MixtureOfExpertsTrainsResumesAndExports) {
  const std::string a = dir_ + "/run_moe_a", b = dir_ + "/run_moe_b";
  const std::string moe = " --moe-experts 4 --moe-top-k 2 --moe-expert-hidden 48 --moe-shared 1 --moe-first-dense 1"
                          " --moe-balance 0.01 --moe-router-z 0.001 --schedule constant --warmup 2";
  auto r = run_cli(train_args(a, 30) + moe);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("experts: 4 per MoE layer (layers 1..1), 2 active, width 48, shared 48"), std::string::npos)
      << r.err;
  std::ifstream in(a + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 30u);
  EXPECT_LT(lines.back()["loss"].get<double>(), lines.front()["loss"].get<double>() - 0.5);
  const auto& load = lines.back()["expert_tokens"];
  ASSERT_EQ(load.size(), 1u);  // one MoE layer
  int64_t total = 0;
  for (const auto& n : load[0]) total += n.get<int64_t>();
  EXPECT_EQ(total, 4 * 32 * 2);  // batch x seq x top-k
  EXPECT_GT(lines.back()["moe_balance"].get<double>(), 0.9);  // E sum_i f_i P_i: 1 when perfectly balanced
  EXPECT_GT(lines.back()["moe_router_z"].get<double>(), 0.0);
  // Stopped at step 20 (a --steps 20 run on a constant schedule), extended to 30: the same trajectory.
  r = run_cli(train_args(b, 20) + moe);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(b) + " --steps 30");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trajectory(a), trajectory(b));
  // Plots: the expert load of the run, and two runs' losses against time in one SVG.
  const std::string svg = dir_ + "/moe_load.svg", cmp = dir_ + "/moe_cmp.svg";
  r = run_cli("plot " + q(a) + " --experts -o " + q(svg));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string load_svg = test::slurp(svg);
  EXPECT_NE(load_svg.find("share of routed slots"), std::string::npos);
  EXPECT_NE(load_svg.find("run_moe_a expert 3"), std::string::npos);
  r = run_cli("plot first=" + q(a) + " second=" + q(b) + " --x time -o " + q(cmp));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string cmp_svg = test::slurp(cmp);
  EXPECT_NE(cmp_svg.find("first val"), std::string::npos);
  EXPECT_NE(cmp_svg.find(">seconds<"), std::string::npos);
  r = run_cli("plot " + q(dir_ + "/nowhere") + " -o " + q(cmp));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("metrics.jsonl: cannot open"), std::string::npos) << r.err;
  // Export and load with the engine.
  const std::string gguf = dir_ + "/moe.gguf";
  r = run_cli("export " + q(a) + " -o " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("info -m " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("router:         softmax -> top-2 -> renormalise"), std::string::npos) << r.out;
  r = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 8 --temp 0 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
}

// Latent attention (--attn mla) from the command line: the log names it, the loss falls, the
// run resumes bit-identically, and the export (GGUF deepseek2 and DeepseekV2ForCausalLM)
// loads in the engine, which says its KV cache holds the latent; a LoRA fine-tune of it
// runs on the output projection and feed-forward. Bad combinations are refused by name.
TEST_F(TrainCli, LatentAttentionTrainsResumesAndExports) {
  const std::string a = dir_ + "/run_mla_a", b = dir_ + "/run_mla_b";
  auto args = [&](const std::string& run, int steps) {
    std::string s = train_args(run, steps);
    s.replace(s.find(" --kv-heads 2"), 13, "");
    return s + " --attn mla --kv-lora-rank 24 --q-lora-rank 16 --rope-head-dim 4 --schedule constant --warmup 2";
  };
  auto r = run_cli(args(a, 24));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("attention: latent (MLA): kv LoRA rank 24, q LoRA rank 16, key 12 (8 + 4 RoPE), value 8"),
            std::string::npos)
      << r.err;
  std::ifstream in(a + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 24u);
  EXPECT_LT(lines.back()["loss"].get<double>(), lines.front()["loss"].get<double>() - 0.5);
  r = run_cli(args(b, 20));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(b) + " --steps 24");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trajectory(a), trajectory(b));
  const auto ck = train::load_checkpoint(train::latest_checkpoint(a));
  EXPECT_EQ(ck.cfg.mla_kv_lora, 24);
  EXPECT_EQ(ck.cfg.mla_q_lora, 16);
  EXPECT_EQ(ck.cfg.mla_rope, 4);
  EXPECT_EQ(ck.cfg.mla_v_dim, 8);
  const std::string gguf = dir_ + "/mla.gguf", hf = dir_ + "/mla_hf";
  for (const std::string& out : {gguf, hf}) {
    r = run_cli("export " + q(a) + " -o " + q(out));
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_cli("info -m " + q(out));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("latent (MLA): q LoRA rank 16, kv LoRA rank 24, key 12 (8 + 4 RoPE), value 8"),
              std::string::npos)
        << r.out;
  }
  const auto g1 = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 12 --temp 0 -t 2");
  const auto g2 = run_cli("generate -m " + q(hf) + " -p 'To be' -n 12 --temp 0 -t 2");
  ASSERT_EQ(g1.code, 0) << g1.err;
  EXPECT_FALSE(g1.out.empty());
  EXPECT_EQ(g1.out, g2.out);
  const std::string ft = dir_ + "/run_mla_lora";
  r = run_cli("finetune --init " + q(gguf) + " --data " + q(dir_ + "/data") + " -o " + q(ft) +
              " --batch 4 --seq 32 --steps 4 --log-interval 50 -t 2 --lora-rank 4");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("dropout 0 on o,gate,up,down:"), std::string::npos) << r.err;
  r = run_cli(train_args(dir_ + "/mla_bad", 2) + " --attn mla");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--attn mla: every head has its own key and value"), std::string::npos) << r.err;
  r = run_cli(train_args(dir_ + "/mla_bad", 2) + " --kv-lora-rank 8");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("add --attn mla"), std::string::npos) << r.err;
}

// Sparse attention patterns from the command line: BigBird's (a dilated window, global
// positions, random keys) trains, resumes bit-identically, exports to GGUF with its pattern
// (info states the receptive field) and generates; safetensors and bad combinations are refused.
TEST_F(TrainCli, SparseAttentionPatterns) {
  const std::string a = dir_ + "/run_sparse_a", b = dir_ + "/run_sparse_b";
  const std::string pat = " --attn-pattern bigbird --window 4 --dilation 2 --global-tokens 2 --random-keys 2"
                          " --schedule constant --warmup 2";
  auto r = run_cli(train_args(a, 20) + pat);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli(train_args(b, 10) + pat);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(b) + " --steps 20");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trajectory(a), trajectory(b));
  const auto ck = train::load_checkpoint(train::latest_checkpoint(a));
  ASSERT_EQ(ck.cfg.layer_cfg.size(), 2u);
  EXPECT_EQ(ck.cfg.layer(1).attn, AttnKind::Sparse);
  EXPECT_EQ(ck.cfg.layer(1).random, 2);
  EXPECT_NE(ck.cfg.layer(0).seed, ck.cfg.layer(1).seed);
  const std::string gguf = dir_ + "/sparse.gguf";
  r = run_cli("export " + q(a) + " -o " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("info -m " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("sparse on layers 0..1: window 4 x dilation 2 (receptive field 8 positions), global positions "
                       "0..1, 2 random keys per block of 16 queries"),
            std::string::npos)
      << r.out;
  r = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 40 --temp 0 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  // Longformer's per-head dilations: one value per query head, saved with the model.
  const std::string ph = dir_ + "/run_sparse_heads";
  r = run_cli(train_args(ph, 10) + " --attn-pattern dilated --window 4 --dilation 1,2,4,2 --schedule constant --warmup 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(train::load_checkpoint(train::latest_checkpoint(ph)).cfg.layer(0).head_dilation,
            (std::vector<int32_t>{1, 2, 4, 2}));
  r = run_cli("export " + q(ph) + " -o " + q(ph + ".gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("info -m " + q(ph + ".gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("sparse on layers 0..1: window 4 x dilation (per head 1,2,4,2) (receptive field 16 positions)"),
            std::string::npos)
      << r.out;
  r = run_cli("generate -m " + q(ph + ".gguf") + " -p 'To be' -n 20 --temp 0 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("export " + q(a) + " -o " + q(dir_ + "/sparse_hf"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("write GGUF instead"), std::string::npos) << r.err;
  const std::pair<std::string, std::string> bad[] = {
      {" --attn-pattern dilated --window 4", "--attn-pattern dilated needs --dilation of at least 2"},
      {" --attn-pattern longformer --window 4 --global-tokens 1 --random-keys 2", "--attn-pattern longformer takes no --random-keys"},
      {" --window 4", "need --attn-pattern"},
      {" --attn-pattern bigbird --window 4", "--attn-pattern bigbird needs --random-keys"},
      {" --attn-pattern dilated --window 4 --dilation 2 --attn-pattern-layers 7", "sparse-attention layer 7 does not exist"},
      {" --attn-pattern dilated --window 4 --dilation 1,2", "2 values for 4 query heads"},
      {" --attn-pattern dilated --window 4 --dilation 1,2,x,4", "'x' is not a dilation"},
      {" --attn-pattern dilated --window 4 --dilation 1,1,1,1", "--attn-pattern dilated needs --dilation of at least 2"}};
  for (const auto& [args, msg] : bad) {
    r = run_cli(train_args(dir_ + "/sparse_bad", 2) + args);
    EXPECT_EQ(r.code, 1) << args;
    EXPECT_NE(r.err.find(msg), std::string::npos) << args << ": " << r.err;
  }
}

// Hash routing from the command line (model/moe_hash.h): hash-balanced builds its table
// from the training tokens (the log reports expert loads within 10%), trains without a
// router, resumes bit-identically (the table is in the checkpoint), exports with the
// rule and table, and runs; the router losses and a dense model are refused with it.
TEST_F(TrainCli, HashRoutedMixtureOfExperts) {
  const std::string a = dir_ + "/run_hash_a", b = dir_ + "/run_hash_b";
  const std::string moe = " --moe-experts 4 --moe-top-k 2 --moe-expert-hidden 48 --moe-routing hash-balanced"
                          " --schedule constant --warmup 2";
  auto r = run_cli(train_args(a, 12) + moe);
  ASSERT_EQ(r.code, 0) << r.err;
  const size_t at = r.err.find("hash-balanced routing: 320 token ids over 4 experts");
  ASSERT_NE(at, std::string::npos) << r.err;
  const size_t mm = r.err.find("(max/min ", at);
  ASSERT_NE(mm, std::string::npos) << r.err;
  EXPECT_LE(std::stod(r.err.substr(mm + 9)), 1.10) << r.err.substr(at, 200);
  EXPECT_NE(r.err.find("router hash-balanced -> 2 experts -> weights 0.5 each"), std::string::npos) << r.err;
  std::ifstream in(a + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 12u);
  EXPECT_LT(lines.back()["loss"].get<double>(), lines.front()["loss"].get<double>());
  EXPECT_FALSE(lines.back().contains("moe_balance"));
  ASSERT_EQ(lines.back()["expert_tokens"].size(), 2u);
  r = run_cli(train_args(b, 10) + moe);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(b) + " --steps 12");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trajectory(a), trajectory(b));
  const std::string gguf = dir_ + "/hash.gguf";
  r = run_cli("export " + q(a) + " -o " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("info -m " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("router:         hash-balanced -> 2 experts -> weights 0.5 each"), std::string::npos) << r.out;
  r = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 8 --temp 0 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli(train_args(dir_ + "/run_hash_bad", 2) + moe + " --moe-balance 0.01");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("without a router to balance"), std::string::npos) << r.err;
  r = run_cli(train_args(dir_ + "/run_hash_bad2", 2) + " --moe-routing hash-random");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("needs a mixture-of-experts model"), std::string::npos) << r.err;
}

// DeepSeek-V3's router from the command line: sigmoid with a selection bias that moves
// by --moe-bias-rate after every step (auxiliary-loss-free balancing); resumes
// bit-identically and exports the bias, whose values are whole steps of the rate.
TEST_F(TrainCli, SelectionBiasBalancing) {
  const std::string a = dir_ + "/run_bias_a", b = dir_ + "/run_bias_b";
  const std::string moe = " --moe-experts 4 --moe-top-k 2 --moe-expert-hidden 48 --moe-gate sigmoid --moe-score-bias"
                          " --moe-bias-rate 0.01 --schedule constant --warmup 2";
  auto r = run_cli(train_args(a, 12) + moe);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("router sigmoid -> top-2 by score + bias -> renormalise"), std::string::npos) << r.err;
  r = run_cli(train_args(b, 10) + moe);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(b) + " --steps 12");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trajectory(a), trajectory(b));
  const std::string gguf = dir_ + "/bias.gguf";
  r = run_cli("export " + q(a) + " -o " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  const LoadedModel lm = load_model(gguf);
  ASSERT_TRUE(lm.weights.cfg.moe_score_bias);
  double moved = 0;
  for (const auto& L : lm.weights.layers) {
    ASSERT_EQ(L.router_bias.numel(), 4);
    for (int64_t e = 0; e < 4; ++e) {
      const double v = L.router_bias.f32()[e] / 0.01;
      EXPECT_NEAR(v, std::round(v), 1e-3) << "whole steps of the rate";
      EXPECT_LE(std::abs(v), 12.5);
      moved += std::abs(v);
    }
  }
  EXPECT_GT(moved, 0.0);
  r = run_cli(train_args(dir_ + "/run_bias_bad", 2) + moe + " --moe-bias-rate -1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--moe-bias-rate must be >= 0"), std::string::npos) << r.err;
}

// Multi-token prediction from the command line: two modules train beside the model (their
// loss in metrics.jsonl falls), resume bit-identically, export to GGUF (info names them),
// the export generates and quantizes; an --init model without modules gets fresh ones.
TEST_F(TrainCli, MultiTokenPredictionModules) {
  const std::string a = dir_ + "/run_mtp_a", b = dir_ + "/run_mtp_b";
  const std::string mtp = " --mtp 2 --mtp-weight 0.5 --schedule constant --warmup 2";
  auto r = run_cli(train_args(a, 12) + mtp);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("multi-token prediction: 2 module(s) predicting up to 3 tokens ahead, loss weight 0.5 / 2"),
            std::string::npos)
      << r.err;
  std::ifstream in(a + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 12u);
  ASSERT_TRUE(lines.back().contains("mtp_loss"));
  EXPECT_LT(lines.back()["mtp_loss"].get<double>(), lines.front()["mtp_loss"].get<double>());
  r = run_cli(train_args(b, 10) + mtp);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --resume " + q(b) + " --steps 12");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(trajectory(a), trajectory(b));
  const std::string gguf = dir_ + "/mtp.gguf", q8 = dir_ + "/mtp_q8.gguf";
  r = run_cli("export " + q(a) + " -o " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("info -m " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("mtp modules:    2 (multi-token prediction: blocks 2..3"), std::string::npos) << r.out;
  r = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 8 --temp 0 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  // Self-speculative decoding with the first module: at temperature 0 the model's own greedy text.
  r = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 24 --temp 0 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string greedy = r.out;
  r = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 24 --temp 0 -t 2 --draft-mtp");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, greedy);
  EXPECT_NE(r.err.find("speculative (MTP modules)"), std::string::npos) << r.err;
  r = run_cli("generate -m " + q(gguf) + " -p 'To be' -n 24 --temp 0.8 -s 3 -t 2 --draft-mtp");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("convert " + q(gguf) + " " + q(q8) + " --type q8_0");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(load_model(q8).weights.cfg.mtp_depth, 2);
  // A dense export plus --mtp 1: the model's tensors from the file, the module fresh.
  const std::string dense = dir_ + "/run_mtp_dense", dense_gguf = dir_ + "/mtp_dense.gguf";
  r = run_cli(train_args(dense, 4));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("export " + q(dense) + " -o " + q(dense_gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --init " + q(dense_gguf) + " --data " + q(dir_ + "/data") + " -o " + q(dir_ + "/run_mtp_init") +
              " --mtp 1 --batch 4 --seq 32 --steps 3 --eval-interval 3 --eval-batches 2 -t 2 --seed 7 --lr 1e-3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("multi-token prediction: 1 module(s)"), std::string::npos) << r.err;
  r = run_cli(train_args(dir_ + "/run_mtp_bad", 2) + " --mtp 1 --pack");
  EXPECT_NE(r.code, 0);
}

// Sparse upcycling from the command line: a dense run's export becomes a 4-expert model that trains;
// a top-k above the expert count is refused (the exactness at step 0 is MoE.UpcyclingStartsAsTheDenseModel).
TEST_F(TrainCli, UpcyclingADenseModel) {
  const std::string dense = dir_ + "/run_up_dense", up = dir_ + "/run_up_moe", gguf = dir_ + "/up_dense.gguf";
  auto r = run_cli(train_args(dense, 10));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("export " + q(dense) + " -o " + q(gguf));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("plot " + q(dense) + " --experts -o " + q(dir_ + "/dense_load.svg"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not a mixture-of-experts run"), std::string::npos) << r.err;
  r = run_cli("train --init " + q(gguf) + " --data " + q(dir_ + "/data") + " -o " + q(up) +
              " --upcycle-experts 4 --moe-top-k 2 --batch 4 --seq 32 --steps 5 --eval-interval 5 --eval-batches 2"
              " -t 2 --seed 7 --lr 1e-3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("upcycled"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("experts: 4 per MoE layer"), std::string::npos) << r.err;
  r = run_cli("train --init " + q(gguf) + " --data " + q(dir_ + "/data") + " -o " + q(dir_ + "/run_up_bad") +
              " --upcycle-experts 4 --moe-top-k 5 --steps 5");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--moe-top-k must be in [1, 4]"), std::string::npos) << r.err;
}
