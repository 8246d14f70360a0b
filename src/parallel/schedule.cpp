// Schedule generators (see schedule.h). Each is a few counts turned into per-rank op lists;
// no timing enters them: the order is the schedule, pipeline_sim.cpp decides the times.
#include "parallel/schedule.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "core/check.h"

namespace dsv3::pipe {

namespace {

constexpr const char* kChoices = "1f1b, zb1p, dualpipe, dualpipev";

// Appends one rank's ops, numbering each chunk's micro-batches in order from base[chunk]
// (dualpipe.py's current_f_chunk_id / current_b_chunk_id per phase) and giving each W the
// oldest deferred weight gradient (dualpipe's WeightGradStore is a FIFO queue).
struct RankBuilder {
  std::vector<Op>& out;
  int base[2] = {0, 0};
  int nf[2] = {0, 0}, nb[2] = {0, 0};
  std::deque<std::pair<int, int>> deferred;  // (mb, chunk) whose W is still to come

  explicit RankBuilder(std::vector<Op>& ops) : out(ops) {}

  void f(int c) { out.push_back(Op{OpType::F, base[c] + nf[c]++, c}); }
  Op backward(int c, bool split) {
    const int mb = base[c] + nb[c]++;
    if (split) deferred.emplace_back(mb, c);
    return Op{OpType::B, mb, c, split};
  }
  void b(int c, bool split) { out.push_back(backward(c, split)); }
  void w() {
    DSV3_ASSERT(!deferred.empty());
    out.push_back(Op{OpType::W, deferred.front().first, deferred.front().second});
    deferred.pop_front();
  }
  void fb(int cf, int cb) {
    Op op{OpType::FB, base[cf] + nf[cf]++, cf};
    const Op bw = backward(cb, false);  // dualpipe.py overlaps F with a full backward
    op.mb2 = bw.mb;
    op.chunk2 = bw.chunk;
    op.split2 = false;
    out.push_back(op);
  }
};

// 1F1B (Megatron's forward_backward_pipelining_without_interleaving): rank r runs
// min(pp-r-1, M) warm-up forwards, then alternates one forward and one backward, then drains
// the remaining backwards. ZB1P (ZB-H1) is the same order with every backward split and the
// weight gradient W(j-r) placed right after B(j) on rank r: r W's are deferred, so each rank
// holds pp micro-batches' activations at most (1F1B's first rank), and the deferred W's fill
// the tail where 1F1B idles (Qi et al. 2023 §2.1).
void build_1f1b(Schedule& s, bool zero_bubble) {
  const int M = s.micro_batches;
  for (int r = 0; r < s.pp; ++r) {
    RankBuilder rb(s.ops[size_t(r)]);
    const int warm = std::min(s.pp - r - 1, M);
    int next_w = 0;
    auto backward = [&] {
      rb.b(0, zero_bubble);
      if (zero_bubble && rb.nb[0] - 1 - r >= next_w) {
        rb.w();
        ++next_w;
      }
    };
    for (int i = 0; i < warm; ++i) rb.f(0);
    for (int i = 0; i < M - warm; ++i) {
      rb.f(0);
      backward();
    }
    for (int i = 0; i < warm; ++i) backward();
    for (; zero_bubble && next_w < M; ++next_w) rb.w();
  }
}

// One rank of DualPipe / DualPipeV: the 8 steps of dualpipe.py's step(), in its names.
//   n: ranks in a half (DualPipe PP/2, DualPipeV N); h: this rank's distance from the
//   entry of its phase-0 micro-batches (DualPipe min(r, PP-1-r), DualPipeV r);
//   K: micro-batches per phase (DualPipe M/2, DualPipeV M); c0/c1: the chunks phases 0 and 1
//   run on this rank (DualPipe swaps them on the second half of the ranks).
// h == n-1 is the turning rank (DualPipe's two middle ranks, DualPipeV's last rank), whose
// first main-step pair runs unoverlapped.
void build_dual_rank(RankBuilder& rb, int n, int h, int K, int c0, int c1) {
  const bool turn = h == n - 1;
  for (int i = 0; i < 2 * (n - h - 1); ++i) rb.f(c0);  // step 1: nF0
  for (int i = 0; i < h + 1; ++i) {                    // step 2: nF0F1
    rb.f(c0);
    rb.f(c1);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // step 3: nB1W1F1, zero bubble
    rb.b(c1, true);
    rb.w();
    rb.f(c1);
  }
  for (int i = 0; i < K - 2 * n + h + 1; ++i) {  // step 4 (main): nF0B1F1B0
    if (i == 0 && turn) {
      rb.f(c0);
      rb.b(c1, false);
    } else {
      rb.fb(c0, c1);
    }
    rb.fb(c1, c0);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // step 5: nB1F1B0
    rb.b(c1, false);
    rb.fb(c1, c0);
  }
  bool zb = false;  // step 6: nB1B0, the second half with zero bubble
  for (int i = 0; i < h + 1; ++i) {
    if (i == (h + 1) / 2 && h % 2 == 1) zb = true;
    rb.b(c1, zb);
    if (i == (h + 1) / 2 && h % 2 == 0) zb = true;
    rb.b(c0, zb);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // step 7: nWB0, zero bubble
    rb.w();
    rb.b(c0, true);
  }
  for (int i = 0; i < h + 1; ++i) rb.w();  // step 8: nW
  DSV3_ASSERT(rb.deferred.empty());
}

void build_dualpipe(Schedule& s) {
  const int n = s.pp / 2, K = s.micro_batches / 2;
  for (int r = 0; r < s.pp; ++r) {
    // dualpipe.py: "phase ^= is_in_second_half": on the second half of the ranks phase 0 is
    // the micro-batches entering at rank PP-1 (chunk 1).
    const int second_half = r >= n ? 1 : 0;
    RankBuilder rb(s.ops[size_t(r)]);
    rb.base[1] = K;  // direction 1 carries micro-batches K..2K-1
    build_dual_rank(rb, n, std::min(r, s.pp - 1 - r), K, second_half, 1 - second_half);
  }
}

void build_dualpipev(Schedule& s) {
  for (int r = 0; r < s.pp; ++r) {
    RankBuilder rb(s.ops[size_t(r)]);
    build_dual_rank(rb, s.pp, r, s.micro_batches, 0, 1);
  }
}

}  // namespace

ScheduleKind parse_schedule(const std::string& s) {
  if (s == "1f1b") return ScheduleKind::OneF1B;
  if (s == "zb1p") return ScheduleKind::ZB1P;
  if (s == "dualpipe") return ScheduleKind::DualPipe;
  if (s == "dualpipev") return ScheduleKind::DualPipeV;
  DSV3_FAIL("unknown pipeline schedule '", s, "' (choices: ", kChoices, ")");
}

const char* schedule_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::OneF1B: return "1f1b";
    case ScheduleKind::ZB1P: return "zb1p";
    case ScheduleKind::DualPipe: return "dualpipe";
    case ScheduleKind::DualPipeV: return "dualpipev";
  }
  return "?";
}

