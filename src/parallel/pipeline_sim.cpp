// Pipeline schedule timing (see pipeline_sim.h). Each rank's ops run in their fixed order, so
// an op's start is fixed by its rank's previous op and its inputs alone: sweeping the ranks
// and starting every op whose inputs are known gives the same times as an event-ordered
// simulation, and a sweep that starts nothing while ops remain is a deadlock.
#include "parallel/pipeline_sim.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace dsv3::pipe {

namespace {

// End times per (mb, stage) of what later ops wait for; -1 until the op has run. (A W is
// waited for by nothing: the step ends after it.)
struct Done {
  int S;
  std::vector<double> f, b;  // forward; input gradient (a full or a split B)
  Done(int M, int S) : S(S), f(size_t(M) * S, -1), b(size_t(M) * S, -1) {}
  size_t at(int mb, int st) const { return size_t(mb) * size_t(S) + size_t(st); }
};

// The time an input made at `end` on rank `from` is usable on rank `to`; -1 if not made yet.
double arrive(double end, int from, int to, double comm) {
  if (end < 0) return -1;
  return from == to ? end : end + comm;
}

}  // namespace

double fb_cost(const SimCosts& c) { return c.FB > 0 ? c.FB : c.F + c.B; }

double op_cost(const Op& op, const SimCosts& c) {
  auto backward = [&](bool split) { return split ? c.B - c.W : c.B; };
  switch (op.type) {
    case OpType::F: return c.F;
    case OpType::B: return backward(op.split);
    case OpType::W: return c.W;
    case OpType::FB: return c.FB > 0 ? c.FB : c.F + backward(op.split2);
  }
  return 0;
}

SimResult simulate(const Schedule& s, const SimCosts& c) {
  auto ok = [](double v) { return std::isfinite(v) && v >= 0; };
  DSV3_CHECK(ok(c.F) && ok(c.B) && ok(c.W) && ok(c.FB) && ok(c.comm),
             "pipeline costs must be finite and >= 0 (F=", c.F, " B=", c.B, " W=", c.W, " F&B=", c.FB,
             " comm=", c.comm, ")");
  DSV3_CHECK(c.W <= c.B, "W = ", c.W, " > B = ", c.B,
             ": B is the full backward (input and weight gradients), W its weight part");
  validate(s);  // the sweep below indexes by (mb, stage): a malformed schedule must not reach it
  const int S = s.n_stages, P = s.pp;
  Done done(s.micro_batches, S);
  SimResult res;
  res.timeline.resize(size_t(P));
  std::vector<size_t> next(size_t(P), 0);
  std::vector<double> free_at(size_t(P), 0.0);

  // Earliest start of op's inputs on rank r, or -1 if one is missing; `why` names it.
  auto ready = [&](int r, const Op& op, std::string* why) -> double {
    double t = 0;
    auto need = [&](double at, const char* what, int mb, int st, int from) {
      if (t < 0) return;
      const double a = arrive(at, from, r, c.comm);
      if (a < 0) {
        t = -1;
        if (why) *why = str_cat(what, " of micro-batch ", mb, " stage ", st, " (rank ", from, ")");
      } else {
        t = std::max(t, a);
      }
    };
    auto forward = [&](int mb, int chunk) {
      const int st = s.stage_of(r, chunk, mb);
      if (st > 0) need(done.f[done.at(mb, st - 1)], "F", mb, st - 1, s.where(st - 1, mb).rank);
    };
    auto backward = [&](int mb, int chunk) {
      const int st = s.stage_of(r, chunk, mb);
      need(done.f[done.at(mb, st)], "F", mb, st, r);
      if (st < S - 1) need(done.b[done.at(mb, st + 1)], "B", mb, st + 1, s.where(st + 1, mb).rank);
    };
    switch (op.type) {
      case OpType::F: forward(op.mb, op.chunk); break;
      case OpType::B: backward(op.mb, op.chunk); break;
      case OpType::W: {
        const int st = s.stage_of(r, op.chunk, op.mb);
        need(done.b[done.at(op.mb, st)], "B", op.mb, st, r);
        break;
      }
      case OpType::FB:
        forward(op.mb, op.chunk);
        backward(op.mb2, op.chunk2);
        break;
    }
    return t;
  };
  auto record = [&](int r, const Op& op, double end) {
    auto fwd = [&](int mb, int chunk) { done.f[done.at(mb, s.stage_of(r, chunk, mb))] = end; };
    auto bwd = [&](int mb, int chunk) { done.b[done.at(mb, s.stage_of(r, chunk, mb))] = end; };
    switch (op.type) {
      case OpType::F: fwd(op.mb, op.chunk); break;
      case OpType::B: bwd(op.mb, op.chunk); break;
      case OpType::W: break;
      case OpType::FB:
        fwd(op.mb, op.chunk);
        bwd(op.mb2, op.chunk2);
        break;
    }
  };

  size_t remaining = 0;
  for (const auto& ops : s.ops) remaining += ops.size();
  while (remaining > 0) {
    bool progress = false;
    for (int r = 0; r < P; ++r) {
      const auto& ops = s.ops[size_t(r)];
      for (size_t& i = next[size_t(r)]; i < ops.size(); ++i) {
        const double t = ready(r, ops[i], nullptr);
        if (t < 0) break;
        const double start = std::max(t, free_at[size_t(r)]);
        const double end = start + op_cost(ops[i], c);
        record(r, ops[i], end);
        res.timeline[size_t(r)].push_back(SimOp{ops[i], start, end});
        free_at[size_t(r)] = end;
        --remaining;
        progress = true;
      }
    }
    if (!progress) {
      std::string msg = str_cat("pipeline deadlock in ", schedule_name(s.kind), " pp=", P,
                                " micro-batches=", s.micro_batches, ": no op can start;");
      for (int r = 0; r < P; ++r) {
        const auto& ops = s.ops[size_t(r)];
        const size_t i = next[size_t(r)];
        if (i == ops.size()) continue;
        std::string why;
        ready(r, ops[i], &why);
        msg += str_cat(" rank ", r, " op ", i, " ", op_label(ops[i]), " waits for ", why, ";");
      }
      msg.pop_back();
      DSV3_FAIL(msg);
    }
  }

  res.busy.assign(size_t(P), 0.0);
  res.peak_chunks.assign(size_t(P), 0);
  for (int r = 0; r < P; ++r) {
    int held = 0;
    for (const SimOp& so : res.timeline[size_t(r)]) {
      res.makespan = std::max(res.makespan, so.end);
      res.busy[size_t(r)] += so.end - so.start;
      // A forward takes its activations at its start; the last backward op of (mb, chunk)
      // (a full B, or the W) releases them at its end. An F&B holds both during the pair.
      const Op& op = so.op;
      if (op.type == OpType::F || op.type == OpType::FB) ++held;
      res.peak_chunks[size_t(r)] = std::max(res.peak_chunks[size_t(r)], held);
      if ((op.type == OpType::B && !op.split) || op.type == OpType::W) --held;
      if (op.type == OpType::FB && !op.split2) --held;
    }
    DSV3_ASSERT(held == 0);
  }
  res.bubble.resize(size_t(P));
  for (int r = 0; r < P; ++r) {
    res.bubble[size_t(r)] = res.makespan - res.busy[size_t(r)];
    res.bubble_max = std::max(res.bubble_max, res.bubble[size_t(r)]);
    res.peak_chunks_max = std::max(res.peak_chunks_max, res.peak_chunks[size_t(r)]);
  }
  res.peak_activations = double(res.peak_chunks_max) * P / S;
  res.param_copies = s.param_copies();
  return res;
}

