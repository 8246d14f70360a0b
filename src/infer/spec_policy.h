// When to draft: `--speculative auto|mtp|off` for generate, chat and serve.
//
// MTP speculation (infer/speculative.h) turns one decode step into a verify step over
// [t_L, draft_1..draft_n] that yields 1 + a tokens (a drafts accepted). It pays only when
//
//     tokens per verify step × plain step cost  >  verify step cost
//
// On a large model streaming its weights from memory a verify step costs little more than a
// plain one (docs/PERF.md: 1.11x for one draft); on a small cache-resident model it costs
// nearly n + 1 plain steps and speculation is slower (the demo model: 0.69x). Auto measures
// both costs and the acceptance on this model and machine and drafts only while the estimated
// speedup S = (1 + a) · c_plain / max(c_verify, c_plain) says so (a verify step does a plain
// step's forward and more, so one measured cheaper is noise, and S ≤ 1 + a: a model whose
// drafts are never accepted never drafts, however the timings fall):
//  * calibrate: the first `calibrate` plain steps, then `calibrate` clean verify steps;
//  * decide with hysteresis: start drafting above S = enter, stop below S = leave, so noise
//    around S = 1 does not flap. Drafting stops as soon as S falls (the acceptance and the
//    verify cost are measured every step); it starts only at the end of a probe, which
//    measures the verify cost and the acceptance next to the plain cost, under the same load
//    (plain samples of now against verify samples from a quieter minute would flap);
//  * probe: every `probe_every` steps of the chosen kind run `probe_steps` of the other, which
//    refreshes the estimates the choice leaves stale (acceptance and verify cost while plain,
//    plain cost while drafting; a stale acceptance is replaced by the probe's, not averaged
//    with it); a probe that changes nothing doubles the interval, up to probe_max, so a model
//    where drafting never pays spends well under 1% of its steps probing.
// A verify step right after plain steps first catches the MTP module up over them (one MTP
// forward over every position decoded plainly), so its cost is no verify step's: the caller
// marks it `cold` and only its acceptance counts.
//
// Each cost is the median of the last kCostWindow clean samples of its kind: on a shared
// machine one step in a few hundred is stalled by another process for 10x its time, which
// would drag a mean (and flip a decision); the median of 9 does not move.
//
// Costs are per sequence and kept per batch size (powers of two: 1, 2–3, 4–7, ...): in the
// server a plain step of B sequences is B rows and a verify step 2B, and whether the extra
// rows are nearly free (memory-bound, small B) or cost their full share (compute-bound,
// large B) depends on B. Acceptance is the model's and the text's: one estimate for all.
//
// Where costs come from is injectable (SpecCostModel): the wall clock by default, a model of
// the test's choosing in tests, so every decision is deterministic there.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

enum class SpecMode {
  Off,   // never draft ("off", or "none" as before)
  Mtp,   // draft every step
  Auto,  // draft while it pays (above)
};
// "auto" | "mtp" | "off" | "none" (= off); anything else throws dsv3::Error naming `flag`
// and the accepted values.
SpecMode parse_spec_mode(std::string_view s, std::string_view flag = "--speculative");
const char* spec_mode_name(SpecMode m);  // "off" | "mtp" | "auto"

// One decode step as the policy sees it. A step with no draft is a plain step.
struct SpecStep {
  int64_t seqs = 1;      // sequences decoded together (the batch)
  int64_t drafted = 0;   // draft tokens proposed over all of them
  int64_t accepted = 0;  // of which the verifier accepted
  bool cold = false;     // drafting first caught the MTP module up over plain steps
};

// The cost source: how many seconds to charge a step that took wall_s seconds.
class SpecCostModel {
 public:
  virtual ~SpecCostModel() = default;
  virtual double step_cost(const SpecStep& step, double wall_s) const = 0;
};

// Cost samples per median (odd: the median is a sample).
inline constexpr size_t kCostWindow = 9;