int Schedule::direction(int mb) const {
  return kind == ScheduleKind::DualPipe && mb >= micro_batches / 2 ? 1 : 0;
}

int Schedule::chunk_stage(int rank, int chunk) const {
  switch (kind) {
    case ScheduleKind::OneF1B:
    case ScheduleKind::ZB1P: return chunk == 0 ? rank : -1;
    case ScheduleKind::DualPipe: return chunk == 0 ? rank : pp - 1 - rank;
    case ScheduleKind::DualPipeV: return chunk == 0 ? rank : 2 * pp - 1 - rank;
  }
  return -1;
}

int Schedule::stage_of(int rank, int chunk, int mb) const {
  if (rank < 0 || rank >= pp || chunk < 0 || chunk >= chunks || mb < 0 || mb >= micro_batches)
    return -1;
  if (kind == ScheduleKind::DualPipe && chunk != direction(mb)) return -1;
  return chunk_stage(rank, chunk);
}

Loc Schedule::where(int stage, int mb) const {
  DSV3_ASSERT(stage >= 0 && stage < n_stages && mb >= 0 && mb < micro_batches);
  switch (kind) {
    case ScheduleKind::OneF1B:
    case ScheduleKind::ZB1P: return {stage, 0};
    case ScheduleKind::DualPipe: return direction(mb) == 0 ? Loc{stage, 0} : Loc{pp - 1 - stage, 1};
    case ScheduleKind::DualPipeV: return stage < pp ? Loc{stage, 0} : Loc{2 * pp - 1 - stage, 1};
  }
  return {-1, -1};
}

