// The stored form of MLA's latent cache rows (SPEC §1: per position and layer the normalised
// c_KV and the rotated k_pe, R = kv_lora_rank + qk_rope_head_dim values).
//
//   f32   R floats (4R bytes): exact.
//   bf16  R BF16 values (2R bytes), round to nearest even (≤ 2^-8 relative): what FlashMLA
//         keeps.
//   fp8   R E4M3 codes then one F32 scale (R + 4 bytes): per token (row) scale
//         s = max|x| / 448, code = e4m3(x / s), value = e4m3_to_f32(code) · s (≤ 2^-4
//         relative). E4M3 keeps 3 mantissa bits whatever the magnitude, so one scale for c_KV
//         and k_pe together only costs values below max|x| · 2^-14.8 (under E4M3's smallest
//         normal, 2^-6 of 448) their relative precision.
//
// A row is written once (encode) and read by every later attention over it (decode). The
// attention arithmetic is defined over the decoded F32 values; the model rounds its freshly
// computed rows through the same encode/decode before attending, so a position's K/V is the
// same value whichever form (naive, absorbed, batched, chunked) reads it.
#pragma once
#include <cstdint>
#include <string>

namespace dsv3 {

enum class CacheDtype : uint8_t { F32, BF16, FP8 };

const char* cache_dtype_name(CacheDtype d);  // "f32", "bf16", "fp8"
// Parses "f32" | "bf16" | "fp8"; false for anything else.
bool parse_cache_dtype(const std::string& s, CacheDtype* d);

// Bytes of one stored row of R values.
inline int64_t cache_row_bytes(CacheDtype d, int64_t R) {
  switch (d) {
    case CacheDtype::BF16: return 2 * R;
    case CacheDtype::FP8: return R + 4;
    default: return 4 * R;
  }
}

// dst (cache_row_bytes) = the stored form of src [R]. src must be finite.
void cache_encode_row(void* dst, const float* src, int64_t R, CacheDtype d);
// dst [R] = the values a stored row holds (exact for the stored form; scalar).
void cache_decode_row(float* dst, const void* src, int64_t R, CacheDtype d);
// src [R] := decode(encode(src)) in place, and the stored form into dst (may be null).
void cache_round_row(void* dst, float* src, int64_t R, CacheDtype d);

}  // namespace dsv3
