// Helpers the model commands (score, generate, chat, bench decode/prefill) share.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3 {
class Model;
}

namespace dsv3::cli {

// "5,17,3" -> {5, 17, 3}; spaces allowed around commas. Throws dsv3::Error naming the bad
// entry (not an integer, negative, out of int32 range) or an empty list.
std::vector<int32_t> parse_id_list(const std::string& s, const std::string& flag = "--ids");

// Parses "naive" | "absorbed" | "auto".
int parse_attn_form(const std::string& s);

// --activations: "f32" (the default: activations carried to ≈16 bits as a BF16 hi+lo pair)
// or "bf16" (rounded to BF16 once: ModelOptions::bf16_activations). True for bf16.
bool parse_activations(const std::string& s);
inline constexpr const char* kActivationsHelp =
    "Activation precision in the linears: f32 (default; ≈16 significant bits, docs/numerics.md) "
    "or bf16 (rounded once, as BF16 inference does: about 2x the compute-bound throughput of a "
    "batched step or a prefill)";

// --kv-cache: "bf16" (the default), "fp8" or "f32" (ModelOptions::kv_cache).
int parse_kv_cache(const std::string& s);
// "f32,bf16,fp8" -> each entry as parse_kv_cache (CacheDtype values).
std::vector<int> parse_kv_cache_list(const std::string& s);
inline constexpr const char* kKvCacheHelp =
    "How the latent KV cache is stored: bf16 (default; half the bytes of f32 per decode step), "
    "fp8 (E4M3 with a per-token scale, a quarter) or f32 (exact)";

// --weights: "huge" (the default: copied onto transparent huge pages, Model::make_resident)
// or "mapped" (the checkpoint's mapped pages). Checks the value; true for huge.
bool parse_weights_memory(const std::string& s);
inline constexpr const char* kWeightsHelp =
    "Where the weights live while serving: huge (default; copied onto 2 MiB transparent huge "
    "pages, ~1.4x faster to stream than the mapped file's 4 KiB pages; falls back to mapped "
    "when the kernel has them off) or mapped (the checkpoint's pages, read once)";
// Makes m's weights resident as --weights says (value already checked) and prints one line on
// stderr, prefixed by `who`: the bytes, the time, and where they ended up (and why, after a
// fallback). quiet: the line only after a fallback, or when it took over a second.
void make_weights_resident(Model& m, bool huge, const char* who, bool quiet = false);

}  // namespace dsv3::cli
