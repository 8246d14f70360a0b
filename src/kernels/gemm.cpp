// GEMM entry points: argument checks, dispatch on the active ISA, and the shared
// workspace / E4M3 table the ISA files use (gemm_internal.h).
#include "kernels/gemm.h"

#include <cstdlib>
#include <memory>

#include "core/check.h"
#include "core/cpu.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/gemm_internal.h"
#include "kernels/quant.h"

namespace dsv3 {

namespace detail {

void* gemm_scratch(size_t bytes) {
  struct Scratch {
    void* p = nullptr;
    size_t size = 0;
    ~Scratch() { std::free(p); }
  };
  thread_local Scratch s;
  if (bytes > s.size) {
    std::free(s.p);
    s.size = (bytes + 4095) / 4096 * 4096;
    s.p = std::aligned_alloc(64, s.size);
    DSV3_CHECK(s.p != nullptr, "gemm: out of memory for a ", s.size, "-byte packing buffer");
  }
  return s.p;
}

const uint16_t* e4m3_bf16_table() {
  static const struct Table {
    uint16_t v[256];
    Table() {
      for (int c = 0; c < 256; ++c) v[c] = f32_to_bf16(e4m3_to_f32(uint8_t(c)));
    }
  } table;
  return table.v;
}

void pack_fp8_b_scales(const GemmFP8& p, int64_t j0, int nr, int panel_width, int64_t k0,
                       int64_t kc, float* sb) {
  const int64_t nblk = fp8_blocks(kc), kb0 = k0 / kFp8Block;
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t kb = kb0 + b;
    for (int c = 0; c < panel_width; ++c) {
      float s = 0.f;
      if (c < nr) {
        const int64_t j = j0 + c;
        if (p.b_layout == Fp8BLayout::Col128) s = p.b_scale[j * p.ldb_scale + kb];
        else if (p.trans_b) s = p.b_scale[(j / kFp8Block) * p.ldb_scale + kb];
        else s = p.b_scale[kb * p.ldb_scale + j / kFp8Block];
      }
      sb[b * panel_width + c] = s;
    }
  }
}

}  // namespace detail

namespace {

template <class P>
void check_args(const P& p, const char* what) {
  DSV3_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, what, ": negative dimension");
  DSV3_CHECK(p.ldc >= p.N, what, ": ldc ", p.ldc, " < N ", p.N);
  DSV3_CHECK(p.lda >= (p.trans_a ? p.M : p.K), what, ": lda ", p.lda, " too small");
  DSV3_CHECK(p.ldb >= (p.trans_b ? p.K : p.N), what, ": ldb ", p.ldb, " too small");
  DSV3_CHECK(p.M * p.N == 0 || p.C, what, ": C is null");
  DSV3_CHECK(p.M * p.N * p.K == 0 || (p.A && p.B), what, ": A or B is null");
}

// K = 0: the product is an empty sum.
void zero_c(float* C, int64_t ldc, int64_t M, int64_t N) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = 0.f;
}

// Handles the degenerate shapes; true when nothing is left to compute.
template <class P>
bool trivial(const P& p) {
  if (p.M == 0 || p.N == 0) return true;
  if (p.K == 0) {
    if (!p.accumulate) zero_c(p.C, p.ldc, p.M, p.N);
    return true;
  }
  return false;
}

void check_fp8_args(const GemmFP8& p) {
  DSV3_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "gemm_fp8: negative dimension");
  DSV3_CHECK(p.ldc >= p.N, "gemm_fp8: ldc ", p.ldc, " < N ", p.N);
  DSV3_CHECK(p.lda >= p.K, "gemm_fp8: lda ", p.lda, " < K ", p.K, " (A is stored [M,K])");
  DSV3_CHECK(p.ldb >= (p.trans_b ? p.K : p.N), "gemm_fp8: ldb ", p.ldb, " too small");
  DSV3_CHECK(p.b_layout == Fp8BLayout::Block128 || p.trans_b,
             "gemm_fp8: Col128 (128x1) B scales need B stored [N,K] (trans_b = true)");
  if (p.M * p.N == 0) return;
  DSV3_CHECK(p.C, "gemm_fp8: C is null");
  if (p.K == 0) return;
  DSV3_CHECK(p.B && p.b_scale, "gemm_fp8: B or b_scale is null");
  DSV3_CHECK(p.A_f32 || p.A_bf16 || (p.A && p.a_scale),
             "gemm_fp8: A (with a_scale), A_bf16 and A_f32 are all null");
  const int64_t kb = fp8_blocks(p.K), nb = (p.N + 127) / 128;
  if (!p.A_bf16 && !p.A_f32) DSV3_CHECK(p.lda_scale >= kb, "gemm_fp8: lda_scale ", p.lda_scale, " < blocks(K) ", kb);
  if (p.b_layout == Fp8BLayout::Col128 || p.trans_b)
    DSV3_CHECK(p.ldb_scale >= kb, "gemm_fp8: ldb_scale ", p.ldb_scale, " < blocks(K) ", kb);
  else
    DSV3_CHECK(p.ldb_scale >= nb, "gemm_fp8: ldb_scale ", p.ldb_scale, " < blocks(N) ", nb);
}

}  // namespace

void gemm_f32(const GemmF32& p, int threads) {
  check_args(p, "gemm_f32");
  if (trivial(p)) return;
  threads = resolve_threads(threads);
  if (active_isa() >= Isa::Avx512) return detail::gemm_f32_avx512(p, threads);
  if (active_isa() >= Isa::Avx2) return detail::gemm_f32_avx2(p, threads);
  gemm_f32_ref(p);
}

void gemm_bf16(const GemmBF16& p, int threads) {
  if (p.A_f32) {
    DSV3_CHECK(!p.trans_a, "gemm_bf16: A_f32 needs trans_a = false");
    GemmBF16 q = p;  // the checks below then see an A
    q.A = reinterpret_cast<const uint16_t*>(p.A_f32);
    check_args(q, "gemm_bf16");
  } else {
    check_args(p, "gemm_bf16");
  }
  if (trivial(p)) return;
  threads = resolve_threads(threads);
  if (active_isa() >= Isa::Avx512) return detail::gemm_bf16_avx512(p, threads);
  if (active_isa() >= Isa::Avx2) return detail::gemm_bf16_avx2(p, threads);
  gemm_bf16_ref(p);
}

void gemm_fp8(const GemmFP8& p, int threads) {
  check_fp8_args(p);
  if (p.M == 0 || p.N == 0) return;
  if (p.K == 0) {
    if (!p.accumulate) zero_c(p.C, p.ldc, p.M, p.N);
    return;
  }
  threads = resolve_threads(threads);
  if (active_isa() >= Isa::Avx512) return detail::gemm_fp8_avx512(p, threads);
  if (active_isa() >= Isa::Avx2) return detail::gemm_fp8_avx2(p, threads);
  gemm_fp8_ref(p);
}

}  // namespace dsv3
