#include "train/pipeline_exec.h"

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "core/check.h"
#include "core/fiber.h"
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
constexpr int kAct = 0, kGrad = 1, kEmbedRows = 2, kEval = 3;  // message kinds (tags)
}  // namespace

PipelineExec::PipelineExec(TrainModel& model, const pipe::Schedule& s, const dist::Comm& pipe, int64_t layers,
                           bool overlap_fb)
    : model_(model), s_(s), pipe_(pipe), layers_(layers), me_(pipe.rank()), overlap_fb_(overlap_fb) {
  DSV3_ASSERT(pipe.size() == s.pp);
  A_ = model.activation_numel();
  E_ = model.mtp_rows_numel();
  const TrainModelOptions& o = model.options();
  row_elems_ = o.batch * (o.seq_len + 1);
}

float* PipelineExec::buffer(int k, int64_t n) {
  auto it = buf_of_.find(k);
  if (it == buf_of_.end()) {
    int i;
    if (!free_bufs_.empty()) {
      i = free_bufs_.back();
      free_bufs_.pop_back();
    } else {
      i = int(pool_.size());
      pool_.emplace_back();  // moving the others keeps their storage (in-flight transfers)
    }
    pool_[size_t(i)].resize(size_t(n));
    it = buf_of_.emplace(k, i).first;
  }
  DSV3_ASSERT(int64_t(pool_[size_t(it->second)].size()) >= n);
  return pool_[size_t(it->second)].data();
}

void PipelineExec::release(int k) {
  const auto it = buf_of_.find(k);
  DSV3_ASSERT(it != buf_of_.end());
  free_bufs_.push_back(it->second);
  buf_of_.erase(it);
}

// Sends key k's buffer; the buffer goes back to the pool once the send has completed.
void PipelineExec::send(int k, int64_t n, int dest, int t) {
  const int i = buf_of_.at(k);
  buf_of_.erase(k);
  sends_.emplace_back(i, pipe_.isend(pool_[size_t(i)].data(), n * 4, dest, t));
  sent_ += n * 4;
}

// Gives the buffers of completed sends back to the pool (wait: after waiting for all).
void PipelineExec::reap_sends(bool wait) {
  size_t kept = 0;
  for (size_t j = 0; j < sends_.size(); ++j) {
    if (wait) sends_[j].second.wait();
    if (wait || sends_[j].second.test()) {
      free_bufs_.push_back(sends_[j].first);
    } else {
      if (kept != j) sends_[kept] = std::move(sends_[j]);
      ++kept;
    }
  }
  sends_.erase(sends_.begin() + std::ptrdiff_t(kept), sends_.end());
}

// Posts the receives of one op's inputs (a first stage's input or a last stage's output
// gradient come from nowhere; DualPipeV's fold is a copy on this rank).
void PipelineExec::post_one(bool is_f, int mb, int chunk) {
  const int st = s_.stage_of(me_, chunk, mb), last = s_.n_stages - 1;
  if (is_f) {
    const pipe::Loc p = s_.prev(me_, chunk, mb);
    if (st > 0 && p.rank != me_)
      recv_.emplace(tag(kAct, st, mb), pipe_.irecv(buffer(key(kAct, chunk, mb), A_), A_ * 4, p.rank,
                                                   tag(kAct, st, mb)));
    return;
  }
  const pipe::Loc n = s_.next(me_, chunk, mb);
  if (st < last && n.rank != me_)
    recv_.emplace(tag(kGrad, st, mb), pipe_.irecv(buffer(key(kGrad, chunk, mb), A_), A_ * 4, n.rank,
                                                  tag(kGrad, st, mb)));
  const int src = s_.where(last, mb).rank;
  if (st == 0 && E_ > 0 && src != me_)
    recv_.emplace(tag(kEmbedRows, 0, mb), pipe_.irecv(buffer(key(kEmbedRows, 0, mb), E_), E_ * 4, src,
                                                      tag(kEmbedRows, 0, mb)));
}

void PipelineExec::post(const pipe::Op& op) {
  if (op.type == pipe::OpType::F || op.type == pipe::OpType::FB) post_one(true, op.mb, op.chunk);
  if (op.type == pipe::OpType::B) post_one(false, op.mb, op.chunk);
  if (op.type == pipe::OpType::FB) post_one(false, op.mb2, op.chunk2);
}

