// Options shared by the model-running subcommands, and their set-up.
#pragma once
#include <CLI/CLI.hpp>
#include <csignal>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mmap.h"

#include "formats/load.h"
#include "infer/chat_template.h"
#include "infer/sampler.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/tensor_parallel.h"
#include "train/communicator.h"

namespace tessera::cli {

struct ModelArgs {
  std::string model;
  std::string tokenizer;
  int64_t ctx = -1;       // -1 (unset): the model's trained context, at most kDefaultCtx; 0: the model's
  bool cap_ctx = false;   // cap ctx at the model's trained context (perplexity windows)
  int threads = 0;        // 0 = all cores
  int64_t batch = 256;    // prefill chunk
  std::string kv_type = "f32";
  bool no_repack = false;  // keep matrices in their file layout (no load-time repacking)
  std::string load_type;    // "int8": LLM.int8() at load (kernels/int8.h); "": as stored
  float int8_threshold = 6.f;
  bool verbose = false;
  bool f16_as_bf16 = false;  // F16 matrices rounded to BF16 at load (prefill at the bf16 GEMM's rate)
  bool own_cache = true;     // plan the single-sequence KV cache (false: the caller makes its own pool)
  bool mtp_draft = false;    // run the first MTP module beside the model (RunOptions::mtp_draft)
  std::vector<std::string> lora;  // --lora FILE[:SCALE]: adapters merged into the weights at load
  std::string prefix_adapter;     // --prefix-adapter DIR: a prefix-tuning adapter (PEFT) in the KV cache
  std::string bottleneck_adapter;  // --bottleneck-adapter FILE: bottleneck adapters run in every block
  int tp = 1;  // --tp under mpirun: this rank's slice of the blocks (model/tensor_parallel.h)
};

void add_model_options(CLI::App& app, ModelArgs& a, bool need_ctx = true);
// --temp --top-k --top-p --min-p --repeat-penalty --repeat-last-n --presence-penalty
// --frequency-penalty -s/--seed (seed: -1 random), shared by generate and chat.
void add_sampling_options(CLI::App& app, SamplerParams& sp, int64_t& seed);
// A check for options that must be > 0, with a short message ("must be positive, got 0")
// instead of CLI::PositiveNumber's range up to DBL_MAX.
CLI::Validator positive();
// --type of convert / export: a llama.cpp file type (core/quant_mix.h).
CLI::Validator weight_type_validator();
// SIGINT / SIGTERM handlers that set the flag stop_requested() points to
// (one-shot: a second signal kills; not installed where the signal is
// ignored). Training polls it after every step (train::run_training).
void install_stop_handlers();
const volatile std::sig_atomic_t* stop_requested();
// SIGINT sets the same flag every time (not one-shot), without restarting an
// interrupted read: `tessera chat` stops a reply with Ctrl-C and goes on.
void install_interrupt_handler();
void clear_stop_request();

struct Loaded;
// --verbose: what the run did beyond its output (LLM.int8() outlier columns), on stderr.
void report_verbose(const ModelArgs& a, const Loaded& L);

// The weights live behind a pointer: Model refers to them, and a Loaded may be moved.
struct Loaded {
  // --tp (declared first: destroyed after the model that uses them): the job's ranks, the sums
  // over them, and this rank's column slices of the weights.
  std::unique_ptr<train::Communicator> comm;
  std::unique_ptr<TensorParallelSum> tp;
  std::vector<aligned_vector<uint8_t>> tp_owned;
  std::unique_ptr<LoadedModel> lm;
  std::unique_ptr<Model> model;
  std::unique_ptr<KernelContext> ctx;
};
// Loads the model and plans its buffers; logs a one-line summary to stderr.
Loaded load(const ModelArgs& a);
// A rank of an MPI job failed: "error: rank r of N: what" on stderr, then the whole job ends.
[[noreturn]] void rank_failed(const train::Communicator& c, const std::exception& e);

// The chat template for --chat-template ARG: "" the model's own (chatml when it
// has none), a built-in name (chatml), or a Jinja file. bos_token / eos_token
// are the tokenizer's.
ChatTemplate load_chat_template(const std::string& arg, const LoadedModel& lm, const Tokenizer& tok);
// A rendered conversation as token ids: BOS as the tokenizer's rules say, once
// (a template that writes the BOS text itself does not get a second one).
std::vector<int32_t> chat_tokens(const Tokenizer& tok, const std::string& text);

// Parses argv into app; returns -1 to continue, or the exit code to return.
int parse(CLI::App& app, int argc, char** argv);

std::string human_bytes(double b);

// Text files memory-mapped and viewed as strings (the BPE trainer's input).
struct MappedTexts {
  std::vector<MappedFile> maps;
  std::vector<std::string_view> texts;
  size_t bytes = 0;
};
MappedTexts map_texts(const std::vector<std::string>& files);

// Writes w to out: FILE.gguf (llama.cpp's names and keys, tok embedded when
// given) or a Hugging Face directory (config.json + model.safetensors, and
// tokenizer.json for byte-level tokenizers). type_name: "" keeps the source
// type (llama2.c int8 -> f32), else f32|f16|bf16|q8_0|q4_0. who prefixes notes.
// chat_template (Jinja source, "" for none) goes to GGUF tokenizer.chat_template or
// the directory's tokenizer_config.json.
void write_model(Weights w, const Tokenizer* tok, const std::string& out, const std::string& type_name,
                 const char* who, const std::string& chat_template = "");

}  // namespace tessera::cli
