// The Trainer's parts that concern several ranks: the tensor- and data-parallel groups,
// the traffic of both, and how a checkpoint is written by one rank (whole), by every rank
// (ZeRO shards plus a manifest) or from gathered tensor-parallel slices.
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/tensor_parallel.h"
#include "train/trainer.h"

namespace tessera::train {

Communicator::Traffic Trainer::take_traffic() {
  Communicator::Traffic t = dp_->take_traffic();
  if (tp_group_) {
    const Communicator::Traffic u = tp_group_->take_traffic();
    t.all_reduce += u.all_reduce, t.reduce_scatter += u.reduce_scatter, t.all_gather += u.all_gather;
    t.broadcast += u.broadcast, t.seconds += u.seconds;
  }
  return t;
}

void Trainer::make_groups() {
  if (o_.tp < 1) fail("--tp must be at least 1, got ", o_.tp);
  if (o_.tp == 1) return;
  const int W = world_.size(), r = world_.rank();
  if (W % o_.tp != 0)
    fail("--tp ", o_.tp, ": the job's ", W, " ranks do not split into tensor-parallel groups of ", o_.tp,
         " (run mpirun -np a multiple of --tp)");
  tp_group_ = world_.split(r / o_.tp, r);  // consecutive ranks: one slice each
  dp_group_ = world_.split(r % o_.tp, r);  // the ranks holding the same slice
  dp_ = dp_group_.get();
}

bool Trainer::write_checkpoint(const std::string& path, Checkpoint& c) {
  if (sharded()) {
    // ZeRO: each rank writes its part of the weights and moments (nothing is gathered), then
    // rank 0 writes the manifest naming the parts and their checksums: the commit point.
    const int N = dp_->size(), r = dp_->rank();
    const uint64_t sum =
        save_checkpoint_shard(shard_path(path, r, N), step_, sb_, se_, p_.data() + sb_, m_.data(), v_.data());
    std::vector<double> sums(2 * size_t(N), 0.0);  // each checksum as two exact 32-bit halves
    sums[2 * size_t(r)] = double(sum >> 32), sums[2 * size_t(r) + 1] = double(sum & 0xffffffffu);
    dp_->all_reduce_sum(sums.data(), sums.size());
    if (!world_.is_root()) return false;
    std::vector<ShardRef> shards;
    for (int k = 0; k < N; ++k)
      shards.push_back({shard_path(path, k, N), shard_off_[size_t(k)], shard_off_[size_t(k) + 1],
                        uint64_t(sums[2 * size_t(k)]) << 32 | uint64_t(sums[2 * size_t(k) + 1])});
    save_checkpoint_manifest(path, c, n_train_, shards);
    return true;
  }
  if (tp_group_) {  // tensor parallelism: the slices gathered into the whole model, one file
    const size_t n = n_train_, T = size_t(o_.tp), r = size_t(tp_group_->rank());
    std::vector<size_t> off(T + 1);
    for (size_t k = 0; k <= T; ++k) off[k] = k * n;
    ParamVec buf(T * n);
    const std::pair<const ParamVec*, ParamVec*> arrays[] = {{&p_, &c.params}, {&m_, &c.m}, {&v_, &c.v}};
    for (const auto& [part, whole] : arrays) {
      std::copy(part->begin(), part->end(), buf.begin() + long(r * n));
      tp_group_->all_gather(buf.data(), off);
      if (!world_.is_root()) continue;
      whole->assign(tp_full_->total, 0.f);
      for (size_t k = 0; k < T; ++k) tp_gather(*tp_full_, *L_, int(k), buf.data() + k * n, whole->data());
    }
  } else {
    c.params = p_, c.m = m_, c.v = v_;
  }
  if (!world_.is_root()) return false;
  save_checkpoint(path, c);
  return true;
}

}  // namespace tessera::train
