// dsv3 bench gemm --m M --n N --k K --dtype f32|bf16|fp8 [--form fprop|dgrad|wgrad]
//                 [--threads T] [--isa avx512|avx2|scalar] [--json]
#include <CLI/CLI.hpp>

#include <cstdio>
#include <ctime>
#include <functional>
#include <random>
#include <string>

#include "bench_util.h"
#include "core/check.h"
#include "core/cpu.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "kernels/gemm.h"
#include "kernels/quant.h"

namespace dsv3::bench {

namespace {

struct GemmOpts {
  int64_t m = 2048, n = 2048, k = 2048;
  std::string dtype = "f32";
  std::string form = "fprop";
  int threads = 0;
  std::string isa;  // empty: the best this CPU runs (DSV3_ISA may lower it)
  double seconds = 1.0;
  bool json = false;
};

double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

void run_gemm(const GemmOpts& o) {
  double cpu_per_rep = 0;
  DSV3_CHECK(o.m > 0 && o.n > 0 && o.k > 0, "--m, --n and --k must be positive");
  const int threads = resolve_threads(o.threads);
  if (!o.isa.empty()) {
    // set_isa clamps to what the CPU has; the output names the level actually run.
    if (o.isa == "avx512") set_isa(Isa::Avx512);
    else if (o.isa == "avx2") set_isa(Isa::Avx2);
    else if (o.isa == "scalar") set_isa(Isa::Scalar);
    else DSV3_FAIL("--isa must be avx512, avx2 or scalar, got '", o.isa, "'");
  }
  const char* isa = isa_name(active_isa());
  // Operand shapes for each form of y = x·Wᵀ (kernels/gemm.h); M,N,K are the GEMM's.
  bool ta = false, tb = true;
  if (o.form == "dgrad") tb = false;
  else if (o.form == "wgrad") { ta = true; tb = false; }
  else DSV3_CHECK(o.form == "fprop", "--form must be fprop, dgrad or wgrad, got '", o.form, "'");
  const int64_t lda = ta ? o.m : o.k, ldb = tb ? o.k : o.n;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  Tensor c = Tensor::empty(DType::F32, {o.m, o.n});
  Timing t;
  // CPU seconds of the whole process over the timed runs (warm-up included): on a shared
  // machine GFLOP per CPU-second of one thread is the stable per-core figure.
  auto timed = [&](const std::function<void()>& body) {
    const double c0 = cpu_seconds();
    Timing r = time_it(body, o.seconds);
    cpu_per_rep = (cpu_seconds() - c0) / double(r.reps + 1);
    return r;
  };
  if (o.dtype == "f32") {
    Tensor a = Tensor::empty(DType::F32, {o.m * o.k}), b = Tensor::empty(DType::F32, {o.k * o.n});
    for (int64_t i = 0; i < a.numel(); ++i) a.ptr<float>()[i] = u(rng);
    for (int64_t i = 0; i < b.numel(); ++i) b.ptr<float>()[i] = u(rng);
    GemmF32 p{o.m, o.n, o.k, a.ptr<float>(), lda, ta, b.ptr<float>(), ldb, tb, c.ptr<float>(), o.n, false};
    t = timed([&] { gemm_f32(p, threads); });
  } else if (o.dtype == "bf16") {
    Tensor a = Tensor::empty(DType::BF16, {o.m * o.k}), b = Tensor::empty(DType::BF16, {o.k * o.n});
    for (int64_t i = 0; i < a.numel(); ++i) a.ptr<uint16_t>()[i] = f32_to_bf16(u(rng));
    for (int64_t i = 0; i < b.numel(); ++i) b.ptr<uint16_t>()[i] = f32_to_bf16(u(rng));
    GemmBF16 p{o.m, o.n, o.k, a.ptr<uint16_t>(), lda, ta, b.ptr<uint16_t>(), ldb, tb, c.ptr<float>(), o.n, false};
    t = timed([&] { gemm_bf16(p, threads); });
  } else if (o.dtype == "fp8") {
    // DeepSeek-V3 layouts (kernels/gemm.h): A [M,K] with 1x128 scales; B the weight with
    // 128x128 block scales ([N,K] fprop, [K,N] dgrad) or, for wgrad, the activations
    // quantised along tokens with 128x1 scales ([N,K]). Random codes, NaN codes avoided.
    std::uniform_int_distribution<int> code(0, 255);
    auto fill = [&](Tensor& t) {
      for (int64_t i = 0; i < t.numel(); ++i) t.ptr<uint8_t>()[i] = uint8_t(code(rng) & 0xF7);
    };
    const int64_t kb = fp8_blocks(o.k);
    Tensor a = Tensor::empty(DType::U8, {o.m * o.k}), b = Tensor::empty(DType::U8, {o.k * o.n});
    fill(a);
    fill(b);
    Tensor sa = Tensor::empty(DType::F32, {o.m * kb});
    Tensor sb = Tensor::empty(DType::F32, {(o.n + 127) * kb + (o.k + 127) * fp8_blocks(o.n)});
    for (int64_t i = 0; i < sa.numel(); ++i) sa.ptr<float>()[i] = 0.5f + 0.001f * float(i % 97);
    for (int64_t i = 0; i < sb.numel(); ++i) sb.ptr<float>()[i] = 0.25f + 0.001f * float(i % 89);
    GemmFP8 p;
    p.M = o.m; p.N = o.n; p.K = o.k;
    p.A = a.ptr<uint8_t>(); p.lda = o.k; p.a_scale = sa.ptr<float>(); p.lda_scale = kb;
    p.B = b.ptr<uint8_t>(); p.trans_b = o.form != "dgrad"; p.ldb = p.trans_b ? o.k : o.n;
    p.b_layout = o.form == "wgrad" ? Fp8BLayout::Col128 : Fp8BLayout::Block128;
    p.b_scale = sb.ptr<float>(); p.ldb_scale = p.trans_b ? kb : fp8_blocks(o.n);
    p.C = c.ptr<float>(); p.ldc = o.n;
    t = timed([&] { gemm_fp8(p, threads); });
  } else {
    DSV3_FAIL("--dtype must be f32, bf16 or fp8, got '", o.dtype, "'");
  }
  const double gflops = 2.0 * double(o.m) * double(o.n) * double(o.k) / t.median_s * 1e-9;
  if (o.json) {
    std::printf("{\"bench\":\"gemm\",\"dtype\":\"%s\",\"form\":\"%s\",\"isa\":\"%s\",\"m\":%lld,\"n\":%lld,"
                "\"k\":%lld,\"threads\":%d,\"reps\":%d,\"median_ms\":%.4f,\"gflops\":%.2f,"
                "\"gflops_best\":%.2f,\"gflops_cpu\":%.2f}\n",
                o.dtype.c_str(), o.form.c_str(), isa, (long long)o.m, (long long)o.n,
                (long long)o.k, threads, t.reps, t.median_s * 1e3, gflops,
                2.0 * double(o.m) * double(o.n) * double(o.k) / t.min_s * 1e-9,
                2.0 * double(o.m) * double(o.n) * double(o.k) / cpu_per_rep * 1e-9);
  } else {
    std::printf("gemm %s %s %s M=%lld N=%lld K=%lld threads=%d: %.1f GFLOP/s (median of %d, %.3f ms)\n",
                o.dtype.c_str(), o.form.c_str(), isa, (long long)o.m, (long long)o.n,
                (long long)o.k, threads, gflops, t.reps, t.median_s * 1e3);
  }
}

}  // namespace

void add_gemm(CLI::App& bench) {
  auto o = std::make_shared<GemmOpts>();
  CLI::App* s = bench.add_subcommand("gemm", "GEMM throughput in GFLOP/s");
  s->add_option("--m", o->m, "rows of the output (tokens)")->capture_default_str();
  s->add_option("--n", o->n, "columns of the output (output features)")->capture_default_str();
  s->add_option("--k", o->k, "contraction length (input features)")->capture_default_str();
  s->add_option("--dtype", o->dtype, "f32 | bf16 | fp8")->capture_default_str();
  s->add_option("--form", o->form, "fprop (x·Wᵀ) | dgrad (dy·W) | wgrad (dyᵀ·x)")->capture_default_str();
  s->add_option("--threads", o->threads, "threads (0 = all cores)")->capture_default_str();
  s->add_option("--isa", o->isa, "avx512 | avx2 | scalar (default: the best this CPU runs)");
  s->add_option("--seconds", o->seconds, "time budget per measurement")->capture_default_str();
  s->add_flag("--json", o->json, "print one JSON object");
  s->callback([o] { run_gemm(*o); });
}

}  // namespace dsv3::bench
