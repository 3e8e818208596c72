// TrainOptions: validation (errors naming the flag) and the run.json form.
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace tessera::train {

void TrainOptions::validate() const {
  auto pos = [](const char* flag, int64_t v) {
    if (v <= 0) fail(flag, " must be positive, got ", v);
  };
  pos("--batch", batch);
  pos("--seq", seq);
  pos("--grad-accum", grad_accum);
  pos("--steps", steps);
  pos("--eval-interval", eval_interval);
  pos("--eval-batches", eval_batches);
  pos("--ckpt-interval", ckpt_interval);
  pos("--keep", keep);
  pos("--log-interval", log_interval);
  if (data_dir.empty()) fail("--data is required (a directory from 'tessera data prepare')");
  if (out_dir.empty()) fail("-o/--out is required (the run directory)");
  if (clip < 0) fail("--clip must be >= 0, got ", clip);
  if (mo.z_loss < 0) fail("--z-loss must be >= 0, got ", mo.z_loss);
  if (!(mo.moe_balance >= 0)) fail("--moe-balance must be >= 0, got ", mo.moe_balance);
  if (!(mo.moe_router_z >= 0)) fail("--moe-router-z must be >= 0, got ", mo.moe_router_z);
  if (!(mo.moe_capacity >= 0)) fail("--moe-capacity must be >= 0, got ", mo.moe_capacity);
  if (!(mo.dropout >= 0 && mo.dropout < 1)) fail("--dropout must be in [0, 1), got ", mo.dropout);
  if (!(adam.beta1 >= 0 && adam.beta1 < 1)) fail("--beta1 must be in [0, 1), got ", adam.beta1);
  if (!(adam.beta2 >= 0 && adam.beta2 < 1)) fail("--beta2 must be in [0, 1), got ", adam.beta2);
  if (adam.weight_decay < 0) fail("--weight-decay must be >= 0, got ", adam.weight_decay);
  if (precision != "fp32" && precision != "bf16") fail("--precision must be fp32 or bf16, got '", precision, "'");
  sched.validate();
  if (init_model.empty()) {
    ModelConfig m = model;  // hash-balanced's table is built from the data later (Trainer)
    if (m.moe_routing == MoeRouting::HashBalanced && m.moe_hash_table.empty()) m.moe_routing = MoeRouting::HashRandom;
    m.validate("model config (--dim/--layers/--heads/...)");
  }
  if (model.moe_routing != MoeRouting::Learned && model.moe_experts == 0 && upcycle_experts == 0)
    fail("--moe-routing ", moe_routing_name(model.moe_routing), " needs a mixture-of-experts model (--moe-experts or --upcycle-experts)");
  if (upcycle_experts != 0 && init_model.empty()) fail("--upcycle-experts needs --init (the dense model to upcycle)");
  if (upcycle_experts < 0 || upcycle_experts == 1) fail("--upcycle-experts must be >= 2, got ", upcycle_experts);
  if (!(upcycle_noise >= 0)) fail("--upcycle-noise must be >= 0, got ", upcycle_noise);
  if (!(moe_bias_rate >= 0)) fail("--moe-bias-rate must be >= 0, got ", moe_bias_rate);
  if (mtp < 0 || mtp > 8) fail("--mtp must be in [0, 8], got ", mtp);
  if (!(mo.mtp_weight >= 0)) fail("--mtp-weight must be >= 0, got ", mo.mtp_weight);
  if (mtp > 0 && (kd.enabled() || dpo_beta > 0 || reward || lora.enabled() || pack))
    fail("--mtp trains multi-token prediction modules in plain or SFT training; not with --teacher, DPO, a reward "
         "model, LoRA or --pack");
  if (kd.enabled()) {
    kd.validate();
    if (pack) fail("--pack and --teacher cannot be combined (the teacher would see the packed neighbours)");
    if (mo.z_loss > 0) fail("--z-loss and --teacher cannot be combined yet");
    if (!init_model.empty() && model.final_softcap > 0) fail("--teacher: students with a logit soft-cap are not supported");
  }
  if (!(dpo_beta >= 0)) fail("--dpo-beta must be >= 0, got ", dpo_beta);
  if (dpo_beta > 0 && init_model.empty()) fail("--dpo-beta needs --init (the model to tune, also the frozen reference)");
  if (dpo_beta > 0 && (kd.enabled() || pack)) fail("--dpo-beta cannot be combined with --teacher or --pack");
  if (reward && init_model.empty()) fail("tessera train-reward: --init MODEL is required (the model under the head)");
  if (reward && (dpo_beta > 0 || kd.enabled() || lora.enabled() || pack))
    fail("a reward model trains on its own: no --dpo-beta, --teacher, LoRA or --pack");
  if (zero < 0 || zero > 3) fail("--zero ", zero, ": ZeRO stages are 0, 1, 2 and 3");
  if (tp < 1 || tp > 64) fail("--tp must be 1..64, got ", tp);
  if (tp > 1 && zero != 0) fail("--tp ", tp, " with --zero ", zero, ": tensor parallelism combines with ZeRO stage 0 only");
  if (overlap_comm && zero != 0)
    fail("--overlap-comm applies to --zero 0 (stages 2-3 reduce block by block already; 1 reduce-scatters once)");
  if (lora.prefix() && dpo_beta > 0)
    fail("--prefix-len: prefix tuning with --dpo-beta is not supported (the reference runs without the prefix)");
  if (lora.enabled()) {
    if (init_model.empty()) fail("LoRA fine-tuning needs --init (the base model to adapt)");
    if (upcycle_experts > 0) fail("--upcycle-experts and LoRA cannot be combined (upcycle first, then fine-tune)");
    if (!(lora.alpha >= 0)) fail("--lora-alpha must be >= 0, got ", lora.alpha);
    if (!(lora.dropout >= 0 && lora.dropout < 1)) fail("--lora-dropout must be in [0, 1), got ", lora.dropout);
  }
}

nlohmann::json options_to_json(const TrainOptions& o) {
  return {{"data_dir", o.data_dir},
          {"init_model", o.init_model},
          {"init_tokenizer", o.init_tokenizer},
          {"upcycle_experts", o.upcycle_experts},
          {"upcycle_noise", o.upcycle_noise},
          {"upcycle_top_k", o.model.moe_used},
          {"moe_bias_rate", o.moe_bias_rate},
          {"mtp", o.mtp},
          {"mtp_weight", o.mo.mtp_weight},
          {"model", config_to_json(o.model)},
          {"batch", o.batch},
          {"seq", o.seq},
          {"grad_accum", o.grad_accum},
          {"steps", o.steps},
          {"schedule", {{"kind", int(o.sched.kind)}, {"lr", o.sched.lr}, {"min_lr", o.sched.min_lr},
                        {"warmup", o.sched.warmup}, {"total", o.sched.total}, {"period", o.sched.period},
                        {"period_mult", o.sched.period_mult}}},
          {"adam", {{"beta1", o.adam.beta1}, {"beta2", o.adam.beta2}, {"eps", o.adam.eps},
                    {"weight_decay", o.adam.weight_decay}, {"decay_embeddings", o.adam.decay_embeddings},
                    {"decay_norms", o.adam.decay_norms}}},
          {"clip", o.clip},
          {"z_loss", o.mo.z_loss},
          {"recompute", o.mo.recompute},
          {"dropout", o.mo.dropout},
          {"moe_balance", o.mo.moe_balance},
          {"moe_router_z", o.mo.moe_router_z},
          {"moe_capacity", o.mo.moe_capacity},
          {"seed", o.seed},
          {"threads", o.threads},
          {"eval_interval", o.eval_interval},
          {"eval_batches", o.eval_batches},
          {"ckpt_interval", o.ckpt_interval},
          {"keep", o.keep},
          {"log_interval", o.log_interval},
          {"skip_nonfinite", o.skip_nonfinite},
          {"precision", o.precision},
          {"pack", o.pack},
          {"keep_sparsity", o.keep_sparsity},
          {"zero", o.zero},
          {"overlap_comm", o.overlap_comm},
          {"tp", o.tp},
          {"dpo_beta", o.dpo_beta},
          {"reward", o.reward},
          {"ranks", o.ranks},
          {"lora", o.lora.enabled() ? lora_to_json(o.lora) : nlohmann::json()},
          {"kd", o.kd.enabled() ? nlohmann::json{{"teacher", o.kd.teacher}, {"teacher_tokenizer", o.kd.teacher_tokenizer},
                                                  {"alpha", o.kd.alpha}, {"temp", o.kd.temp}, {"reverse", o.kd.reverse}}
                                : nlohmann::json()}};
}

TrainOptions options_from_json(const nlohmann::json& j, const std::string& where) {
  TrainOptions o;
  try {
    o.data_dir = j.at("data_dir");
    o.init_model = j.at("init_model");
    o.init_tokenizer = j.value("init_tokenizer", std::string());
    o.upcycle_experts = j.value("upcycle_experts", int64_t(0)), o.upcycle_noise = j.value("upcycle_noise", 0.f);
    o.model.moe_used = j.value("upcycle_top_k", int64_t(0));
    o.moe_bias_rate = j.value("moe_bias_rate", 0.001f);
    o.mtp = j.value("mtp", int64_t(0)), o.mo.mtp_weight = j.value("mtp_weight", 0.3f);
    if (o.init_model.empty()) o.model = config_from_json(j.at("model"), where);
    o.batch = j.at("batch"), o.seq = j.at("seq"), o.grad_accum = j.at("grad_accum"), o.steps = j.at("steps");
    const auto& s = j.at("schedule");
    o.sched.kind = Schedule::Kind(s.at("kind").get<int>());
    o.sched.lr = s.at("lr"), o.sched.min_lr = s.at("min_lr"), o.sched.warmup = s.at("warmup");
    o.sched.total = s.at("total"), o.sched.period = s.at("period"), o.sched.period_mult = s.at("period_mult");
    const auto& a = j.at("adam");
    o.adam.beta1 = a.at("beta1"), o.adam.beta2 = a.at("beta2"), o.adam.eps = a.at("eps");
    o.adam.weight_decay = a.at("weight_decay");
    o.adam.decay_embeddings = a.at("decay_embeddings"), o.adam.decay_norms = a.at("decay_norms");
    o.clip = j.at("clip"), o.mo.z_loss = j.at("z_loss");
    o.mo.recompute = j.at("recompute");
    o.mo.dropout = j.value("dropout", 0.f);
    o.mo.moe_balance = j.value("moe_balance", 0.f), o.mo.moe_router_z = j.value("moe_router_z", 0.f);
    o.mo.moe_capacity = j.value("moe_capacity", 0.f);
    o.seed = j.at("seed"), o.threads = j.at("threads");
    o.eval_interval = j.at("eval_interval"), o.eval_batches = j.at("eval_batches");
    o.ckpt_interval = j.at("ckpt_interval"), o.keep = j.at("keep"), o.log_interval = j.at("log_interval");
    o.skip_nonfinite = j.at("skip_nonfinite"), o.precision = j.at("precision");
    o.pack = j.value("pack", false);
    o.keep_sparsity = j.value("keep_sparsity", false);
    o.zero = j.value("zero", 0);
    o.overlap_comm = j.value("overlap_comm", false);
    o.tp = j.value("tp", 1);
    o.dpo_beta = j.value("dpo_beta", 0.f);
    o.reward = j.value("reward", false);
    o.ranks = j.value("ranks", int64_t(1));
    if (j.contains("lora") && !j["lora"].is_null()) o.lora = lora_from_json(j["lora"], where);
    if (j.contains("kd") && !j["kd"].is_null()) {
      const auto& k = j["kd"];
      o.kd.teacher = k.at("teacher"), o.kd.teacher_tokenizer = k.value("teacher_tokenizer", std::string());
      o.kd.alpha = k.at("alpha"), o.kd.temp = k.at("temp"), o.kd.reverse = k.at("reverse");
    }
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": bad run options: ", e.what());
  }
  return o;
}

}  // namespace tessera::train
