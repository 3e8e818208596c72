// tessera train / data prepare / export: training from the command line.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "formats/any_tokenizer.h"
#include "formats/lora_adapter.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/lora.h"
#include "train/params.h"
#include "train/reward.h"
#include "train/dpo.h"
#include "train/sft.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace tessera::cli {

// Model-shape options that are not ModelConfig fields as they are.
struct ShapeArgs {
  std::string arch = "llama", sched = "cosine";
  bool untied = false;
  int64_t sliding_window = 0;
  std::string sliding_layers = "all";
  std::string ffn_act, norm_placement = "pre";
  // Mixture-of-experts feed-forward (new models).
  int64_t moe_experts = 0, moe_top_k = 2, moe_shared = 0, moe_hidden = 0, moe_first_dense = 0, moe_every = 1;
  std::string moe_gate = "topk-softmax", moe_routing = "learned";
  bool moe_score_bias = false;
  // Latent attention (new models): --attn mla and its sizes (0: the defaults below).
  std::string attn = "mha";
  int64_t kv_lora_rank = 0, q_lora_rank = 0, rope_head_dim = 0, v_head_dim = 0;
  // Attention patterns (new models): --attn-pattern and its sizes.
  std::string attn_pattern = "full", pattern_layers = "all";
  int64_t window = 0, global_tokens = 0, random_keys = 0;
  std::string dilation;  // --dilation: one value, or one per query head
};

