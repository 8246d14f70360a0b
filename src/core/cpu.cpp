#include "core/cpu.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace dsv3 {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  f.intel = b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;  // "GenuineIntel"
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (!osxsave) return f;
  unsigned xlo, xhi;
  __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_ok = (xlo & 0x6u) == 0x6u;
  const bool zmm_ok = (xlo & 0xe6u) == 0xe6u;
  if (!ymm_ok) { f.fma = f.f16c = false; return f; }
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = b & (1u << 5);
  f.bmi2 = b & (1u << 8);
  if (zmm_ok) {
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vbmi = c & (1u << 1);
    f.avx512vnni = c & (1u << 11);
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = a & (1u << 5);
  }
  return f;
}

Isa detect_best() {
  const CpuFeatures& f = cpu_features();
  Isa best = Isa::Scalar;
  if (f.avx2 && f.fma && f.f16c && f.bmi2) best = Isa::Avx2;
  if (best == Isa::Avx2 && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl &&
      f.avx512bf16 && f.avx512vbmi && f.avx512vnni)
    best = Isa::Avx512;
  if (const char* env = std::getenv("DSV3_ISA")) {
    Isa want = best;
    if (!std::strcmp(env, "scalar")) want = Isa::Scalar;
    else if (!std::strcmp(env, "avx2")) want = Isa::Avx2;
    else if (!std::strcmp(env, "avx512")) want = Isa::Avx512;
    if (int(want) < int(best)) best = want;
  }
  return best;
}

std::atomic<int> g_active{-1};
std::atomic<int> g_bf16_mode{-1};

Bf16Mode detect_bf16_mode() {
  Bf16Mode m = cpu_features().intel ? Bf16Mode::Fma : Bf16Mode::Dot;
  if (const char* env = std::getenv("DSV3_BF16_GEMM")) {
    if (!std::strcmp(env, "dot")) m = Bf16Mode::Dot;
    else if (!std::strcmp(env, "fma")) m = Bf16Mode::Fma;
  }
  return m;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa best_isa() {
  static const Isa best = detect_best();
  return best;
}

Isa active_isa() {
  const int a = g_active.load(std::memory_order_relaxed);
  return a < 0 ? best_isa() : Isa(a);
}

void set_isa(Isa isa) {
  if (int(isa) > int(best_isa())) isa = best_isa();
  g_active.store(int(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

Bf16Mode best_bf16_mode() {
  static const Bf16Mode m = detect_bf16_mode();
  return m;
}

Bf16Mode bf16_mode() {
  const int m = g_bf16_mode.load(std::memory_order_relaxed);
  return m < 0 ? best_bf16_mode() : Bf16Mode(m);
}

void set_bf16_mode(Bf16Mode m) { g_bf16_mode.store(int(m), std::memory_order_relaxed); }

const char* bf16_mode_name(Bf16Mode m) { return m == Bf16Mode::Fma ? "fma" : "dot"; }

}  // namespace dsv3
