#include "infer/spec_policy.h"

#include <algorithm>
#include <bit>
#include <cstdio>

#include "core/check.h"

namespace dsv3 {
namespace {

// A running mean over the first 1/w samples, then an exponential moving average of weight w:
// the first sample is not over-weighted and later ones follow a changing text.
void ema(double& avg, int64_t n, double x, double w) {
  const double a = std::max(w, 1.0 / double(n));
  avg += a * (x - avg);
}

std::string fmt(const char* f, double a, double b = 0, double c = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, f, a, b, c);
  return buf;
}

}  // namespace

SpecMode parse_spec_mode(std::string_view s, std::string_view flag) {
  if (s == "auto") return SpecMode::Auto;
  if (s == "mtp") return SpecMode::Mtp;
  if (s == "off" || s == "none") return SpecMode::Off;
  DSV3_FAIL(flag, ": unknown value '", s, "' (expected 'auto', 'mtp' or 'off'; 'none' = 'off')");
}

const char* spec_mode_name(SpecMode m) {
  switch (m) {
    case SpecMode::Off: return "off";
    case SpecMode::Mtp: return "mtp";
    case SpecMode::Auto: return "auto";
  }
  return "?";
}

std::string SpecReport::batch_label() const {
  return batch_lo == batch_hi ? std::to_string(batch_lo)
                              : std::to_string(batch_lo) + "-" + std::to_string(batch_hi);
}

SpecPolicy::SpecPolicy(SpecMode mode, SpecPolicyOptions o) : mode_(mode), o_(o) {
  DSV3_CHECK(o_.calibrate >= 1 && o_.probe_steps >= 1 && o_.probe_every >= 1 &&
                 o_.probe_max >= o_.probe_every,
             "speculation policy: calibrate, probe_steps and probe_every must be >= 1 and "
             "probe_max >= probe_every");
  DSV3_CHECK(o_.leave <= o_.enter, "speculation policy: leave (", o_.leave,
             ") must not exceed enter (", o_.enter, ")");
  DSV3_CHECK(o_.accept_weight > 0 && o_.accept_weight <= 1,
             "speculation policy: accept_weight must be in (0, 1], got ", o_.accept_weight);
}

double SpecPolicy::Window::median() const {
  const size_t m = size_t(std::min<int64_t>(n, int64_t(kCostWindow)));
  if (m == 0) return 0;
  std::array<double, kCostWindow> s = v;
  std::nth_element(s.begin(), s.begin() + m / 2, s.begin() + m);
  const double hi = s[m / 2];
  if (m % 2) return hi;
  return (*std::max_element(s.begin(), s.begin() + m / 2) + hi) / 2;  // the two middle samples
}

size_t SpecPolicy::bucket_of(int64_t seqs) {
  DSV3_ASSERT(seqs >= 1);
  return size_t(std::bit_width(uint64_t(seqs)) - 1);  // 1 → 0, 2–3 → 1, 4–7 → 2, ...
}

bool SpecPolicy::draft(int64_t seqs) const {
  if (mode_ != SpecMode::Auto) return mode_ == SpecMode::Mtp;
  const size_t i = bucket_of(seqs);
  if (i >= buckets_.size()) return false;  // plain steps are measured first
  const Bucket& b = buckets_[i];
  if (!b.decided) return b.plain.n >= o_.calibrate;
  return b.probe_left > 0 ? !b.drafting : b.drafting;
}

double SpecPolicy::speedup(const Bucket& b) const {
  const double plain = b.plain.median(), verify = b.verify.median();
  if (accept_n_ == 0 || plain <= 0 || verify <= 0) return 0;
  return tokens_per_verify_ * plain / std::max(verify, plain);
}

