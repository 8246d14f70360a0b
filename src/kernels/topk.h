// Top-k per row: MoE routing (8 of 256 experts per token) and sampling (k of a 129K vocab).
// Output per row: values and indices of the k largest entries, sorted by value descending;
// equal values are ordered by lower index first (deterministic, matches a stable sort).
// NaN entries are never selected unless fewer than k non-NaN entries exist (then NaN rows
// fill the tail in index order). Fast and scalar paths return identical results: both run
// the same insertion into a sorted buffer; the AVX-512 path only skips, 16 at a time,
// entries that are not greater than the current k-th value (which could not be inserted).
// Dispatch on active_isa(): the *_avx512 kernels, the *_avx2 kernels, or the scalar twins
// (*_ref), which are also what the tests compare the others against.
#pragma once
#include <cstdint>

namespace dsv3 {

// x [T, C] (row stride ld) -> values [T, k], indices [T, k]; 1 ≤ k ≤ C.
void topk_forward(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T, int64_t C,
                  int64_t k, int threads = 0);

// Scalar twin and the AVX-512 / AVX2 row kernels (internal).
void topk_rows_ref(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T,
                   int64_t C, int64_t k);
void topk_rows_avx512(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T,
                      int64_t C, int64_t k);
void topk_rows_avx2(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T,
                    int64_t C, int64_t k);

}  // namespace dsv3
