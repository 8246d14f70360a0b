// GEMV entry points: argument checks, scratch, dispatch on the active ISA.
#include "kernels/gemv.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"
#include "core/parallel.h"
#include "kernels/gemv_impl.h"

namespace dsv3 {

namespace {

template <class P>
void check_args(const P& p, const char* what) {
  DSV3_CHECK(p.M >= 1 && p.M <= kGemvMaxM, what, ": M (rows of x) must be 1..", kGemvMaxM,
             ", got ", p.M);
  DSV3_CHECK(p.N >= 0 && p.K >= 0, what, ": negative dimension N ", p.N, " K ", p.K);
  DSV3_CHECK(p.ldw >= p.K, what, ": ldw ", p.ldw, " < K ", p.K);
  DSV3_CHECK(p.M == 1 || p.ldx >= p.K, what, ": ldx ", p.ldx, " < K ", p.K);
  DSV3_CHECK(p.M == 1 || p.ldy >= p.N, what, ": ldy ", p.ldy, " < N ", p.N);
  DSV3_CHECK(p.N == 0 || (p.w && p.y && (p.K == 0 || p.x)), what, ": null pointer");
}

// 64-byte aligned scratch, reused across calls on the calling thread (decode calls GEMV
// hundreds of times per token; it should not allocate each time).
float* scratch_floats(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n + 16) buf.resize(n + 16);
  const uintptr_t a = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - a % 64) % 64) / sizeof(float);
}

}  // namespace

int64_t gemv_scratch_floats(int64_t M, int64_t K) { return M * ((K + 63) / 64 * 64 + 64); }

void gemv_bf16(const GemvBF16& p, int threads) {
  check_args(p, "gemv_bf16");
  if (p.N == 0) return;
  if (active_isa() == Isa::Avx512) {
    float* s = scratch_floats(size_t(gemv_scratch_floats(p.M, p.K)));
    avx512::gemv_bf16(p, resolve_threads(threads), s);
    return;
  }
  if (active_isa() == Isa::Avx2) {
    float* s = scratch_floats(size_t(gemv_scratch_floats(p.M, p.K)));
    avx2::gemv_bf16(p, resolve_threads(threads), s);
    return;
  }
  gemv_bf16_ref(p);
}

void gemv_fp8(const GemvFP8& p, int threads) {
  check_args(p, "gemv_fp8");
  DSV3_CHECK(p.N == 0 || p.w_scale, "gemv_fp8: null w_scale");
  if (p.N == 0) return;
  if (active_isa() == Isa::Avx512) {
    const int t = resolve_threads(threads);
    float* s = scratch_floats(size_t(t) * size_t(gemv_scratch_floats(p.M, p.K)));
    // The LUT path handles NaN codes exactly and measured faster on Zen 4 (docs in
    // gemv_avx512.cpp); where VDPBF16PS runs at half the FMA rate (core/cpu.h Bf16Mode::Fma:
    // Intel) FMAs on the LUT's values widened to F32 are faster (docs/PERF.md "On an Intel
    // Xeon").
    const Fp8Path path = p.path != Fp8Path::Auto             ? p.path
                         : bf16_mode() == Bf16Mode::Fma ? Fp8Path::F32Lut
                                                        : Fp8Path::BF16Lut;
    avx512::gemv_fp8(p, path, t, s);
    return;
  }
  if (active_isa() == Isa::Avx2) {
    const int t = resolve_threads(threads);
    avx2::gemv_fp8(p, t, scratch_floats(size_t(t) * size_t(gemv_scratch_floats(p.M, p.K))));
    return;
  }
  gemv_fp8_ref(p);
}

uint64_t stream_read(const void* p, size_t bytes, int threads) {
  if (active_isa() == Isa::Avx512) return avx512::stream_read(p, bytes, resolve_threads(threads));
  const auto* b = static_cast<const uint8_t*>(p);
  uint64_t h = 0;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v;
    std::memcpy(&v, b + i, 8);
    h ^= v;
  }
  for (size_t i = bytes / 8 * 8; i < bytes; ++i) h ^= b[i];
  return h;
}

}  // namespace dsv3