struct SpecPolicyOptions {
  int64_t calibrate = 3;      // clean samples of each kind before the first decision
  int64_t probe_every = 32;   // steps of the chosen kind before a probe of the other
  int64_t probe_max = 1024;   // the interval doubles up to this while the choice holds
  int64_t probe_steps = 4;    // steps per probe (the first drafting one after plain is cold)
  double enter = 1.10;        // start drafting above this estimated speedup
  double leave = 1.00;        // stop drafting below it
  double accept_weight = 0.1; // EMA weight of a new acceptance sample (noisier: 0/1 per draft)
  const SpecCostModel* costs = nullptr;  // nullptr: the wall clock (not owned)
  bool operator==(const SpecPolicyOptions&) const = default;
};

// Which mode ran and why, for stats, logs and /metrics.
struct SpecReport {
  SpecMode mode = SpecMode::Off;
  bool drafting = false;         // the current choice
  std::string reason;            // e.g. "verify step 1.90x a plain step, 1.40 tokens per verify"
  int64_t batch_lo = 1, batch_hi = 1;  // the batch sizes these costs are for
  double plain_step_s = 0;       // per sequence (median of the last samples); 0: not measured
  double verify_step_s = 0;      // per sequence, drafting included (median); 0: not measured
  double acceptance = 0;         // accepted / drafted (EMA)
  double tokens_per_verify = 0;  // per sequence (EMA): 1 + accepted drafts
  double speedup = 0;            // estimated S; 0 until both costs are known
  int64_t plain_steps = 0, verify_steps = 0, switches = 0;  // recorded so far
  std::string batch_label() const;  // "1", "2-3", ...
};

class SpecPolicy {
 public:
  explicit SpecPolicy(SpecMode mode = SpecMode::Off, SpecPolicyOptions o = {});

  SpecMode mode() const { return mode_; }
  const SpecPolicyOptions& options() const { return o_; }
  // Whether the next decode step over `seqs` sequences should draft.
  bool draft(int64_t seqs) const;
  // The step that followed draft(): its shape and wall-clock seconds (charged through the
  // cost model). Mtp and Off only keep the estimates, for reports.
  void record(const SpecStep& step, double wall_s);
  // The state for batch size `seqs`, and for every batch size seen (ascending).
  SpecReport report(int64_t seqs = 1) const;
  std::vector<SpecReport> reports() const;

 private:
  // The last kCostWindow cost samples of one kind of step.
  struct Window {
    std::array<double, kCostWindow> v{};
    int64_t n = 0;                   // samples taken; the window holds min(n, kCostWindow)
    void add(double x) { v[size_t(n++ % kCostWindow)] = x; }
    double median() const;           // 0 when empty
  };
  struct Bucket {                    // one batch-size range
    Window plain, verify;            // per-sequence costs of clean steps
    bool decided = false, drafting = false;
    int64_t since = 0;               // steps since the last probe or switch
    int64_t interval = 0;            // steps between probes
    int64_t probe_left = 0;          // steps of the other kind still to run
    int64_t plain_steps = 0, verify_steps = 0, switches = 0;
  };
  static size_t bucket_of(int64_t seqs);
  double speedup(const Bucket& b) const;  // 0 while a cost is unknown
  void decide(Bucket& b, bool after_probe);
  SpecReport report_of(size_t i) const;

  SpecMode mode_;
  SpecPolicyOptions o_;
  std::vector<Bucket> buckets_;      // [bucket_of(max seqs seen) + 1]
  double acceptance_ = 0, tokens_per_verify_ = 0;  // EMAs over drafting steps
  int64_t accept_n_ = 0;             // samples in them
  bool accept_stale_ = false;        // the next sample replaces them (a probe after long plain)
  int64_t steps_ = 0, accept_at_ = 0;  // steps recorded; the step of the last drafting one
};

}  // namespace dsv3