void add_train_options(CLI::App& app, train::TrainOptions& o, ShapeArgs& sa) {
  std::string& arch = sa.arch;
  bool& untied = sa.untied;
  std::string& sched = sa.sched;
  int64_t& sliding_window = sa.sliding_window;
  std::string& sliding_layers = sa.sliding_layers;
  auto& m = o.model;
  app.add_option("--data", o.data_dir, "token dataset directory (from 'tessera data prepare')");
  app.add_option("-o,--out", o.out_dir, "run directory: checkpoints, metrics.jsonl, loss.svg, run.json");
  app.add_option("--init", o.init_model, "start from this model (GGUF, HF dir, llama2.c .bin) instead of random weights");
  app.add_option("--tokenizer", o.init_tokenizer, "tokenizer of --init when the model file carries none");
  app.add_option("--arch", arch, "architecture of a new model")->check(CLI::IsMember({"llama", "gpt2"}));
  app.add_option("--dim", m.dim, "model width");
  app.add_option("--layers", m.n_layers, "blocks");
  app.add_option("--heads", m.n_heads, "query heads");
  app.add_option("--kv-heads", m.n_kv_heads, "key/value heads (default: --heads; fewer = GQA, 1 = MQA)");
  app.add_option("--hidden", m.hidden_dim, "FFN width (default: Llama 8/3 dim rounded up to 32, GPT-2 4 dim)");
  app.add_option("--vocab", m.vocab_size, "vocabulary (default: the dataset's)");
  app.add_option("--ctx", m.max_seq_len, "model context (default: --seq)");
  app.add_option("--rope-theta", m.rope_theta, "RoPE base");
  app.add_option("--norm-eps", m.norm_eps, "norm epsilon");
  app.add_flag("--untied", untied, "separate output matrix (default: tied to the token embedding)");
  app.add_option("--batch", o.batch, "sequences per micro-batch");
  app.add_option("--seq", o.seq, "tokens per sequence");
  app.add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step");
  app.add_option("--steps", o.steps, "optimizer steps (with --resume: extend the run to this many)");
  app.add_option("--lr", o.sched.lr, "peak learning rate");
  app.add_option("--min-lr", o.sched.min_lr, "final learning rate of the cosine");
  app.add_option("--warmup", o.sched.warmup, "linear warmup steps");
  app.add_option("--schedule", sched, "constant | cosine (to --steps) | sgdr (cosine with warm restarts)")
      ->check(CLI::IsMember({"constant", "cosine", "sgdr"}));
  app.add_option("--sgdr-period", o.sched.period, "first SGDR period in steps");
  app.add_option("--sgdr-mult", o.sched.period_mult, "SGDR period multiplier");
  app.add_option("--weight-decay", o.adam.weight_decay, "AdamW decoupled weight decay");
  app.add_option("--beta1", o.adam.beta1, "AdamW beta1");
  app.add_option("--beta2", o.adam.beta2, "AdamW beta2");
  app.add_option("--adam-eps", o.adam.eps, "AdamW epsilon");
  app.add_flag("--decay-embeddings", o.adam.decay_embeddings, "apply weight decay to embeddings too");
  app.add_flag("--decay-norms", o.adam.decay_norms, "apply weight decay to norm gains and biases too");
  app.add_option("--clip", o.clip, "clip the global gradient norm to this (0: off)");
  app.add_option("--z-loss", o.mo.z_loss, "z-loss coefficient: alpha * log(Z)^2");
  app.add_option("--attn-softcap", o.model.attn_softcap, "new model: attention score soft-cap cap*tanh(s/cap) (0: off)");
  app.add_option("--final-softcap", o.model.final_softcap, "new model: output logit soft-cap (0: off)");
  app.add_flag("--qk-norm", o.model.qk_norm, "new model: RMSNorm on every query and key head before RoPE");
  app.add_option("--ffn-act", sa.ffn_act,
                 "new model: feed-forward activation: swiglu (llama default) or geglu; gelu (gpt2 default) or relu")
      ->check(CLI::IsMember({"swiglu", "geglu", "gelu", "relu"}));
  app.add_option("--norm-placement", sa.norm_placement,
                 "new model: pre (x + f(norm(x)), default) or post (norm(x + f(x)), the original Transformer's)")
      ->check(CLI::IsMember({"pre", "post"}));
  app.add_option("--sliding-window", sliding_window,
                 "new model: sliding-window attention of this many positions (0: full attention)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  app.add_option("--sliding-window-layers", sliding_layers,
                 "new model: which layers slide: all, even (Gemma 2's alternate layers), odd, or a list like 0,2,5");
  app.add_option("--attn-pattern", sa.attn_pattern,
                 "new model: full (default), sliding (the last --window positions), dilated (--window keys "
                 "--dilation apart: receptive field window x dilation), longformer (a dilated window + "
                 "--global-tokens: the first G positions attend to all and all attend to them) or bigbird (window + "
                 "global + --random-keys per block of 16 queries, fixed by --seed); saved with the model")
      ->check(CLI::IsMember({"full", "sliding", "dilated", "longformer", "bigbird"}));
  app.add_option("--window", sa.window, "--attn-pattern: keys of the (dilated) window, the query's own included")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  app.add_option("--dilation", sa.dilation,
                 "--attn-pattern dilated / longformer / bigbird: positions between window keys (default 1); or one "
                 "value per query head, comma-separated (Longformer's multi-head dilation, e.g. 1,1,2,2,4,4,8,8)");
  app.add_option("--global-tokens", sa.global_tokens, "--attn-pattern longformer / bigbird: global positions 0..G-1")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  app.add_option("--random-keys", sa.random_keys, "--attn-pattern bigbird: random keys per block of 16 queries")
      ->check(CLI::Range(int64_t(1), int64_t(4096)));
  app.add_option("--attn-pattern-layers", sa.pattern_layers,
                 "--attn-pattern: which layers: all (default), even, odd, or a list like 0,2,5 (full attention on the others)");
  app.add_option("--attn", sa.attn,
                 "new model: mha (multi-head attention; GQA/MQA with --kv-heads, default) or mla (DeepSeek-V2's "
                 "multi-head latent attention: keys and values from a shared latent, a small KV cache)")
      ->check(CLI::IsMember({"mha", "mla"}));
  app.add_option("--kv-lora-rank", sa.kv_lora_rank,
                 "--attn mla: width d_c of the compressed KV latent (default 4 x dim / heads)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  app.add_option("--q-lora-rank", sa.q_lora_rank, "--attn mla: low-rank query projection of this rank (default 0: a full attn_q)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  app.add_option("--rope-head-dim", sa.rope_head_dim,
                 "--attn mla: decoupled RoPE dims per head, added to the dim / heads un-rotated ones (even; default "
                 "half of dim / heads)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 16));
  app.add_option("--v-head-dim", sa.v_head_dim, "--attn mla: value dims per head (default dim / heads)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  app.add_option("--moe-experts", sa.moe_experts, "new model: mixture-of-experts feed-forward with this many experts (0: dense)")
      ->check(CLI::Range(int64_t(0), int64_t(1024)));
  app.add_option("--moe-top-k", sa.moe_top_k, "experts per token (default 2)")->check(CLI::Range(int64_t(1), int64_t(16)));
  app.add_option("--moe-expert-hidden", sa.moe_hidden, "width of each expert (default: --hidden)");
  app.add_option("--moe-shared", sa.moe_shared,
                 "shared experts, always on, as one sigmoid-gated expert of this many times the expert width (Qwen2-MoE)")
      ->check(CLI::Range(int64_t(0), int64_t(64)));
  app.add_option("--moe-first-dense", sa.moe_first_dense, "leading layers that stay dense (DeepSeek)");
  app.add_option("--moe-every", sa.moe_every, "MoE on every N-th layer: layers l with (l + 1) % N == 0 (default 1: all)")
      ->check(CLI::Range(int64_t(1), int64_t(1024)));
  app.add_option("--moe-gate", sa.moe_gate,
                 "router: topk-softmax (Mixtral: softmax over the selected, default), softmax-topk (Qwen2-MoE / "
                 "DeepSeek-V2: softmax over all, not renormalised) or sigmoid (renormalised)")
      ->check(CLI::IsMember({"topk-softmax", "softmax-topk", "sigmoid"}));
  app.add_flag("--moe-score-bias", sa.moe_score_bias,
               "new model: DeepSeek-V3's per-expert selection bias (added to the scores to choose experts, not to "
               "weigh them), moved toward even loads after every step by --moe-bias-rate (no balance loss needed)");
  app.add_option("--moe-bias-rate", o.moe_bias_rate,
                 "how far each selection bias moves per step, toward the experts' mean load (default 0.001; 0: fixed)");
  app.add_option("--mtp", o.mtp,
                 "multi-token prediction (DeepSeek-V3): this many sequential modules, each one block that predicts one "
                 "token further ahead from the previous depth's state and the next token's embedding, through the "
                 "shared output head; saved with the model (GGUF nextn tensors) for drafting; an --init model without "
                 "modules gets fresh ones")
      ->check(CLI::Range(int64_t(0), int64_t(8)));
  app.add_option("--mtp-weight", o.mo.mtp_weight,
                 "weight of the modules' losses: the objective adds weight / depth x their summed cross-entropies "
                 "(default 0.3)");
  app.add_option("--moe-routing", sa.moe_routing,
                 "learned (a router, default) or hash routing without a router (Hash Layers): hash-random (token id), "
                 "hash-balanced (token ids spread over the experts by their frequency in the training data), "
                 "hash-bigram, hash-prev-token, hash-position; each of the --moe-top-k experts weighs 1/k")
      ->check(CLI::IsMember({"learned", "hash-random", "hash-balanced", "hash-bigram", "hash-prev-token", "hash-position"}));
  app.add_option("--upcycle-experts", o.upcycle_experts,
                 "with --init: sparse upcycling, every dense feed-forward copied into this many experts + a new router "
                 "(top --moe-top-k)");
  app.add_option("--upcycle-noise", o.upcycle_noise, "--upcycle-experts: noise on each copy, times the matrix's RMS (default 0)");
  app.add_option("--moe-balance", o.mo.moe_balance, "load-balance loss coefficient alpha (alpha E sum f_i P_i per MoE layer)");
  app.add_option("--moe-capacity", o.mo.moe_capacity,
                 "capacity factor: each expert takes at most C N k / E of a batch's slots, the rest are dropped and "
                 "counted (training only; 0: no limit)");
  app.add_option("--moe-router-z", o.mo.moe_router_z, "router z-loss coefficient (mean logsumexp(router logits)^2)");
  app.add_flag("--pack", o.pack,
               "SFT data: pack several examples into each sequence (attention kept inside each example) instead of "
               "one padded example per sequence");
  app.add_option("--zero", o.zero,
                 "under mpirun: ZeRO stage 0 (replicas), 1 (Adam moments sharded over the ranks), 2 (gradients "
                 "too: each block's reduced as the backward finishes it), 3 (weights too: each block's gathered "
                 "around its use)")
      ->check(CLI::Range(0, 3));
  app.add_option("--tp", o.tp,
                 "under mpirun: tensor parallelism (Megatron-style) over groups of this many consecutive ranks: each "
                 "holds 1/tp of every block's attention heads and feed-forward units (llama family, dense blocks, "
                 "--zero 0); the ranks / tp groups are data-parallel. With --resume: slice the checkpoints anew")
      ->check(CLI::Range(1, 64));
  app.add_flag("--overlap-comm", o.overlap_comm,
               "under mpirun, stage 0: start each block's gradient all-reduce (non-blocking) as soon as the backward "
               "has it, under the next blocks' backward (pays where a network or a spare core moves the data; "
               "slower on one machine whose cores all compute)");
  app.add_option("--dpo-beta", o.dpo_beta,
                 "with --init and data from 'data prepare-pref': direct preference optimisation with this beta (e.g. "
                 "0.1); the reference is --init (with finetune: the base without the adapter)");
  app.add_flag("--keep-sparsity", o.keep_sparsity,
               "with --init: weights of the blocks that are zero at the start stay zero (recovery after tessera prune)");
  app.add_flag("--recompute", o.mo.recompute, "recompute each block in backward (saves activation memory)");
  app.add_option("--dropout", o.mo.dropout, "dropout on the embedding and each block's residual branches (0: off)");
  app.add_option("--seed", o.seed, "seed of initialisation and data order");
  app.add_option("-t,--threads", o.threads, "threads (default: all cores)");
  app.add_option("--eval-interval", o.eval_interval, "steps between validation evaluations");
  app.add_option("--eval-batches", o.eval_batches, "validation batches per evaluation");
  app.add_option("--ckpt-interval", o.ckpt_interval, "steps between checkpoints");
  app.add_option("--keep", o.keep, "checkpoints kept");
  app.add_option("--log-interval", o.log_interval, "steps between progress lines");
  app.add_flag("--skip-nonfinite", o.skip_nonfinite, "skip batches with NaN/inf loss instead of stopping");
  app.add_option("--precision", o.precision,
                 "fp32, or bf16: matrix products in bf16 with f32 accumulation, f32 master weights and Adam states")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--max-time", o.max_seconds, "stop after this many seconds (a checkpoint is written)");
}

// --attn-pattern: the layers' attention pattern; an option the pattern does not take is an error naming it.
void set_attn_pattern(ModelConfig& m, const ShapeArgs& sa, uint64_t seed) {
  const std::string& p = sa.attn_pattern;
  if (p == "full") {
    if (sa.window > 0 || !sa.dilation.empty() || sa.global_tokens > 0 || sa.random_keys > 0 || sa.pattern_layers != "all")
      fail("--window, --dilation, --global-tokens, --random-keys and --attn-pattern-layers need --attn-pattern "
           "sliding, dilated, longformer or bigbird");
    return;
  }
  if (sa.sliding_window > 0) fail("--sliding-window and --attn-pattern: give one of them");
  if (sa.window <= 0) fail("--attn-pattern ", p, " needs --window");
  auto refuse = [&](bool given, const char* flag) {
    if (given) fail("--attn-pattern ", p, " takes no ", flag);
  };
  if (p == "sliding") {
    refuse(!sa.dilation.empty(), "--dilation"), refuse(sa.global_tokens > 0, "--global-tokens"), refuse(sa.random_keys > 0, "--random-keys");
    m.layer_cfg = sliding_window_layers(m.n_layers, sa.window, sa.pattern_layers);
    return;
  }
  LayerConfig lc;
  lc.window = sa.window;
  if (!sa.dilation.empty()) {  // one dilation, or one per query head (the layer's: their largest)
    const auto bad = [&](const std::string& item) {
      fail("--dilation '", sa.dilation, "': '", item, "' is not a dilation in [1, 2^24]");
    };
    std::vector<int32_t> ds;
    for (int64_t d : int_list(sa.dilation, bad)) {
      if (d < 1 || d > (int64_t(1) << 24)) bad(std::to_string(d));
      ds.push_back(int32_t(d));
    }
    if (ds.size() > 1 && int64_t(ds.size()) != m.n_heads)
      fail("--dilation '", sa.dilation, "': ", ds.size(), " values for ", m.n_heads, " query heads (give one, or one per head)");
    lc.dilation = *std::max_element(ds.begin(), ds.end());
    if (ds.size() > 1) lc.head_dilation = ds;
  }
  lc.global = sa.global_tokens, lc.random = sa.random_keys;
  if (p == "dilated") {
    if (lc.dilation < 2) fail("--attn-pattern dilated needs --dilation of at least 2");
    refuse(sa.global_tokens > 0, "--global-tokens"), refuse(sa.random_keys > 0, "--random-keys");
  } else if (p == "longformer") {
    if (lc.global < 1) fail("--attn-pattern longformer needs --global-tokens");
    refuse(sa.random_keys > 0, "--random-keys");
  } else if (lc.random < 1) {  // bigbird
    fail("--attn-pattern bigbird needs --random-keys");
  }
  m.layer_cfg = sparse_attention_layers(m.n_layers, lc, sa.pattern_layers, seed);
}

// Fills defaults that depend on other values (vocab from the dataset, hidden from dim).
void finish_model_config(train::TrainOptions& o, const ShapeArgs& sa) {
  const std::string& arch = sa.arch;
  const bool untied = sa.untied;
  auto& m = o.model;
  if (!sa.ffn_act.empty()) m.ffn_act = parse_ffn_act(sa.ffn_act, "--ffn-act");
  m.norm_placement = sa.norm_placement == "post" ? NormPlacement::Post : NormPlacement::Pre;
  if (sa.sliding_window > 0) m.layer_cfg = sliding_window_layers(m.n_layers, sa.sliding_window, sa.sliding_layers);
  set_attn_pattern(m, sa, o.seed);
  m.arch = arch == "gpt2" ? Arch::GPT2 : Arch::Llama;
  if (m.n_kv_heads == 0) m.n_kv_heads = m.n_heads;
  if (m.max_seq_len == 0) m.max_seq_len = o.seq;
  if (m.hidden_dim == 0)
    m.hidden_dim = m.arch == Arch::GPT2 ? 4 * m.dim : (8 * m.dim / 3 + 31) / 32 * 32;
  if (m.n_heads > 0 && m.dim % m.n_heads != 0)
    fail("--heads (", m.n_heads, ") must divide --dim (", m.dim, ")");
  if (m.n_heads > 0) m.head_dim = m.dim / m.n_heads;
  if (sa.attn == "mla") {  // DeepSeek-V2's proportions: d_c = 4 d_h, rope d_h / 2, v = d_h
    if (m.arch != Arch::Llama) fail("--attn mla: latent attention is llama-family (--arch llama)");
    if (m.n_kv_heads != m.n_heads) fail("--attn mla: every head has its own key and value (leave --kv-heads out)");
    const int64_t dh = m.head_dim;
    m.mla_rope = sa.rope_head_dim > 0 ? sa.rope_head_dim : std::max<int64_t>(2, dh / 4 * 2);
    if (m.mla_rope % 2 != 0) fail("--rope-head-dim must be even, got ", m.mla_rope);
    m.mla_kv_lora = sa.kv_lora_rank > 0 ? sa.kv_lora_rank : 4 * dh;
    m.mla_q_lora = sa.q_lora_rank;
    m.mla_v_dim = sa.v_head_dim > 0 ? sa.v_head_dim : dh;
    m.head_dim = dh + m.mla_rope;  // the key length: nope + rope
  } else if (sa.kv_lora_rank > 0 || sa.q_lora_rank > 0 || sa.rope_head_dim > 0 || sa.v_head_dim > 0) {
    fail("--kv-lora-rank, --q-lora-rank, --rope-head-dim and --v-head-dim are latent attention's sizes: add --attn mla");
  }
  m.tied_embeddings = !untied;
  m.rope_style = ops::RopeStyle::Interleaved;
  if (sa.moe_experts > 0) {
    m.moe_experts = sa.moe_experts, m.moe_used = sa.moe_top_k;
    m.moe_hidden = sa.moe_hidden > 0 ? sa.moe_hidden : m.hidden_dim;
    m.moe_shared_hidden = sa.moe_shared * m.moe_hidden, m.moe_shared_gate = sa.moe_shared > 0;
    m.moe_first_dense = sa.moe_first_dense, m.moe_every = sa.moe_every;
    m.moe_gate = sa.moe_gate == "sigmoid" ? MoeGate::Sigmoid : MoeGate::Softmax;
    m.moe_norm_topk = sa.moe_gate != "softmax-topk";
    m.moe_score_bias = sa.moe_score_bias;
    if (m.arch != Arch::Llama) fail("--moe-experts: mixture-of-experts models are llama-family (--arch llama)");
    m.set_moe_layers();
  }
  if (m.vocab_size == 0 && !o.data_dir.empty() && o.init_model.empty())
    m.vocab_size = train::open_dataset(o.data_dir).vocab_size;
  m.name = "tessera-" + std::string(arch_name(m.arch));
  if (o.upcycle_experts > 0) m.moe_used = sa.moe_top_k;  // the upcycled router's k (the rest comes from --init)
  m.moe_routing = parse_moe_routing(sa.moe_routing, "--moe-routing");
  if (o.init_model.empty()) m.mtp_depth = o.mtp;
}

namespace {
// The run on this process, or on this rank of an MPI job (mpirun -np N tessera train ...):
// a rank's error is printed with its rank and ends the whole job.
train::TrainSummary run_on_ranks(const train::TrainOptions& o, bool resume) {
  if (!train::launched_by_mpi()) return train::run_training(o, resume, stderr, stop_requested());
  auto comm = train::make_mpi_communicator();
  try {
    return train::run_training(o, resume, stderr, stop_requested(), *comm);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: rank %d of %d: %s\n", comm->rank(), comm->size(), e.what());
    std::fflush(stderr);
    train::mpi_abort(1);
    throw;
  }
}

enum class Mode { Train, Finetune, Distill, Reward };

// tessera train, (finetune) the same loop with a LoRA adapter on a frozen --init model, or
// (distill) with a teacher's distribution as a second target.
int train_cli(int argc, char** argv, Mode mode) {
  const bool finetune = mode == Mode::Finetune, distill = mode == Mode::Distill, reward = mode == Mode::Reward;
  CLI::App app{finetune  ? "Fine-tune a model with an adapter: LoRA, prefix tuning (--prefix-len) or bottleneck adapters "
                           "(--adapter-dim); --init MODEL frozen, only the adapter trains; or "
                           "--resume DIR."
               : distill ? "Train a student (new, or --init MODEL) on data and a teacher model's distribution (word-level "
                           "knowledge distillation), or --resume DIR."
               : reward  ? "Train a reward model: --init MODEL with a scalar head, on preference pairs from 'data "
                           "prepare-pref' (Bradley-Terry loss), or --resume DIR."
                         : "Train a Llama- or GPT-2-family model (from scratch, from --init MODEL, or --resume DIR).",
               finetune  ? "tessera finetune"
               : distill ? "tessera distill"
               : reward  ? "tessera train-reward"
                         : "tessera train"};
  app.set_config("--config", "", "read options from a TOML file (keys are the long option names)");
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error, not ignored
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag overrides
  train::TrainOptions o;
  o.model.dim = 256, o.model.n_layers = 4, o.model.n_heads = 8, o.model.n_kv_heads = 0;
  o.model.max_seq_len = 0, o.model.vocab_size = 0, o.model.hidden_dim = 0;
  o.sched.lr = 1e-3f, o.sched.min_lr = 1e-4f, o.sched.warmup = 50;
  std::string resume;
  ShapeArgs sa;
  add_train_options(app, o, sa);
  std::string targets = "all", adapter_act = "relu", adapter_sites = "attn,ffn";
  if (finetune) {
    o.lora.rank = 8, o.lora.alpha = 16.f, o.sched.lr = 2e-4f, o.sched.min_lr = 2e-5f, o.adam.weight_decay = 0.f;
    app.add_option("--lora-rank", o.lora.rank, "adapter rank r (default 8)")->check(CLI::Range(int64_t(1), int64_t(4096)));
    app.add_option("--lora-alpha", o.lora.alpha, "adapter scale numerator: updates are scaled by alpha / r (default 16)");
    app.add_option("--lora-dropout", o.lora.dropout, "dropout on the adapter's input (default 0)");
    app.add_option("--lora-targets", targets,
                   "layers adapted: q,k,v,o,gate,up,down (GPT-2: q/k/v select its fused qkv), attn, mlp or all "
                   "(default all)");
    app.add_option("--prefix-len", o.lora.prefix_len,
                   "prefix tuning instead of LoRA: P learned key/value rows per layer that every token attends to, "
                   "initialised from the base model's keys and values of the training data's first P tokens")
        ->check(CLI::Range(int64_t(1), int64_t(4096)));
    app.add_flag("--qlora", o.lora.quantized_base,
                 "keep the frozen base's matrices in their stored type (q4_0, q8_0, K-quants, f16...), run by the "
                 "inference kernels, instead of widening them to f32 (dense models, fp32 products)");
    app.add_option("--adapter-dim", o.lora.adapter_dim,
                   "bottleneck adapters instead of LoRA: width m of y + W_up act(W_down y) after each sublayer "
                   "(Houlsby; W_up starts at zero)")
        ->check(CLI::Range(int64_t(1), int64_t(65536)));
    app.add_option("--adapter-act", adapter_act, "bottleneck adapters' activation: relu (default) or gelu")
        ->check(CLI::IsMember({"relu", "gelu"}));
    app.add_option("--adapter-sites", adapter_sites,
                   "where bottleneck adapters go: attn,ffn (default, Houlsby), ffn (Pfeiffer) or attn");
  }
  if (distill) {
    app.add_option("--teacher", o.kd.teacher, "the teacher model (any format and type the engine loads)");
    app.add_option("--teacher-tokenizer", o.kd.teacher_tokenizer, "tokenizer of --teacher when its file has none");
    app.add_option("--kd-alpha", o.kd.alpha, "weight of the distillation term (1 - it: the data term; default 0.5)");
    app.add_option("--kd-temp", o.kd.temp, "temperature tau of both distributions (the term is scaled by tau^2; default 1)");
    app.add_flag("--kd-reverse", o.kd.reverse, "reverse KL(student || teacher) (MiniLLM) instead of the forward KL");
  }
  app.add_option("--resume", resume, "continue the run in this directory from its newest checkpoint");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (!resume.empty()) {
    // The run continues as its run.json says (same model, data, schedule and threads, so the
    // trajectory stays bit-identical); a flag that would change it is an error, not ignored.
    for (const CLI::Option* opt : app.get_options())
      if (opt->count() > 0 && opt->get_name() != "--resume" && opt->get_name() != "--steps" &&
          opt->get_name() != "--tp")
        fail("--resume ", resume, ": ", opt->get_name(), " cannot be changed when resuming (the run keeps the ",
             "options in ", resume, "/run.json; only --steps may extend it and --tp re-slice it)");
    train::TrainOptions r;
    r.out_dir = resume;
    r.steps = app.count("--steps") ? o.steps : 0;
    r.tp_override = app.count("--tp") ? o.tp : 0;
    install_stop_handlers();  // a stop by signal exits 130 (run_training has said where it checkpointed)
    return run_on_ranks(r, true).interrupted ? 130 : 0;
  }
  if (distill && o.kd.teacher.empty()) fail("tessera distill: --teacher MODEL is required");
  o.reward = reward;
  if (finetune) {
    if (o.init_model.empty()) fail("tessera finetune: --init MODEL is required (the base model to adapt)");
    if (!o.lora.bottleneck() && (app.count("--adapter-act") || app.count("--adapter-sites")))
      fail("--adapter-act / --adapter-sites set bottleneck adapters: give --adapter-dim too");
    if (o.lora.prefix() && o.lora.bottleneck())
      fail("--prefix-len and --adapter-dim are separate adapters; choose one per run");
    if (o.lora.prefix() || o.lora.bottleneck()) {
      for (const char* f : {"--lora-rank", "--lora-alpha", "--lora-dropout", "--lora-targets"})
        if (app.count(f))
          fail(f, ": ", o.lora.prefix() ? "prefix tuning (--prefix-len)" : "bottleneck adapters (--adapter-dim)",
               " and LoRA are separate adapters; choose one per run");
      o.lora.rank = 0, o.lora.alpha = 0.f;
      o.lora.adapter_gelu = adapter_act == "gelu";
      if (o.lora.bottleneck()) o.lora.adapter_sites = train::parse_adapter_sites(adapter_sites);
    } else {
      o.lora.targets = train::parse_lora_targets(targets);
    }
  }
  o.sched.kind = train::parse_schedule_kind(sa.sched);
  o.sched.total = o.steps;
  if (!app.count("--warmup")) o.sched.warmup = std::min<int64_t>(o.sched.warmup, o.steps / 10);
  finish_model_config(o, sa);
  install_stop_handlers();
  const auto s = run_on_ranks(o, false);
  if (s.interrupted) return 130;
  if (!s.root) return 0;
  std::fprintf(stderr, "done: %lld steps, loss %.4f, val loss %.4f (ppl %.2f), %.0f tok/s; checkpoint %s\n",
               (long long)s.steps, s.last_loss, s.val_loss, std::exp(s.val_loss), s.tok_per_s, s.checkpoint.c_str());
  return 0;
}
}  // namespace

int cmd_train(int argc, char** argv) { return train_cli(argc, argv, Mode::Train); }
int cmd_finetune(int argc, char** argv) { return train_cli(argc, argv, Mode::Finetune); }
int cmd_distill(int argc, char** argv) { return train_cli(argc, argv, Mode::Distill); }
int cmd_train_reward(int argc, char** argv) { return train_cli(argc, argv, Mode::Reward); }

int cmd_data(int argc, char** argv) {
  CLI::App app{"Training data tools.", "tessera data"};
  app.require_subcommand(1);
  auto* prep = app.add_subcommand("prepare", "tokenize text files into train/val token shards");
  std::string tok_path, out;
  std::vector<std::string> files;
  train::PrepareOptions po;
  prep->add_option("--tokenizer", tok_path, "tokenizer (tokenizer.json, tokenizer.model, tokenizer.bin, GGUF...)")
      ->required();
  prep->add_option("-o,--out", out, "output directory")->required();
  prep->add_option("--val-fraction", po.val_fraction,
                   "fraction of each file's tokens held out (its last documents; its end for a one-document file)");
  prep->add_option("--doc-sep", po.docs.doc_sep,
                   "regex (PCRE2): a line matching it ends a document, e.g. '^%$' for fortune files");
  prep->add_option("--min-text-fraction", po.docs.min_text_fraction,
                   "drop documents whose share of ASCII letters and spaces is below this (0: keep all)")
      ->check(CLI::Range(0.0, 1.0));
  prep->add_option("files", files, "text files, or .jsonl files with one {\"text\": ...} document per line")
      ->required();
  auto* sft = app.add_subcommand("prepare-sft",
                                  "tokenize JSONL chat / prompt-completion examples for fine-tuning (loss on the "
                                  "responses only)");
  std::string s_tok, s_out, s_template, s_model;
  std::vector<std::string> s_files;
  double s_val = 0.05;
  sft->add_option("--tokenizer", s_tok, "tokenizer (tokenizer.json, tokenizer.model, tokenizer.bin, GGUF...)")
      ->required();
  sft->add_option("-o,--out", s_out, "output directory")->required();
  sft->add_option("--chat-template", s_template,
                  "template for {\"messages\": [...]} examples: chatml, or a Jinja file (default: --model's, else chatml)");
  sft->add_option("--model", s_model, "take the chat template of this model");
  sft->add_option("--val-fraction", s_val, "fraction of each file's examples held out (its last ones)");
  sft->add_option("files", s_files,
                  ".jsonl files: {\"messages\": [{\"role\", \"content\"}...]} or {\"prompt\", \"completion\"} per line")
      ->required();
  auto* pref = app.add_subcommand("prepare-pref",
                                   "tokenize JSONL preference pairs {prompt | messages, chosen, rejected} for DPO");
  std::string p_tok, p_out, p_template, p_model;
  std::vector<std::string> p_files;
  double p_val = 0.05;
  pref->add_option("--tokenizer", p_tok, "tokenizer")->required();
  pref->add_option("-o,--out", p_out, "output directory")->required();
  pref->add_option("--chat-template", p_template, "template for \"messages\" prompts: chatml or a Jinja file");
  pref->add_option("--model", p_model, "take the chat template of this model");
  pref->add_option("--val-fraction", p_val, "fraction of each file's pairs held out");
  pref->add_option("files", p_files, ".jsonl files, one {\"prompt\", \"chosen\", \"rejected\"} per line")->required();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (pref->parsed()) {
    const Tokenizer t = load_any_tokenizer(p_tok);
    LoadedModel none;
    const LoadedModel lm = p_model.empty() ? std::move(none) : load_model(p_model);
    const ChatTemplate tmpl = load_chat_template(p_template, lm, t);
    const auto st = train::prepare_pref(t, p_tok, tmpl, p_files, p_out, p_val);
    std::fprintf(stderr, "data: %lld train + %lld val preference pairs (%lld + %lld tokens) -> %s\n",
                 (long long)st.train_examples / 2, (long long)st.val_examples / 2, (long long)st.train_tokens,
                 (long long)st.val_tokens, p_out.c_str());
    return 0;
  }
  if (sft->parsed()) {
    const Tokenizer t = load_any_tokenizer(s_tok);
    LoadedModel none;
    const LoadedModel lm = s_model.empty() ? std::move(none) : load_model(s_model);
    const ChatTemplate tmpl = load_chat_template(s_template, lm, t);
    const auto st = train::prepare_sft(t, s_tok, tmpl, s_files, s_out, s_val);
    std::fprintf(stderr,
                 "data: %lld train + %lld val examples (%lld + %lld tokens, %lld learned), template %s -> %s\n",
                 (long long)st.train_examples, (long long)st.val_examples, (long long)st.train_tokens,
                 (long long)st.val_tokens, (long long)st.learned_tokens, tmpl.name().c_str(), s_out.c_str());
    return 0;
  }
  const Tokenizer tok = load_any_tokenizer(tok_path);
  const auto st = train::prepare_data(tok, tok_path, files, out, po);
  std::fprintf(stderr, "data: %.2f MB, %lld documents", double(st.bytes) / 1e6, (long long)st.documents);
  if (st.dropped_documents > 0) std::fprintf(stderr, " (%lld dropped)", (long long)st.dropped_documents);
  std::fprintf(stderr, " -> %lld train + %lld val tokens (%.2f bytes/token) in %s\n", (long long)st.train_tokens, (long long)st.val_tokens,
               double(st.bytes) / double(std::max<int64_t>(1, st.train_tokens + st.val_tokens)), out.c_str());
  return 0;
}

// The tokenizer a run was trained with: the dataset's, else --init's.
std::optional<Tokenizer> run_tokenizer(const nlohmann::json& opts) {
  const std::string data = opts.value("data_dir", std::string());
  if (!data.empty() && fs::exists(data + "/meta.json")) {
    const auto d = train::open_dataset(data);
    if (!d.tokenizer_path.empty() && fs::exists(d.tokenizer_path)) return load_any_tokenizer(d.tokenizer_path);
  }
  const std::string tp = opts.value("init_tokenizer", std::string());
  if (!tp.empty() && fs::exists(tp)) return load_any_tokenizer(tp);
  const std::string init = opts.value("init_model", std::string());
  if (!init.empty() && fs::exists(init)) {
    auto lm = load_model(init);
    if (lm.tokenizer) return std::move(lm.tokenizer);
  }
  return std::nullopt;
}

int cmd_export(int argc, char** argv) {
  CLI::App app{"Write a training checkpoint as a model (GGUF file or Hugging Face directory); a LoRA run's as its "
               "adapter (GGUF LoRA file or PEFT directory) or, with --merge-lora, as the merged model.",
               "tessera export"};
  std::string in, out, type_name, tok_path;
  bool merge = false;
  app.add_option("CHECKPOINT", in, "checkpoint file, or a run directory (its newest checkpoint)")->required();
  app.add_option("-o,--out", out, "FILE.gguf or a directory (safetensors; PEFT files for an adapter)")->required();
  app.add_option("--type", type_name, "weight type: f32, f16, bf16 or a llama.cpp file type as in convert (default f32)")
      ->check(weight_type_validator());
  app.add_option("--tokenizer", tok_path, "tokenizer to embed (default: the run's)");
  app.add_flag("--merge-lora", merge, "LoRA runs: write the base model with the adapter merged into its weights");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  std::string path = in;
  if (fs::is_directory(in)) {
    path = train::latest_checkpoint(in);
    if (path.empty()) fail(in, ": no checkpoint (ckpt_*.bin) in this directory");
  }
  const train::Checkpoint ck = train::load_checkpoint(path);
  const train::Layout L(ck.cfg);
  if (ck.reward_head)
    std::fprintf(stderr, "export: %s is a reward model: the language model is written, its head is not (score with "
                         "'tessera reward')\n", path.c_str());
  if (merge && !ck.lora.enabled()) fail("--merge-lora: ", path, " is not a LoRA run's checkpoint");
  if (ck.lora.prefix()) {  // a prefix: PEFT's PREFIX_TUNING directory (no GGUF form, nothing to merge)
    if (merge) fail("--merge-lora: ", path, " is a prefix-tuning run; a prefix is not merged into weights (run it with --prefix-adapter)");
    if (!type_name.empty()) fail("--type: an adapter is written in f32");
    if (out.size() > 5 && out.compare(out.size() - 5, 5, ".gguf") == 0)
      fail("-o ", out, ": llama.cpp has no prefix-tuning adapter format; give a directory (PEFT files)");
    const train::LoraLayout LL(L, ck.lora);
    write_prefix_peft(train::to_prefix(LL, ck.params.data()), ck.cfg, out, ck.extra.value("init_model", std::string()));
    std::fprintf(stderr, "export: prefix of %s (step %lld, %lld positions x %lld layers) -> %s (PEFT PREFIX_TUNING)\n",
                 path.c_str(), (long long)ck.step, (long long)ck.lora.prefix_len, (long long)ck.cfg.n_layers, out.c_str());
    return 0;
  }
  if (ck.lora.bottleneck()) {  // bottleneck adapters: a GGUF adapter file (nothing to merge: they are non-linear)
    if (merge) fail("--merge-lora: ", path, " holds bottleneck adapters, which are not linear; run them with --bottleneck-adapter");
    if (!type_name.empty()) fail("--type: an adapter is written in f32");
    if (!(out.size() > 5 && out.compare(out.size() - 5, 5, ".gguf") == 0))
      fail("-o ", out, ": bottleneck adapters are written as one GGUF file (name it FILE.gguf)");
    const train::LoraLayout LL(L, ck.lora);
    write_bottleneck_gguf(train::to_bottleneck(LL, ck.params.data()), ck.cfg, out);
    std::fprintf(stderr, "export: bottleneck adapters of %s (step %lld, width %lld, %s) -> %s\n", path.c_str(),
                 (long long)ck.step, (long long)ck.lora.adapter_dim,
                 train::adapter_sites_string(ck.lora.adapter_sites).c_str(), out.c_str());
    return 0;
  }
  if (ck.lora.enabled() && !merge) {  // the adapter itself
    if (!type_name.empty()) fail("--type: an adapter is written in f32 (use --merge-lora to write a typed model)");
    const train::LoraLayout LL(L, ck.lora);
    const LoraAdapter ad = train::to_adapter(LL, ck.params.data());
    const bool gguf = out.size() > 5 && out.compare(out.size() - 5, 5, ".gguf") == 0;
    if (gguf) write_lora_gguf(ad, ck.cfg, out);
    else write_lora_peft(ad, ck.cfg, out, ck.extra.value("init_model", std::string()));
    std::fprintf(stderr, "export: LoRA adapter of %s (step %lld, rank %lld, %zu matrices) -> %s (%s)\n", path.c_str(),
                 (long long)ck.step, (long long)ad.rank, ad.pairs.size(), out.c_str(), gguf ? "GGUF LoRA" : "PEFT");
    return 0;
  }
  train::ParamVec p;
  if (ck.lora.enabled()) {  // base + adapter
    const std::string base = ck.extra.value("init_model", std::string());
    if (base.empty() || !fs::exists(base)) fail(path, ": the run's base model '", base, "' is not there to merge into");
    const LoadedModel lm = load_model(base, ck.extra.value("init_tokenizer", std::string()));
    if (train::config_to_json(lm.weights.cfg) != train::config_to_json(ck.cfg))
      fail(base, ": the base model differs from the one the adapter was trained on");
    p.assign(L.total, 0.f);
    train::params_from_weights(L, lm.weights, p.data());
    const train::LoraLayout LL(L, ck.lora);
    train::merge_lora(L, LL, ck.params.data(), p.data());
  }
  const Weights w = train::weights_view(L, ck.lora.enabled() ? p.data() : ck.params.data());
  std::optional<Tokenizer> tok = tok_path.empty() ? run_tokenizer(ck.extra) : load_any_tokenizer(tok_path);
  write_model(w, tok ? &*tok : nullptr, out, type_name, "export");
  std::fprintf(stderr, "export: %s (step %lld%s) -> %s\n", path.c_str(), (long long)ck.step,
               ck.lora.enabled() ? ", LoRA merged" : "", out.c_str());
  return 0;
}

// tessera reward RUN -p TEXT...: a reward model's score of each text.
int cmd_reward(int argc, char** argv) {
  CLI::App app{"Score texts with a reward model trained by 'tessera train-reward'.", "tessera reward"};
  std::string in, tok_path;
  std::vector<std::string> texts;
  app.add_option("RUN", in, "checkpoint file, or a train-reward run directory (its newest checkpoint)")->required();
  app.add_option("-p,--prompt", texts, "a text to score (repeatable)")->required();
  app.add_option("--tokenizer", tok_path, "tokenizer (default: the run's)");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  const std::string path = fs::is_directory(in) ? train::latest_checkpoint(in) : in;
  if (path.empty()) fail(in, ": no checkpoint (ckpt_*.bin) in this directory");
  const train::Checkpoint ck = train::load_checkpoint(path);
  if (!ck.reward_head) fail(path, ": not a reward model (train one with 'tessera train-reward')");
  std::optional<Tokenizer> tok = tok_path.empty() ? run_tokenizer(ck.extra) : load_any_tokenizer(tok_path);
  if (!tok) fail(path, ": the run's tokenizer is not found; pass --tokenizer");
  const train::Layout L(ck.cfg);
  for (const std::string& text : texts) {
    std::vector<int32_t> x = tok->encode(text);
    if (x.size() < 2) x.insert(x.begin(), tok->bos_id() >= 0 ? tok->bos_id() : 0);
    if (int64_t(x.size()) > ck.cfg.max_seq_len) x.erase(x.begin(), x.end() - long(ck.cfg.max_seq_len));
    const int64_t T = int64_t(x.size());
    std::vector<int32_t> y(x.begin() + 1, x.end());
    y.push_back(-1);  // the head reads the last token's state
    train::Transformer<float> m(L, 1, T, train::ModelOptions{});
    train::RewardStep rs(1, T);
    const double r = rs.score(m, ck.params.data(), ck.params.data() + L.total, x.data(), y.data())[0];
    std::printf("%.6f\t%s\n", r, text.c_str());
  }
  return 0;
}

}  // namespace tessera::cli
