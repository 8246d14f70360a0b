// Prefill/decode disaggregation (docs/serve.md "Deployment"): what a prefill instance ships to
// a decode instance. For each prompt of a request: its token ids, the latent-cache rows of
// every position and layer exactly as the pool stores them (kernels/latent_cache.h: BF16, FP8
// or F32 rows), and the logits of the last prompt position, from which the decode instance
// draws the first token itself (so seeds, n, penalties and logprobs behave as on one server).
//
// Wire format, little-endian, version 1:
//   "DSV3KVT\n"              8 bytes of magic
//   u32 version              kKvTransferVersion
//   u32 header_bytes         then that many bytes of JSON:
//     {"model": fingerprint, "transfer_id": "...", "layers": L, "row": R,
//      "cache_dtype": "bf16", "row_bytes": rb, "vocab": V, "positions": [P_0, P_1, ...],
//      "cached": [C_0, ...]}    (C_i: positions the prefill took from its prefix cache)
//   per sequence i:          int32 tokens[P_i], rows [L][P_i][rb] bytes, f32 logits[V]
//   u32 crc32c               CRC-32C (Castagnoli) of every byte before it
// The JSON names the model and the layout; a decode instance refuses a transfer whose
// fingerprint or layout differs from its own (a different checkpoint, cache form or layer
// count would decode garbage silently), and one whose checksum fails.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/latent_cache.h"

namespace dsv3 { class Model; }

namespace dsv3::serve {

constexpr uint32_t kKvTransferVersion = 1;

// The cache layout of a model as a server holds it: what both ends must agree on.
struct KvLayout {
  std::string model;        // model_fingerprint()
  int64_t layers = 0;       // main layers (the pool holds no MTP rows)
  int64_t row = 0;          // values per position and layer
  CacheDtype dtype = CacheDtype::BF16;
  int64_t vocab = 0;
  int64_t row_bytes() const { return cache_row_bytes(dtype, row); }
};

// One prompt's prefill: its tokens, its rows [layers][P][row_bytes], its last logits [V].
struct KvSequence {
  std::vector<int32_t> tokens;
  int64_t cached = 0;             // leading positions the prefill found in its prefix cache
  std::vector<uint8_t> rows;
  std::vector<float> logits;
};

struct KvTransfer {
  KvLayout layout;
  std::string id;                 // the router's transfer id
  std::vector<KvSequence> seqs;
};

// 16 hex digits naming the model: FNV-1a 64 of its config JSON and a sample of its embedding
// bytes (two instances of one checkpoint agree; a different architecture, or the same one
// with other weights, does not — as far as the sample can tell).
std::string model_fingerprint(const Model& m);
KvLayout kv_layout(const Model& m);

// CRC-32C of n bytes (SSE4.2 crc32 instruction when the CPU has it, a table otherwise).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

std::string encode_kv_transfer(const KvTransfer& t);

// Why a transfer was refused; the HTTP layer answers `status` (422 checksum, 409 a layout
// or model that is not this instance's, 400 anything else malformed).
struct KvTransferError {
  int status = 400;
  std::string message;
};
// Parses and verifies `bytes` against `expect` (model fingerprint and layout). Returns false
// with *err set when anything is wrong; never throws for bad input.
bool decode_kv_transfer(std::string_view bytes, const KvLayout& expect, KvTransfer* out,
                        KvTransferError* err);

}  // namespace dsv3::serve
