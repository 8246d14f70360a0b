// Internal to the GEMM kernels (not a public API): the per-ISA entry points, the packing
// routines they share, and the workspace. Plain declarations only, so that the *_avx512 /
// *_avx2 files may include this header (CMakeLists.txt: no STL templates there).
// gemm.cpp calls an ISA entry point only when active_isa() allows it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/gemm.h"

namespace dsv3::detail {

// Register tile of the AVX-512 microkernels: 14 rows x 32 columns of FP32 accumulators.
// 28 zmm accumulators + 2 B vectors + 1 broadcast = 31 of the 32 zmm registers. Per k step
// the tile does 28 FMAs (or vdpbf16ps) against 2 vector loads + 14 broadcast loads, so the
// FMA pipes, not the load ports, bound it; 28 independent chains cover the 4-cycle FMA
// latency many times over. (6x64 would need 4 B loads per 24 FMAs and waste more rows of
// skinny M; the M edge uses exact-height instances of the same kernel, so nothing is lost
// to padding rows.)
inline constexpr int kMR512 = 14;
inline constexpr int kNR512 = 32;

// A 64-byte aligned scratch buffer of at least `bytes`, owned by the calling thread and
// reused by every GEMM it runs (grown, never shrunk): packing never allocates per tile.
void* gemm_scratch(size_t bytes);
// E4M3 code -> BF16 bits (exact: every E4M3 value is a BF16 value); 256 entries.
const uint16_t* e4m3_bf16_table();
// The scales of an FP8 B micro-panel, for every ISA's packing: sb[b][c] (c < panel_width)
// = the scale of column j0 + c in K block k0/128 + b, for the ceil(kc/128) blocks of
// [k0, k0 + kc) (k0 a multiple of 128), in p's B layout (Block128 either storage order, or
// Col128); 0 for the padding columns c ≥ nr.
void pack_fp8_b_scales(const GemmFP8& p, int64_t j0, int nr, int panel_width, int64_t k0,
                       int64_t kc, float* sb);

void gemm_f32_avx512(const GemmF32& p, int threads);
void gemm_bf16_avx512(const GemmBF16& p, int threads);
void gemm_fp8_avx512(const GemmFP8& p, int threads);
void gemm_f32_avx2(const GemmF32& p, int threads);
void gemm_bf16_avx2(const GemmBF16& p, int threads);
void gemm_fp8_avx2(const GemmFP8& p, int threads);
// Skinny fprop (small M, !trans_a, trans_b): no packing (gemm_small_avx512.cpp).
void gemm_small_f32_avx512(const GemmF32& p, int threads);
void gemm_small_bf16_avx512(const GemmBF16& p, int threads);
void gemm_small_fp8_avx512(const GemmFP8& p, int threads);
// Skinny fprop with only A packed, W broadcast in place (gemm_bcast_avx512.cpp); FP8
// needs trans_b.
void gemm_bcast_bf16_avx512(const GemmBF16& p, int threads);
void gemm_bcast_fp8_avx512(const GemmFP8& p, int threads);
// The same on AVX2 (gemm_small_avx2.cpp).
void gemm_small_f32_avx2(const GemmF32& p, int threads);
void gemm_small_bf16_avx2(const GemmBF16& p, int threads);
void gemm_small_fp8_avx2(const GemmFP8& p, int threads);

// Packing (gemm_pack_avx512.cpp). A micro-panel: mr <= kMR512 rows of op(A) over kc
// elements of K, as 32-bit items (an F32, or a BF16 pair k, k+1), in one of two layouts:
//   k-major  dst[s * kMR512 + r] (item s of row r): what a transposed A (stored [K,M])
//            packs into cheaply. Padding rows are zero.
//   blocked  dst[(s / 16) * 16 * kMR512 + r * 16 + s % 16]: A stored K-contiguous (F32,
//            BF16 or E4M3); each row's run is copied 16 items (one vector) at a time, with
//            no transpose, and a block of 16 items of all rows is contiguous, so the
//            microkernel reads the panel in the same order as the k-major one (its
//            broadcasts are displacements from one pointer per 4 items). Rows >= mr are not
//            written; the last block's items past kc are zero.
// B micro-panel: nr <= kNR512 columns of op(B), as dst[kstep][kNR512]. Padding columns and
// the odd K tail of a BF16 pair are zero.
// trans: the k-major layout; !trans: the blocked layout.
void pack_a_f32_avx512(const float* A, int64_t lda, bool trans, int64_t i0, int mr,
                       int64_t k0, int64_t kc, float* dst);
void pack_b_f32_avx512(const float* B, int64_t ldb, bool trans, int64_t j0, int nr,
                       int64_t k0, int64_t kc, float* dst);
// trans: the k-major layout; !trans: the blocked layout.
void pack_a_bf16_avx512(const uint16_t* A, int64_t lda, bool trans, int64_t i0, int mr,
                        int64_t k0, int64_t kc, uint32_t* dst);
void pack_b_bf16_avx512(const uint16_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                        int64_t k0, int64_t kc, uint32_t* dst);
// Rows i0 .. i0+rows-1 (rows <= 16) of a K-contiguous BF16 matrix as pairs:
// dst[s * stride + r] = (A[i0+r][k0+2s], A[i0+r][k0+2s+1]); lanes r >= rows and the odd K
// tail are zero. The operand of the broadcast-W skinny GEMM (gemm_bcast_avx512.cpp).
// perm64: within each 64 elements of K the pairs come in the order e4m3x64_to_bf16
// decodes E4M3 in (gemm_e4m3_avx512.inc), K zero-padded to a multiple of 64.
void pack_rows16_bf16_avx512(const uint16_t* A, int64_t lda, int64_t i0, int rows, int64_t k0,
                             int64_t kc, uint32_t* dst, int64_t stride, bool perm64);
// The same from E4M3 codes, decoded to BF16, always in the perm64 order.
void pack_rows16_e4m3_avx512(const uint8_t* A, int64_t lda, int64_t i0, int rows, int64_t k0,
                             int64_t kc, uint32_t* dst, int64_t stride);
// E4M3 codes, converted to BF16 on the way (via e4m3_bf16_table()); the blocked layout.
void pack_a_e4m3_avx512(const uint8_t* A, int64_t lda, int64_t i0, int mr, int64_t k0,
                        int64_t kc, uint32_t* dst);
void pack_b_e4m3_avx512(const uint8_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                        int64_t k0, int64_t kc, uint32_t* dst);

// Widened to F32 for Bf16Mode::Fma (core/cpu.h): the F32 panel layouts above (one item per
// element of K) from BF16, or from E4M3 codes as 2^-8 x their value: the scales of such a
// panel are multiplied by kE4m3F32Bias.
inline constexpr float kE4m3F32Bias = 256.f;
void pack_a_bf16_f32_avx512(const uint16_t* A, int64_t lda, bool trans, int64_t i0, int mr,
                            int64_t k0, int64_t kc, float* dst);
void pack_b_bf16_f32_avx512(const uint16_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                            int64_t k0, int64_t kc, float* dst);
void pack_a_e4m3_f32_avx512(const uint8_t* A, int64_t lda, int64_t i0, int mr, int64_t k0,
                            int64_t kc, float* dst);
void pack_b_e4m3_f32_avx512(const uint8_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                            int64_t k0, int64_t kc, float* dst);

// The broadcast-W kernel's FMA form: rows i0 .. i0+rows-1 (rows <= 16) of the FP8 GEMM's A
// (F32, BF16 or E4M3 / 256) as F32, dst[k * stride + r], k zero-padded to a multiple of 64;
// and W's E4M3 rows decoded (/ 256) to dst[r * ld_dst + k], zero-padded the same way
// (dst 64-byte aligned, ld_dst a multiple of 16).
void pack_rows16_fp8a_f32_avx512(const GemmFP8& p, int64_t i0, int rows, int64_t k0, int64_t kc,
                                 float* dst, int64_t stride);
void decode_e4m3_rows_f32_avx512(const uint8_t* W, int64_t ldw, int rows, int64_t kc, float* dst,
                                 int64_t ld_dst);

}  // namespace dsv3::detail
