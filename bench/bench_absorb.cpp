// dsv3 bench absorb [--dtype fp8|bf16|f32] [--t 1] [--heads 128] [--nope 128] [--v 128]
//                   [--kv-lora 512] [--runs 9] [--threads 1] [--json]
//   The two weight-slice products of absorbed MLA decode over one layer's kv_b_proj
//   (q_lat = q_nope·W_UK_h and o = o_lat·W_UV_hᵀ for every head), DeepSeek-V3's shape by
//   default: kernels/mla_absorb.h against the previous approach (dequantise each slice to
//   F32, then gemm_f32). Reported: µs per layer and GB/s of weight bytes (codes + scales),
//   median of --runs runs, each cycling enough copies of W (≥ 256 MB) that no run finds its
//   weights in cache. Heads are split over --threads as the model does. Both wall time and
//   process CPU time per thread are reported: this machine is shared (load often far above
//   its core count), so wall time mostly measures waiting for a core; CPU time does not.
#include <CLI/CLI.hpp>
#include "core/parallel.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/convert.h"
#include "kernels/gemm.h"
#include "kernels/mla_absorb.h"

namespace dsv3::bench {
namespace {

struct AbsorbOpts {
  std::string dtype = "fp8";
  int64_t t = 1, heads = 128, nope = 128, v = 128, kv_lora = 512;
  int runs = 9, threads = 1;
  bool json = false;
};

struct Layer {  // one copy of kv_b_proj [heads·(nope+v), kv_lora] and its block scales
  std::vector<uint8_t> w;
  std::vector<float> scale;
};

// The previous absorbed path: rows [r0, r0+n) dequantised to F32 into out [n, K].
void dequantize(float* out, const Layer& L, DType dt, int64_t K, int64_t ld_scale, int64_t r0,
                int64_t n) {
  for (int64_t r = r0; r < r0 + n; ++r) {
    float* o = out + (r - r0) * K;
    if (dt == DType::F32) {
      std::copy_n(reinterpret_cast<const float*>(L.w.data()) + r * K, K, o);
    } else if (dt == DType::BF16) {
      convert_bf16_to_f32(reinterpret_cast<const uint16_t*>(L.w.data()) + r * K, o, K);
    } else {
      convert_e4m3_to_f32(L.w.data() + r * K, o, K);
      const float* sc = L.scale.data() + (r / 128) * ld_scale;
      for (int64_t k = 0; k < K; ++k) o[k] *= sc[k / 128];
    }
  }
}

void run_absorb(const AbsorbOpts& o) {
  DSV3_CHECK(o.dtype == "fp8" || o.dtype == "bf16" || o.dtype == "f32",
             "--dtype must be fp8, bf16 or f32, got ", o.dtype);
  DSV3_CHECK(o.t >= 1 && o.heads >= 1 && o.nope >= 1 && o.v >= 1 && o.kv_lora >= 1 && o.runs >= 1,
             "--t, --heads, --nope, --v, --kv-lora, --runs must be ≥ 1");
  const DType dt = o.dtype == "fp8" ? DType::F8_E4M3 : o.dtype == "bf16" ? DType::BF16 : DType::F32;
  const int64_t T = o.t, nh = o.heads, dn = o.nope, dv = o.v, dc = o.kv_lora, dkv = dn + dv;
  const int64_t N = nh * dkv, ld_scale = (dc + 127) / 128, es = int64_t(dtype_size(dt));
  const int nt = resolve_threads(o.threads);
  const double layer_bytes =
      double(N * dc * es) + (dt == DType::F8_E4M3 ? double((N + 127) / 128 * ld_scale * 4) : 0.0);
  const int copies = int(std::max<double>(1.0, double(256 << 20) / layer_bytes));

  std::mt19937 rng(1);
  std::vector<Layer> layers(static_cast<size_t>(copies));
  for (Layer& L : layers) {
    L.w.resize(size_t(N * dc * es));
    for (auto& b : L.w) b = uint8_t(rng());
    if (dt == DType::F8_E4M3)
      for (auto& b : L.w) if ((b & 0x7f) == 0x7f) b ^= 1;  // no NaN codes
    if (dt == DType::F32)  // finite floats: exponent field from a small range
      for (int64_t i = 0; i < N * dc; ++i) L.w[size_t(4 * i + 3)] = uint8_t(0x3c + (rng() & 1));
    if (dt == DType::BF16)
      for (int64_t i = 0; i < N * dc; ++i) L.w[size_t(2 * i + 1)] = uint8_t(0x3c + (rng() & 1));
    L.scale.assign(size_t((N + 127) / 128 * ld_scale), 1.0f / 256);
  }
  std::vector<float> q(size_t(T * nh * dn)), olat(size_t(T * nh * dc)), qlat(size_t(T * nh * dc)),
      out(size_t(T * nh * dv));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (float& f : q) f = u(rng);
  for (float& f : olat) f = u(rng);
  std::vector<std::vector<float>> wbuf(size_t(nt), std::vector<float>(size_t(std::max(dn, dv) * dc)));

  auto params = [&](const Layer& L, int64_t r0, int64_t rows) {
    MlaAbsorb p;
    p.T = T; p.rows = rows; p.K = dc; p.dtype = dt; p.w = L.w.data(); p.ldw = dc; p.r0 = r0;
    p.scale = L.scale.data(); p.ld_scale = ld_scale;
    return p;
  };
  auto kernels = [&](const Layer& L) {
    parallel_for(nh, nt, [&](int64_t h) {
      MlaAbsorb p = params(L, h * dkv, dn);
      p.x = q.data() + h * dn; p.ldx = nh * dn; p.y = qlat.data() + h * dc; p.ldy = nh * dc;
      slice_xw(p);
    });
    parallel_for(nh, nt, [&](int64_t h) {
      MlaAbsorb p = params(L, h * dkv + dn, dv);
      p.x = olat.data() + h * dc; p.ldx = nh * dc; p.y = out.data() + h * dv; p.ldy = nh * dv;
      slice_xwt(p);
    });
  };
  auto gemm = [&](float* C, int64_t ldc, const float* A, int64_t lda, const float* B, bool tb,
                  int64_t n, int64_t k) {
    GemmF32 g;
    g.M = T; g.N = n; g.K = k; g.A = A; g.lda = lda; g.B = B; g.ldb = dc; g.trans_b = tb;
    g.C = C; g.ldc = ldc;
    gemm_f32(g, 1);
  };
  auto baseline = [&](const Layer& L) {
    parallel_region(nt, [&](Team& t) {
      float* wb = wbuf[size_t(t.tid())].data();
      t.for_static(nh, [&](int64_t h) {
        dequantize(wb, L, dt, dc, ld_scale, h * dkv, dn);
        gemm(qlat.data() + h * dc, nh * dc, q.data() + h * dn, nh * dn, wb, false, dc, dn);
      });
      t.for_static(nh, [&](int64_t h) {
        dequantize(wb, L, dt, dc, ld_scale, h * dkv + dn, dv);
        gemm(out.data() + h * dv, nh * dv, olat.data() + h * dc, nh * dc, wb, true, dv, dc);
      });
    });
  };
  // One run = every copy once; the two forms alternate run by run so that both see the same
  // machine load (this machine is shared and noisy). Returns {wall, CPU/thread} per layer.
  auto cpu_s = [] {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  };
  auto time_layers = [&](auto&& f, std::vector<double>& wall, std::vector<double>& cpu) {
    const double c0 = cpu_s();
    const auto t0 = std::chrono::steady_clock::now();
    for (const Layer& L : layers) f(L);
    wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                   copies);
    cpu.push_back((cpu_s() - c0) / nt / copies);
  };
  std::vector<double> tk, tb, ck, cb;
  time_layers(kernels, tk, ck);  // warm-up (page faults, OpenMP pool)
  time_layers(baseline, tb, cb);
  tk.clear(); tb.clear(); ck.clear(); cb.clear();
  for (int r = 0; r < o.runs; ++r) {
    time_layers(kernels, tk, ck);
    time_layers(baseline, tb, cb);
  }
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double mk = med(tk), mb = med(tb), mck = med(ck), mcb = med(cb);
  if (o.json) {
    std::printf("{\"dtype\":\"%s\",\"T\":%lld,\"heads\":%lld,\"nope\":%lld,\"v\":%lld,\"kv_lora\":%lld,"
                "\"threads\":%d,\"isa\":\"%s\",\"layer_bytes\":%.0f,\"kernel_us\":%.2f,"
                "\"kernel_gbs\":%.3f,\"dequant_gemm_us\":%.2f,\"dequant_gemm_gbs\":%.3f,"
                "\"speedup\":%.3f,\"kernel_cpu_us\":%.2f,\"kernel_cpu_gbs\":%.3f,"
                "\"dequant_gemm_cpu_us\":%.2f,\"dequant_gemm_cpu_gbs\":%.3f,\"speedup_cpu\":%.3f}\n",
                o.dtype.c_str(), (long long)T, (long long)nh, (long long)dn, (long long)dv,
                (long long)dc, nt, isa_name(active_isa()), layer_bytes, mk * 1e6, layer_bytes / mk / 1e9,
                mb * 1e6, layer_bytes / mb / 1e9, mb / mk, mck * 1e6, layer_bytes / mck / 1e9, mcb * 1e6,
                layer_bytes / mcb / 1e9, mcb / mck);
    return;
  }
  std::printf("absorbed MLA slices, kv_b_proj %s [%lld, %lld], %lld heads, T=%lld, %d thread(s), %s,"
              " %d copies, median of %d runs\n",
              o.dtype.c_str(), (long long)N, (long long)dc, (long long)nh, (long long)T, nt,
              isa_name(active_isa()), copies, o.runs);
  std::printf("                         wall us/layer    GB/s | CPU us/layer    GB/s\n");
  std::printf("  mla_absorb kernels     %12.1f %7.2f | %12.1f %7.2f\n", mk * 1e6, layer_bytes / mk / 1e9,
              mck * 1e6, layer_bytes / mck / 1e9);
  std::printf("  dequantise + gemm_f32  %12.1f %7.2f | %12.1f %7.2f\n", mb * 1e6, layer_bytes / mb / 1e9,
              mcb * 1e6, layer_bytes / mcb / 1e9);
  std::printf("  speedup                %12.2fx        | %12.2fx\n", mb / mk, mcb / mck);
}

}  // namespace

void add_absorb(CLI::App& bench) {
  auto o = std::make_shared<AbsorbOpts>();
  CLI::App* s = bench.add_subcommand("absorb", "Absorbed-MLA weight-slice products vs dequantise+GEMM");
  s->add_option("--dtype", o->dtype, "kv_b_proj dtype: fp8 | bf16 | f32")->capture_default_str();
  s->add_option("--t", o->t, "tokens (rows of x)")->capture_default_str();
  s->add_option("--heads", o->heads, "attention heads")->capture_default_str();
  s->add_option("--nope", o->nope, "qk_nope_head_dim")->capture_default_str();
  s->add_option("--v", o->v, "v_head_dim")->capture_default_str();
  s->add_option("--kv-lora", o->kv_lora, "kv_lora_rank")->capture_default_str();
  s->add_option("--runs", o->runs, "timed runs (median reported)")->capture_default_str();
  s->add_option("--threads", o->threads, "threads over heads (0 = all cores)")->capture_default_str();
  s->add_flag("--json", o->json, "print one JSON object");
  s->callback([o] { run_absorb(*o); });
}

}  // namespace dsv3::bench
