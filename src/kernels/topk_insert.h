// The sorted-buffer insertion shared by topk_ref.cpp and topk_avx512.cpp (plain C++, no
// templates; internal linkage, so each file keeps its own copy).
#pragma once
#include <cstdint>

namespace dsv3 {
namespace {

// a ranks before b: larger value, or equal value and lower index. NaN ranks last.
inline bool before(float va, int32_t ia, float vb, int32_t ib) {
  if (va > vb) return true;
  if (va == vb) return ia < ib;
  return vb != vb && va == va;  // only NaN b loses to a non-NaN a
}

// Inserts (v, i) into the sorted buffer of size n (n < cap grows it, else drops the last).
inline void insert(float* vals, int32_t* idx, int64_t n, int64_t cap, float v, int32_t i) {
  int64_t p = n < cap ? n : cap - 1;
  while (p > 0 && before(v, i, vals[p - 1], idx[p - 1])) {
    vals[p] = vals[p - 1];
    idx[p] = idx[p - 1];
    --p;
  }
  vals[p] = v;
  idx[p] = i;
}

// Whether a later entry v must be inserted into a full buffer whose k-th value is kth.
inline bool topk_beats(float v, float kth) { return v > kth || (kth != kth && v == v); }

}  // namespace

}  // namespace dsv3
