// dsv3 bench membw [--mb 1024] [--threads T] [--json]
//   Streaming-read bandwidth with the widest loads (kernels/gemv.h stream_read) over a
//   buffer far larger than L3: "the measured memory bandwidth" GEMV is judged by.
// dsv3 bench gemv --n N --k K --dtype bf16|fp8 [--m 1..16] [--path auto|f16|lut|lut8|lut32]
//                 [--threads T] [--json]
//   Decode GEMV in GB/s of weight bytes streamed (codes + scales), measured back to back
//   with membw in the same run, and their ratio. Several copies of W (≥ 512 MB together)
//   are cycled so that no call finds its weights in cache.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/clock.h"
#include "core/check.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "kernels/gemv.h"
#include "kernels/quant.h"

namespace dsv3::bench {

namespace {

using Clock = std::chrono::steady_clock;

double process_cpu_s() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// Wall seconds of f(); *cpu_per_thread gets the process CPU seconds it used divided by
// `threads`. Other processes share these cores, so wall time includes time our threads
// sat descheduled; CPU time does not (it does include the pool's spin-waits, so it is the
// conservative side). Both are reported.
double seconds_of(const std::function<void()>& f, int threads = 1, double* cpu_per_thread = nullptr) {
  const double c0 = cpu_per_thread ? process_cpu_s() : 0.0;
  const auto t0 = Clock::now();
  f();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  if (cpu_per_thread) *cpu_per_thread = (process_cpu_s() - c0) / threads;
  return wall;
}



// Fills with a cheap pseudo-random stream; every page gets written (so reads hit DRAM,
// not the shared zero page).
void fill_random(uint8_t* p, size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    p[i] = uint8_t(s >> 24);
  }
}

struct MembwOpts {
  int64_t mb = 1024;
  int threads = 0;
  double seconds = 2.0;
  bool json = false;
};

// One timed pass of stream_read over buf; returns GB/s (1 GB = 1e9 bytes) by wall time
// and, in *cpu_gbs, by CPU time per thread.
double membw_pass(const Buffer& buf, int threads, uint64_t* sink, double* cpu_gbs = nullptr) {
  double cpu = 0;
  const double t = seconds_of([&] { *sink ^= stream_read(buf.data(), buf.size(), threads); }, threads, &cpu);
  if (cpu_gbs) *cpu_gbs = double(buf.size()) / cpu * 1e-9;
  return double(buf.size()) / t * 1e-9;
}

void run_membw(const MembwOpts& o) {
  DSV3_CHECK(o.mb >= 64, "--mb must be at least 64 (far larger than L3), got ", o.mb);
  DSV3_CHECK(o.mb <= (int64_t(1) << 30), "--mb ", o.mb, " is too large");  // << 20 must not wrap
  const int threads = resolve_threads(o.threads);
  Buffer buf(size_t(o.mb) << 20);
  fill_random(buf.as<uint8_t>(), buf.size(), 7);
  uint64_t sink = 0;
  std::vector<double> gbs, cpu_gbs;
  membw_pass(buf, threads, &sink);  // warm-up: page faults, frequency
  const auto start = Clock::now();
  while (gbs.size() < 5 || (std::chrono::duration<double>(Clock::now() - start).count() < o.seconds && gbs.size() < 1000)) {
    double c = 0;
    gbs.push_back(membw_pass(buf, threads, &sink, &c));
    cpu_gbs.push_back(c);
  }
  const double med = median(gbs), best = *std::max_element(gbs.begin(), gbs.end()), cmed = median(cpu_gbs);
  if (o.json)
    // spin_us: how long the pool's waiting threads poll before they sleep (core/parallel.h);
    // on a shared machine it changes wall times, so runs say which they used.
    std::printf("{\"bench\":\"membw\",\"mb\":%lld,\"threads\":%d,\"spin_us\":%d,"
                "\"reps\":%zu,\"gbps\":%.2f,\"best_gbps\":%.2f,\"cpu_gbps\":%.2f,\"sink\":%llu}\n",
                (long long)o.mb, threads, spin_us(), gbs.size(), med, best, cmed,
                (unsigned long long)(sink & 1));
  else
    std::printf("membw %lld MiB threads=%d (pool spin %d us): %.1f GB/s median of %zu (best "
                "%.1f); by CPU time per thread %.1f GB/s\n",
                (long long)o.mb, threads, spin_us(), med, gbs.size(), best, cmed);
}

struct GemvOpts {
  int64_t n = 7168, k = 18432, m = 1;
  std::string dtype = "fp8";
  std::string path = "auto";
  int threads = 0;
  int64_t membw_mb = 512;
  int64_t copies = 0;  // 0: enough for 512 MB; 1 with a small W measures in-cache speed
  int64_t offset = 0;  // bytes W starts past a 64-byte boundary (a mapped file's tensors may)
  double seconds = 3.0;
  bool json = false;
};

void run_gemv(const GemvOpts& o) {
  DSV3_CHECK(o.n > 0 && o.k > 0, "--n and --k must be positive");
  DSV3_CHECK(o.m >= 1 && o.m <= kGemvMaxM, "--m must be 1..", kGemvMaxM, ", got ", o.m);
  DSV3_CHECK(o.membw_mb >= 1 && o.membw_mb <= (int64_t(1) << 30), "--membw-mb must be in [1, 2^30], got ",
             o.membw_mb);
  DSV3_CHECK(o.n <= (int64_t(1) << 40) / o.k, "--n x --k = ", o.n, " x ", o.k, " is too large");
  DSV3_CHECK(o.dtype == "bf16" || o.dtype == "fp8", "--dtype must be bf16 or fp8, got '", o.dtype, "'");
  Fp8Path path = Fp8Path::Auto;
  if (o.path == "f16") path = Fp8Path::F16;
  else if (o.path == "lut") path = Fp8Path::BF16Lut;
  else if (o.path == "lut8") path = Fp8Path::BF16LutX8;
  else if (o.path == "lut32") path = Fp8Path::F32Lut;
  else DSV3_CHECK(o.path == "auto", "--path must be auto, f16, lut, lut8 or lut32, got '", o.path, "'");
  const int threads = resolve_threads(o.threads);
  const bool fp8 = o.dtype == "fp8";
  const int64_t nb = fp8_blocks(o.n), kb = fp8_blocks(o.k);
  const size_t w_bytes = size_t(o.n) * size_t(o.k) * (fp8 ? 1 : 2);
  const size_t s_bytes = fp8 ? size_t(nb * kb) * 4 : 0;
  const size_t bytes = w_bytes + s_bytes;
  const size_t copies = o.copies > 0 ? size_t(o.copies)
                                     : std::max<size_t>(2, ((size_t(512) << 20) + bytes - 1) / bytes);

  std::vector<Buffer> w, s;
  for (size_t c = 0; c < copies; ++c) {
    w.emplace_back(w_bytes + size_t(o.offset));
    fill_random(w.back().as<uint8_t>(), w_bytes + size_t(o.offset), 11 + c);
    if (fp8) {
      // Random codes but no NaN (0x7f / 0xff), as in a real checkpoint.
      uint8_t* q = w.back().as<uint8_t>() + o.offset;
      for (size_t i = 0; i < w_bytes; ++i) if ((q[i] & 0x7f) == 0x7f) q[i] ^= 1;
      s.emplace_back(s_bytes);
      for (int64_t i = 0; i < nb * kb; ++i) s.back().as<float>()[i] = 1e-3f * float(1 + i % 7);
    } else {
      // Random BF16 bit patterns would include inf/NaN; use values in [-1, 1).
      uint16_t* h = reinterpret_cast<uint16_t*>(w.back().as<uint8_t>() + o.offset);
      for (size_t i = 0; i < w_bytes / 2; ++i) h[i] = f32_to_bf16(float(int(h[i]) - 32768) / 32768.f);
    }
  }
  std::vector<float> x(size_t(o.m * o.k)), y(size_t(o.m * o.n));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 97) - 48) / 48.f;

  auto call = [&](size_t c) {
    if (fp8) {
      GemvFP8 p{o.m, o.n, o.k, w[c].as<uint8_t>() + o.offset, o.k, s[c].as<float>(), x.data(), o.k, y.data(), o.n, false, path};
      gemv_fp8(p, threads);
    } else {
      GemvBF16 p{o.m, o.n, o.k, reinterpret_cast<const uint16_t*>(w[c].as<uint8_t>() + o.offset), o.k, x.data(), o.k,
                 y.data(), o.n, false};
      gemv_bf16(p, threads);
    }
  };
  Buffer bw_buf(size_t(o.membw_mb) << 20);
  fill_random(bw_buf.as<uint8_t>(), bw_buf.size(), 3);
  uint64_t sink = 0;
  for (size_t c = 0; c < copies; ++c) call(c);  // warm-up
  membw_pass(bw_buf, threads, &sink);
  // Rounds of one membw pass then one GEMV call per copy, so both see the same machine
  // state (other processes share these cores).
  std::vector<double> g_gbs, m_gbs, gc_gbs, mc_gbs;
  const auto start = Clock::now();
  while (m_gbs.size() < 5 || std::chrono::duration<double>(Clock::now() - start).count() < o.seconds) {
    double cpu_gbs = 0, cpu = 0;
    m_gbs.push_back(membw_pass(bw_buf, threads, &sink, &cpu_gbs));
    mc_gbs.push_back(cpu_gbs);
    for (size_t c = 0; c < copies; ++c) {
      g_gbs.push_back(double(bytes) / seconds_of([&] { call(c); }, threads, &cpu) * 1e-9);
      gc_gbs.push_back(double(bytes) / cpu * 1e-9);
    }
    if (m_gbs.size() >= 1000) break;
  }
  const double g = median(g_gbs), m = median(m_gbs), gc = median(gc_gbs), mc = median(mc_gbs);
  const char* pname = !fp8 ? "-" : path == Fp8Path::F16 ? "f16" : path == Fp8Path::BF16Lut ? "lut"
                      : path == Fp8Path::BF16LutX8 ? "lut8"
                      : path == Fp8Path::F32Lut    ? "lut32" : "auto";
  if (o.json)
    std::printf("{\"bench\":\"gemv\",\"dtype\":\"%s\",\"path\":\"%s\",\"m\":%lld,\"n\":%lld,"
                "\"k\":%lld,\"threads\":%d,\"spin_us\":%d,\"weight_mb\":%.1f,\"copies\":%zu,\"calls\":%zu,"
                "\"gbps\":%.2f,\"membw_gbps\":%.2f,\"ratio\":%.3f,\"median_ms\":%.4f,"
                "\"cpu_gbps\":%.2f,\"cpu_membw_gbps\":%.2f,\"cpu_ratio\":%.3f}\n",
                o.dtype.c_str(), pname, (long long)o.m, (long long)o.n, (long long)o.k, threads,
                spin_us(), double(bytes) / 1e6, copies, g_gbs.size(), g, m, g / m,
                double(bytes) / g * 1e-6, gc, mc,
                gc / mc);
  else
    std::printf("gemv %s path=%s M=%lld N=%lld K=%lld threads=%d spin_us=%d (%.1f MB x %zu copies): "
                "%.1f GB/s, membw %.1f GB/s, ratio %.3f (medians of %zu calls / %zu passes); "
                "by CPU time per thread: %.1f vs %.1f GB/s, ratio %.3f\n",
                o.dtype.c_str(), pname, (long long)o.m, (long long)o.n, (long long)o.k, threads,
                spin_us(), double(bytes) / 1e6, copies, g, m, g / m, g_gbs.size(), m_gbs.size(),
                gc, mc, gc / mc);
  if (sink == 0xdeadbeef) std::printf(" ");
}

}  // namespace