Loc Schedule::prev(int rank, int chunk, int mb) const {
  const int s = stage_of(rank, chunk, mb);
  DSV3_ASSERT(s >= 0);
  return s == 0 ? Loc{-1, -1} : where(s - 1, mb);
}

Loc Schedule::next(int rank, int chunk, int mb) const {
  const int s = stage_of(rank, chunk, mb);
  DSV3_ASSERT(s >= 0);
  return s == n_stages - 1 ? Loc{-1, -1} : where(s + 1, mb);
}

int Schedule::param_copies() const { return kind == ScheduleKind::DualPipe ? 2 : 1; }

Schedule make_schedule(ScheduleKind k, int pp, int M) {
  const char* name = schedule_name(k);
  DSV3_CHECK(pp >= 1, name, ": pipeline ranks pp = ", pp, " (need pp >= 1)");
  DSV3_CHECK(M >= 1, name, ": micro-batches = ", M, " (need at least 1)");
  // The published constraints: dualpipe.py asserts num_ranks % 2 == 0 and num_chunks > 0,
  // num_chunks % 2 == 0, num_chunks >= 2 * num_ranks; dualpipev.py asserts num_chunks > 0,
  // num_chunks >= 2 * num_ranks.
  if (k == ScheduleKind::DualPipe) {
    DSV3_CHECK(pp % 2 == 0, "dualpipe: pipeline ranks pp = ", pp,
               " is odd (each rank pairs stage r with stage pp-1-r: need an even pp)");
    DSV3_CHECK(M % 2 == 0, "dualpipe: micro-batches = ", M,
               " is odd (half enter at each end: need an even number)");
  }
  if (k == ScheduleKind::DualPipe || k == ScheduleKind::DualPipeV)
    DSV3_CHECK(M >= 2 * pp, name, ": micro-batches = ", M, " < 2*pp = ", 2 * pp,
               " (need at least 2*pp)");
  Schedule s;
  s.kind = k;
  s.pp = pp;
  s.micro_batches = M;
  s.chunks = k == ScheduleKind::DualPipe || k == ScheduleKind::DualPipeV ? 2 : 1;
  s.n_stages = k == ScheduleKind::DualPipeV ? 2 * pp : pp;
  s.ops.resize(size_t(pp));
  switch (k) {
    case ScheduleKind::OneF1B: build_1f1b(s, false); break;
    case ScheduleKind::ZB1P: build_1f1b(s, true); break;
    case ScheduleKind::DualPipe: build_dualpipe(s); break;
    case ScheduleKind::DualPipeV: build_dualpipev(s); break;
  }
  return s;
}

std::string op_label(const Op& op) {
  auto one = [](const char* t, int mb, int chunk) {
    return str_cat(t, "(", mb, ",c", chunk, ")");
  };
  switch (op.type) {
    case OpType::F: return one("F", op.mb, op.chunk);
    case OpType::B: return one(op.split ? "Bi" : "B", op.mb, op.chunk);
    case OpType::W: return one("W", op.mb, op.chunk);
    case OpType::FB:
      return one("F", op.mb, op.chunk) + "&" + one(op.split2 ? "Bi" : "B", op.mb2, op.chunk2);
  }
  return "?";
}

