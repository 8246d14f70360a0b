// Times a pipeline schedule (schedule.h) under fixed op costs: the check that a generated
// schedule has the bubble, memory and parameter figures of DeepSeek's DualPipe README table
// (report §3.2), and the timeline behind `dsv3 pipeline-sim`.
//
// Model: each rank runs its ops in order, one at a time; an op starts when its rank is free
// and its inputs exist: F(mb, s) after F(mb, s-1); B(mb, s) after F(mb, s) and B(mb, s+1)
// (the input gradient from the next stage); W after its B. An input made on another rank
// arrives `comm` later. An F&B op waits for both halves' inputs and delivers both at its end.
//
// Costs, per chunk (one stage of the schedule), as the README defines them: F a forward, B a
// *full* backward (input and weight gradients), W the weight-gradient part alone, FB the
// overlapped pair. So an input-gradient-only backward (split B) costs B - W and its W costs W.
#pragma once
#include <string>
#include <vector>

#include "parallel/schedule.h"

namespace dsv3::pipe {

struct SimCosts {
  double F = 1, B = 2, W = 1;
  double FB = 0;    // F&B pair; 0: F + its backward half (B, or B - W when split)
  double comm = 0;  // added to every input that comes from another rank
};

struct SimOp {
  Op op;
  double start, end;
};

struct SimResult {
  std::vector<std::vector<SimOp>> timeline;  // [pp] each rank's ops with their times
  double makespan = 0;                       // the last op's end (time starts at 0)
  std::vector<double> busy;                  // [pp] compute time of each rank
  // [pp] idle time of each rank between 0 and the makespan: makespan - busy. bubble_max is the
  // bubble of the papers' formulas. 1F1B and ZB1P give every rank the same M(F+B) of work and
  // the same idle time; DualPipe's ranks overlap different numbers of F&B pairs, and the
  // README figure is the idle time of the ranks that overlap the most, the turning ranks
  // (DualPipe PP/2-1 and PP/2, DualPipeV N-1), which is the maximum (docs/pipeline.md).
  std::vector<double> bubble;
  double bubble_max = 0;
  // [pp] peak number of (micro-batch, chunk) activation sets held at once. A set is held
  // from the start of its F to the end of its last backward op (the full B, or the W). Unit:
  // one micro-batch through one stage of this schedule, the README's "Activation per device"
  // unit (it compares schedules at the same number of stages).
  std::vector<int> peak_chunks;
  int peak_chunks_max = 0;
  // The same in units of one 1F1B stage on the same number of ranks (model / pp): DualPipeV's
  // chunks are half-size stages, so they count 1/2.
  double peak_activations = 0;
  int param_copies = 1;  // Schedule::param_copies()
};

// Runs `s` with costs `c`. Throws Error when `s` does not validate(), on a deadlock (no op
// can start: a dependency cycle), naming each rank's blocked op, and on negative or
// non-finite costs or W > B.
SimResult simulate(const Schedule& s, const SimCosts& c);

// The README's formulas (deepseek-ai/DualPipe, "Pipeline Bubbles and Memory Usage
// Comparison", based on the same number of PP stages), with PP = n_stages of the schedule
// and F, B, W, F&B the costs of one stage (chunk).
//   bubble: 1F1B (PP-1)(F+B), ZB1P (PP-1)(F+B-2W), DualPipe and DualPipeV (PP/2-1)(F&B+B-3W)
//   parameters per device, in stages: 1, 1, 2, 2; activations per device: PP, PP, PP+1, PP+1
// formula_conditions() says when the simulated bubble_max equals the bubble formula exactly.
double formula_bubble(ScheduleKind k, int n_stages, const SimCosts& c);
int formula_param_stages(ScheduleKind k);
int formula_activations(ScheduleKind k, int n_stages);

// "" when simulate(s, c).bubble_max equals formula_bubble() exactly, else why not (the
// assumptions, read off the simulated critical paths (docs/pipeline.md) and checked in the
// tests): comm = 0, and
//   1F1B:      any costs, any M.
//   ZB1P:      M >= PP, B >= 2W (the input-gradient part B-W at least W), W <= F.
//   DualPipe,  B - W = F (the input-gradient backward as long as the forward: the Zero Bubble
//   DualPipeV: paper's T_F = T_B), W <= F, B <= F&B <= F + B.
std::string formula_conditions(const Schedule& s, const SimCosts& c);

// The time op takes under c (an input-gradient B costs B - W; see the top of this file).
double op_cost(const Op& op, const SimCosts& c);

// c.FB resolved: c.FB, or F + B when 0 (dualpipe.py overlaps a forward with a full backward).
double fb_cost(const SimCosts& c);

}  // namespace dsv3::pipe