void add_membw(CLI::App& bench) {
  auto o = std::make_shared<MembwOpts>();
  CLI::App* s = bench.add_subcommand("membw", "Streaming-read memory bandwidth in GB/s");
  s->add_option("--mb", o->mb, "buffer size in MiB (far larger than L3)")->capture_default_str();
  s->add_option("--threads", o->threads, "threads (0 = all cores)")->capture_default_str();
  s->add_option("--seconds", o->seconds, "time budget")->capture_default_str();
  s->add_flag("--json", o->json, "print one JSON object");
  s->callback([o] { run_membw(*o); });
}

void add_gemv(CLI::App& bench) {
  auto o = std::make_shared<GemvOpts>();
  CLI::App* s = bench.add_subcommand("gemv", "Decode GEMV in GB/s of weights, vs membw");
  s->add_option("--n", o->n, "rows of W (output features)")->capture_default_str();
  s->add_option("--k", o->k, "columns of W (input features)")->capture_default_str();
  s->add_option("--m", o->m, "rows of x (tokens, 1..kGemvMaxM = 16)")->capture_default_str();
  s->add_option("--dtype", o->dtype, "bf16 | fp8")->capture_default_str();
  s->add_option("--path", o->path, "FP8 conversion: auto | f16 | lut | lut8 | lut32")->capture_default_str();
  s->add_option("--threads", o->threads, "threads (0 = all cores)")->capture_default_str();
  s->add_option("--membw-mb", o->membw_mb, "buffer of the membw reference, MiB")->capture_default_str();
  s->add_option("--copies", o->copies, "copies of W cycled (0 = enough for 512 MB)")->capture_default_str();
  s->add_option("--seconds", o->seconds, "time budget")->capture_default_str();
  s->add_option("--offset", o->offset, "bytes W starts past a 64-byte boundary (0..63; bf16: even)")
      ->capture_default_str();
  s->add_flag("--json", o->json, "print one JSON object");
  s->callback([o] {
    DSV3_CHECK(o->offset >= 0 && o->offset < 64 && (o->dtype != "bf16" || o->offset % 2 == 0),
               "--offset must be in [0, 64), even for bf16; got ", o->offset);
    run_gemv(*o);
  });
}

}  // namespace dsv3::bench
