#include "train/pipeline_exec.h"

#include <cstring>

#include "core/check.h"
#include "core/parallel.h"

namespace dsv3 {

StageSpan stage_span(int64_t layers, int n_stages, int s) {
  StageSpan st;
  split_range(layers, n_stages, s, &st.l0, &st.l1);
  st.first = s == 0;
  st.last = s == n_stages - 1;
  return st;
}

namespace {
constexpr int kAct = 0, kGrad = 1, kEmbedRows = 2;  // message kinds (tags)
}  // namespace

PipelineExec::PipelineExec(TrainModel& model, const pipe::Schedule& s, const dist::Comm& pipe, int64_t layers)
    : model_(model), s_(s), pipe_(pipe), layers_(layers), me_(pipe.rank()) {
  DSV3_ASSERT(pipe.size() == s.pp);
  A_ = model.activation_numel();
  E_ = model.mtp_rows_numel();
  const TrainModelOptions& o = model.options();
  row_elems_ = o.batch * (o.seq_len + 1);
  act_.resize(size_t(s.chunks * s.micro_batches));
  grad_.resize(act_.size());
  de_.resize(size_t(s.micro_batches));
}

int64_t PipelineExec::run(const int32_t* rows, const float* params, const std::vector<float*>& g,
                          std::vector<std::vector<std::pair<int, StepLosses>>>& per_stage) {
  rows_ = rows;
  params_ = params;
  g_ = &g;
  per_stage_ = &per_stage;
  per_stage.assign(size_t(s_.micro_batches), {});
  sent_ = 0;
  const int last = s_.n_stages - 1;
  // Post every receive of the step first: transfers then complete while this rank computes,
  // and a message never waits for its receive to be posted.
  auto post = [&](bool is_f, int mb, int chunk) {
    const int st = s_.stage_of(me_, chunk, mb);
    if (is_f) {
      act_[size_t(chunk * s_.micro_batches + mb)].resize(size_t(A_));
      const pipe::Loc p = s_.prev(me_, chunk, mb);
      if (st > 0 && p.rank != me_)
        recv_.emplace(tag(kAct, st, mb), pipe_.irecv(act(chunk, mb), A_ * 4, p.rank, tag(kAct, st, mb)));
    } else {
      grad_[size_t(chunk * s_.micro_batches + mb)].resize(size_t(A_));
      const pipe::Loc n = s_.next(me_, chunk, mb);
      if (st < last && n.rank != me_)
        recv_.emplace(tag(kGrad, st, mb), pipe_.irecv(grad(chunk, mb), A_ * 4, n.rank, tag(kGrad, st, mb)));
      if (st == 0 && E_ > 0) {
        de_[size_t(mb)].resize(size_t(E_));
        const int src = s_.where(last, mb).rank;
        if (src != me_)
          recv_.emplace(tag(kEmbedRows, 0, mb),
                        pipe_.irecv(de_[size_t(mb)].data(), E_ * 4, src, tag(kEmbedRows, 0, mb)));
      }
    }
  };
  for (const pipe::Op& op : s_.ops[size_t(me_)]) {
    if (op.type == pipe::OpType::F || op.type == pipe::OpType::FB) post(true, op.mb, op.chunk);
    if (op.type == pipe::OpType::B) post(false, op.mb, op.chunk);
    if (op.type == pipe::OpType::FB) post(false, op.mb2, op.chunk2);
  }
  for (const pipe::Op& op : s_.ops[size_t(me_)]) {
    switch (op.type) {
      case pipe::OpType::F: forward(op.mb, op.chunk); break;
      case pipe::OpType::B: backward(op.mb, op.chunk, op.split); break;
      case pipe::OpType::FB:
        forward(op.mb, op.chunk);
        backward(op.mb2, op.chunk2, op.split2);
        break;
      case pipe::OpType::W: weight(op.mb, op.chunk); break;
    }
  }
  for (dist::Request& r : sends_) r.wait();
  sends_.clear();
  DSV3_ASSERT(recv_.empty() && deferred_.empty());
  return sent_;
}

// Completes the receive posted for tag t, if any (none: the sender is this rank, or nothing
// comes: the first stage's input, the last stage's output gradient).
void PipelineExec::wait_recv(int t) {
  if (auto it = recv_.find(t); it != recv_.end()) {
    it->second.wait();
    recv_.erase(it);
  }
}

void PipelineExec::forward(int mb, int chunk) {
  const int st = s_.stage_of(me_, chunk, mb), last = s_.n_stages - 1;
  DSV3_ASSERT(st >= 0);
  wait_recv(tag(kAct, st, mb));
  int slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = n_slots_++;
  }
  slot_of_[chunk * s_.micro_batches + mb] = slot;
  float* x = act(chunk, mb);
  (*per_stage_)[size_t(mb)].emplace_back(st, model_.forward_stage(stage_span(layers_, s_.n_stages, st), slot,
                                                            rows_ + mb * row_elems_, params_,
                                                            (*g_)[size_t(mb)], x));
  if (st == last) return;
  const pipe::Loc n = s_.next(me_, chunk, mb);
  if (n.rank == me_) {  // DualPipeV's fold: the next stage is this rank's other chunk
    act_[size_t(n.chunk * s_.micro_batches + mb)].resize(size_t(A_));
    std::memcpy(act(n.chunk, mb), x, size_t(A_) * sizeof(float));
  } else {
    sends_.push_back(pipe_.isend(x, A_ * 4, n.rank, tag(kAct, st + 1, mb)));
    sent_ += A_ * 4;
  }
}

void PipelineExec::weight(int mb, int chunk) {
  const auto it = deferred_.find(chunk * s_.micro_batches + mb);
  DSV3_ASSERT(it != deferred_.end());
  model_.weight_stage(it->second);
  deferred_.erase(it);
}

void PipelineExec::backward(int mb, int chunk, bool split) {
  const int st = s_.stage_of(me_, chunk, mb), last = s_.n_stages - 1;
  DSV3_ASSERT(st >= 0);
  wait_recv(tag(kGrad, st, mb));
  if (st == 0) wait_recv(tag(kEmbedRows, 0, mb));
  const auto it = slot_of_.find(chunk * s_.micro_batches + mb);
  DSV3_ASSERT(it != slot_of_.end());
  const int slot = it->second;
  slot_of_.erase(it);
  if (E_ > 0) de_[size_t(mb)].resize(size_t(E_));
  float* d = grad(chunk, mb);
  sent_ += model_.backward_stage(stage_span(layers_, s_.n_stages, st), slot, rows_ + mb * row_elems_, params_,
                        (*g_)[size_t(mb)], d, E_ > 0 ? de_[size_t(mb)].data() : nullptr,
                        split ? &deferred_[chunk * s_.micro_batches + mb] : nullptr);
  free_slots_.push_back(slot);
  if (st == last && E_ > 0) {
    const int dst = s_.where(0, mb).rank;
    if (dst != me_) {
      sends_.push_back(pipe_.isend(de_[size_t(mb)].data(), E_ * 4, dst, tag(kEmbedRows, 0, mb)));
      sent_ += E_ * 4;
    }
  }
  if (st == 0) return;
  const pipe::Loc p = s_.prev(me_, chunk, mb);
  if (p.rank == me_) {
    grad_[size_t(p.chunk * s_.micro_batches + mb)].resize(size_t(A_));
    std::memcpy(grad(p.chunk, mb), d, size_t(A_) * sizeof(float));
  } else {
    sends_.push_back(pipe_.isend(d, A_ * 4, p.rank, tag(kGrad, st - 1, mb)));
    sent_ += A_ * 4;
  }
}

}  // namespace dsv3