void validate(const Schedule& s) {
  const std::string what = str_cat("internal error: ", schedule_name(s.kind), " pp=", s.pp,
                                   " micro-batches=", s.micro_batches, ": ");
  DSV3_CHECK(s.pp >= 1 && s.micro_batches >= 1 && int(s.ops.size()) == s.pp, what,
             "ops for ", s.ops.size(), " ranks");
  DSV3_CHECK(s.n_stages == (s.kind == ScheduleKind::DualPipeV ? 2 * s.pp : s.pp) &&
                 s.chunks == (s.kind == ScheduleKind::DualPipe || s.kind == ScheduleKind::DualPipeV ? 2 : 1),
             what, "n_stages ", s.n_stages, ", chunks ", s.chunks);
  const size_t cells = size_t(s.micro_batches) * size_t(s.n_stages);
  // Per (mb, stage): how many F, B, W; whether its B was split; F and B seen so far on the
  // rank being scanned (for the order checks).
  std::vector<int> nf(cells, 0), nb(cells, 0), nw(cells, 0);
  std::vector<char> split(cells, 0);
  for (int r = 0; r < s.pp; ++r) {
    for (size_t i = 0; i < s.ops[size_t(r)].size(); ++i) {
      const Op& op = s.ops[size_t(r)][i];
      const std::string at = str_cat(what, "rank ", r, " op ", i, " ", op_label(op), ": ");
      auto cell = [&](int mb, int chunk) {
        const int st = s.stage_of(r, chunk, mb);
        DSV3_CHECK(st >= 0, at, "micro-batch ", mb, " chunk ", chunk, " is not on this rank's path");
        const Loc l = s.where(st, mb);
        DSV3_CHECK(l.rank == r && l.chunk == chunk, at, "stage ", st, " of micro-batch ", mb,
                   " belongs on rank ", l.rank, " chunk ", l.chunk);
        return size_t(mb) * size_t(s.n_stages) + size_t(st);
      };
      auto forward = [&](int mb, int chunk) { ++nf[cell(mb, chunk)]; };
      auto backward = [&](int mb, int chunk, bool sp) {
        const size_t c = cell(mb, chunk);
        DSV3_CHECK(nf[c] == 1, at, "backward before its forward");
        ++nb[c];
        split[c] = sp;
      };
      switch (op.type) {
        case OpType::F: forward(op.mb, op.chunk); break;
        case OpType::B: backward(op.mb, op.chunk, op.split); break;
        case OpType::W: {
          const size_t c = cell(op.mb, op.chunk);
          DSV3_CHECK(nb[c] == 1 && split[c], at, "no input-gradient backward before it");
          ++nw[c];
          break;
        }
        case OpType::FB:
          forward(op.mb, op.chunk);
          backward(op.mb2, op.chunk2, op.split2);
          break;
      }
    }
  }
  for (int mb = 0; mb < s.micro_batches; ++mb) {
    for (int st = 0; st < s.n_stages; ++st) {
      const size_t c = size_t(mb) * size_t(s.n_stages) + size_t(st);
      const std::string at = str_cat(what, "micro-batch ", mb, " stage ", st, ": ");
      DSV3_CHECK(nf[c] == 1, at, nf[c], " forwards (need exactly 1)");
      DSV3_CHECK(nb[c] == 1, at, nb[c], " backwards (need exactly 1)");
      DSV3_CHECK(nw[c] == (split[c] ? 1 : 0), at, nw[c], " weight-gradient ops after a ",
                 split[c] ? "split" : "full", " backward (need ", split[c] ? 1 : 0, ")");
    }
  }
}

}  // namespace dsv3::pipe