int64_t PipelineExec::run(const int32_t* rows, const float* params, const std::vector<float*>& g,
                          std::vector<std::vector<std::pair<int, StepLosses>>>& per_stage) {
  rows_ = rows;
  params_ = params;
  g_ = &g;
  per_stage_ = &per_stage;
  per_stage.assign(size_t(s_.micro_batches), {});
  sent_ = 0;
  // The receives of the next kLookahead ops are posted before an op computes, so their
  // transfers can run meanwhile; buffers then number about the ops in flight, not M.
  constexpr size_t kLookahead = 4;
  const std::vector<pipe::Op>& ops = s_.ops[size_t(me_)];
  posted_ = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    for (; posted_ < std::min(ops.size(), i + 1 + kLookahead); ++posted_) post(ops[posted_]);
    const pipe::Op& op = ops[i];
    switch (op.type) {
      case pipe::OpType::F: forward(op.mb, op.chunk); break;
      case pipe::OpType::B: backward(op.mb, op.chunk, op.split); break;
      case pipe::OpType::FB:
        if (overlap_fb_) {
          run_fibers({[&] { forward(op.mb, op.chunk); }, [&] { backward(op.mb2, op.chunk2, op.split2); }});
        } else {
          forward(op.mb, op.chunk);
          backward(op.mb2, op.chunk2, op.split2);
        }
        break;
      case pipe::OpType::W: weight(op.mb, op.chunk); break;
    }
    reap_sends(false);
  }
  reap_sends(true);
  DSV3_ASSERT(recv_.empty() && deferred_.empty() && buf_of_.empty());
  return sent_;
}

void PipelineExec::evaluate(const int32_t* rows, const float* params,
                            std::vector<std::vector<std::pair<int, StepLosses>>>& per_stage) {
  per_stage.assign(size_t(s_.micro_batches), {});
  const int last = s_.n_stages - 1;
  std::vector<float> x(static_cast<size_t>(A_));
  for (int mb = 0; mb < s_.micro_batches; ++mb)
    for (int st = 0; st <= last; ++st) {
      const pipe::Loc at = s_.where(st, mb);
      if (at.rank != me_) continue;
      if (st > 0) {
        const int from = s_.where(st - 1, mb).rank;
        if (from != me_) pipe_.recv(x.data(), A_ * 4, from, tag(kEval, st, mb));
      }
      per_stage[size_t(mb)].emplace_back(st, model_.forward_stage(stage_span(layers_, s_.n_stages, st), 0,
                                                                  rows + mb * row_elems_, params, nullptr,
                                                                  x.data()));
      if (st < last) {
        const int to = s_.where(st + 1, mb).rank;
        if (to != me_) pipe_.send(x.data(), A_ * 4, to, tag(kEval, st + 1, mb));
      }
    }
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
  const int k = key(kAct, chunk, mb);
  float* x = buffer(k, A_);  // the input (received, copied by the fold, or unused on stage 0)
  (*per_stage_)[size_t(mb)].emplace_back(st, model_.forward_stage(stage_span(layers_, s_.n_stages, st), slot,
                                                                  rows_ + mb * row_elems_, params_,
                                                                  (*g_)[size_t(mb)], x));
  if (st == last) return release(k);
  const pipe::Loc n = s_.next(me_, chunk, mb);
  if (n.rank == me_) {  // DualPipeV's fold: the next stage is this rank's other chunk
    std::memcpy(buffer(key(kAct, n.chunk, mb), A_), x, size_t(A_) * sizeof(float));
    release(k);
  } else {
    send(k, A_, n.rank, tag(kAct, st + 1, mb));
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
  const int k = key(kGrad, chunk, mb), ke = key(kEmbedRows, 0, mb);
  float* d = buffer(k, A_);  // in: the output gradient (unused on the last stage); out: the input's
  float* de = E_ > 0 && (st == 0 || st == last) ? buffer(ke, E_) : nullptr;
  const int64_t ep_sent = model_.backward_stage(stage_span(layers_, s_.n_stages, st), slot, rows_ + mb * row_elems_,
                                                params_, (*g_)[size_t(mb)], d, de,
                                                split ? &deferred_[chunk * s_.micro_batches + mb] : nullptr);
  sent_ += ep_sent;  // after the call: a forward on the other fiber may add meanwhile
  free_slots_.push_back(slot);
  if (de != nullptr) {
    const int dst = s_.where(0, mb).rank;
    if (st == 0) release(ke);  // added into the embedding
    else if (dst != me_) send(ke, E_, dst, tag(kEmbedRows, 0, mb));
    // else: this rank's own first stage (DualPipeV) takes the rows later
  }
  if (st == 0) return release(k);
  const pipe::Loc p = s_.prev(me_, chunk, mb);
  if (p.rank == me_) {
    std::memcpy(buffer(key(kGrad, p.chunk, mb), A_), d, size_t(A_) * sizeof(float));
    release(k);
  } else {
    send(k, A_, p.rank, tag(kGrad, st - 1, mb));
  }
}

}  // namespace dsv3