void SpecPolicy::record(const SpecStep& step, double wall_s) {
  DSV3_ASSERT(step.seqs >= 1 && step.drafted >= 0 && step.accepted >= 0 &&
              step.accepted <= step.drafted);
  const double cost = o_.costs ? o_.costs->step_cost(step, wall_s) : wall_s;
  const size_t i = bucket_of(step.seqs);
  if (buckets_.size() <= i) buckets_.resize(i + 1);
  Bucket& b = buckets_[i];
  const double per_seq = cost / double(step.seqs);
  ++steps_;
  if (step.drafted > 0) {
    ++b.verify_steps;
    if (accept_stale_) accept_n_ = 0;  // this sample replaces the estimate
    accept_stale_ = false;
    ++accept_n_;
    accept_at_ = steps_;
    ema(acceptance_, accept_n_, double(step.accepted) / double(step.drafted), o_.accept_weight);
    ema(tokens_per_verify_, accept_n_, 1 + double(step.accepted) / double(step.seqs),
        o_.accept_weight);
    if (!step.cold) b.verify.add(per_seq);
  } else {
    ++b.plain_steps;
    b.plain.add(per_seq);
  }
  if (mode_ != SpecMode::Auto) return;
  if (!b.decided) {
    if (b.plain.n < o_.calibrate || b.verify.n < o_.calibrate) return;
    // The first choice has no previous one to stick to: the middle of the hysteresis band.
    b.decided = true;
    b.drafting = speedup(b) > (o_.enter + o_.leave) / 2;
    b.interval = o_.probe_every;
    b.since = 0;
    return;
  }
  if (b.probe_left > 0) {
    if (--b.probe_left == 0) decide(b, true);
    return;
  }
  decide(b, false);
}

void SpecPolicy::decide(Bucket& b, bool after_probe) {
  const double s = speedup(b);
  // Plain → drafting only on a probe's fresh measurements (the header says why).
  const bool want = b.drafting ? s >= o_.leave : after_probe && s > o_.enter;
  if (want != b.drafting) {
    b.drafting = want;
    ++b.switches;
    b.interval = o_.probe_every;
    b.since = 0;
    return;
  }
  if (after_probe) {  // the probe confirmed the choice: look again less often
    b.interval = std::min(2 * b.interval, o_.probe_max);
    b.since = 0;
    return;
  }
  if (++b.since >= b.interval) {
    b.since = 0;
    b.probe_left = o_.probe_steps;
    // An acceptance estimate from long ago (no step drafted since the last probe) says
    // little about the text now: the probe's own steps replace it rather than nudge it.
    if (!b.drafting && steps_ - accept_at_ > o_.probe_every) accept_stale_ = true;
  }
}

SpecReport SpecPolicy::report_of(size_t i) const {
  SpecReport r;
  r.mode = mode_;
  r.batch_lo = int64_t(1) << i;
  r.batch_hi = (int64_t(2) << i) - 1;
  r.acceptance = acceptance_;
  r.tokens_per_verify = tokens_per_verify_;
  const Bucket b = i < buckets_.size() ? buckets_[i] : Bucket{};
  r.plain_step_s = b.plain.median();
  r.verify_step_s = b.verify.median();
  r.speedup = speedup(b);
  r.plain_steps = b.plain_steps;
  r.verify_steps = b.verify_steps;
  r.switches = b.switches;
  const std::string costs =
      r.speedup > 0 ? fmt("verify step %.2fx a plain step, expected %.2f tokens per verify "
                          "(est. speedup %.2fx)",
                          r.verify_step_s / r.plain_step_s, tokens_per_verify_, r.speedup)
                    : std::string();
  switch (mode_) {
    case SpecMode::Off:
      r.reason = "speculation is off";
      break;
    case SpecMode::Mtp:
      r.drafting = true;
      r.reason = "--speculative mtp drafts every step";
      break;
    case SpecMode::Auto:
      r.drafting = b.decided && b.drafting;
      if (!b.decided) {
        r.reason = fmt("calibrating: %.0f of %.0f plain", double(std::min(b.plain.n, o_.calibrate)),
                       double(o_.calibrate)) +
                   fmt(" and %.0f of %.0f verify steps measured",
                       double(std::min(b.verify.n, o_.calibrate)), double(o_.calibrate));
      } else {
        r.reason = costs;
      }
      break;
  }
  return r;
}

SpecReport SpecPolicy::report(int64_t seqs) const { return report_of(bucket_of(seqs)); }

std::vector<SpecReport> SpecPolicy::reports() const {
  std::vector<SpecReport> out;
  for (size_t i = 0; i < buckets_.size(); ++i)
    if (buckets_[i].plain_steps + buckets_[i].verify_steps > 0) out.push_back(report_of(i));
  return out;
}

}  // namespace dsv3