double formula_bubble(ScheduleKind k, int PP, const SimCosts& c) {
  switch (k) {
    case ScheduleKind::OneF1B: return (PP - 1) * (c.F + c.B);
    case ScheduleKind::ZB1P: return (PP - 1) * (c.F + c.B - 2 * c.W);
    case ScheduleKind::DualPipe:
    case ScheduleKind::DualPipeV: return (PP / 2 - 1) * (fb_cost(c) + c.B - 3 * c.W);
  }
  return 0;
}

std::string formula_conditions(const Schedule& s, const SimCosts& c) {
  // Equalities hold to rounding: costs given in decimal are not exact in binary.
  const double eps = 1e-9 * std::max({1.0, c.F, c.B, c.W, fb_cost(c)});
  std::string why;
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) why += (why.empty() ? "" : "; ") + what;
  };
  need(c.comm == 0, str_cat("comm = ", c.comm, " (the formulas assume 0)"));
  switch (s.kind) {
    case ScheduleKind::OneF1B: break;
    case ScheduleKind::ZB1P:
      need(s.micro_batches >= s.pp, str_cat("micro-batches ", s.micro_batches, " < PP = ", s.pp));
      need(c.B >= 2 * c.W - eps, str_cat("B = ", c.B, " < 2W = ", 2 * c.W));
      need(c.W <= c.F + eps, str_cat("W = ", c.W, " > F = ", c.F));
      break;
    case ScheduleKind::DualPipe:
    case ScheduleKind::DualPipeV: {
      const double fb = fb_cost(c);
      need(std::abs(c.B - c.W - c.F) <= eps,
           str_cat("B - W = ", c.B - c.W, " != F = ", c.F, " (the formula takes the input-gradient backward as long as the forward)"));
      need(c.W <= c.F + eps, str_cat("W = ", c.W, " > F = ", c.F));
      need(fb >= c.B - eps && fb <= c.F + c.B + eps,
           str_cat("F&B = ", fb, " outside [B, F+B] = [", c.B, ", ", c.F + c.B, "]"));
      break;
    }
  }
  return why;
}

int formula_param_stages(ScheduleKind k) {
  return k == ScheduleKind::DualPipe || k == ScheduleKind::DualPipeV ? 2 : 1;
}

int formula_activations(ScheduleKind k, int PP) {
  return k == ScheduleKind::DualPipe || k == ScheduleKind::DualPipeV ? PP + 1 : PP;
}

}  // namespace dsv3::pipe
