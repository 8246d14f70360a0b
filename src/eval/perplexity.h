// Perplexity of a token stream under a Model with a sliding window, as Hugging Face's
// "Perplexity of fixed-length models" (strided perplexity) computes it.
//
// Windows of at most L tokens start at 0, S, 2S, ... (the last one ends at the stream's
// end; none starts after a window that reached it). A window [b, e) can score the tokens
// b+1 .. e-1 (each from the tokens before it inside the window); it scores those that no
// earlier window scored, i.e. max(b + 1, e_prev) .. e-1. So:
//   S = L   disjoint windows; each window's first token is context only, the others are
//           scored from 1 .. L-1 tokens of context (the mean of the per-window losses,
//           weighted by tokens);
//   S < L   every token but the stream's first is scored exactly once, with at least
//           L - S tokens of context (except inside the first window).
// Each window is one forward in a fresh cache, the head run in chunks over the scored rows
// only, so memory is O(L * hidden + chunk * vocab), never O(L * vocab).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace dsv3 { class Model; }

namespace dsv3::eval {

struct PerplexityOptions {
  int64_t seq_len = 0;     // L, 2 .. max_position_embeddings
  int64_t stride = 0;      // S, 1 .. L; 0 means L
  int64_t head_chunk = 64; // rows of logits computed at once
};

struct PerplexityResult {
  int64_t tokens_scored = 0, windows = 0;
  double nll_sum = 0;  // -sum log p(token | context), nats
  double mean_nll() const { return tokens_scored ? nll_sum / double(tokens_scored) : 0.0; }
  double perplexity() const;
};

// Called after each window with the running result (progress lines).
using PerplexityProgress = std::function<void(const PerplexityResult&, int64_t tokens_done,
                                              int64_t tokens_total)>;

// The window plan alone (no model): {begin, end, first scored position} per window.
struct PerplexityWindow {
  int64_t begin = 0, end = 0, score_from = 0;
};
std::vector<PerplexityWindow> plan_windows(int64_t n_tokens, int64_t seq_len, int64_t stride);

// Throws dsv3::Error for a bad seq_len / stride, a stream of fewer than 2 tokens or an id
// outside the model's vocabulary.
PerplexityResult strided_perplexity(Model& m, const std::vector<int32_t>& ids,
                                    const PerplexityOptions& o,
                                    const PerplexityProgress& progress = {});

}  // namespace dsv3::eval
