// Strided perplexity (perplexity.h).
#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/softmax.h"
#include "model/model.h"

namespace dsv3::eval {

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

std::vector<PerplexityWindow> plan_windows(int64_t n_tokens, int64_t seq_len, int64_t stride) {
  DSV3_CHECK(seq_len >= 2, "--seq-len: ", seq_len, " is too short (a window needs at least 2 tokens)");
  if (stride == 0) stride = seq_len;
  DSV3_CHECK(stride >= 1 && stride <= seq_len, "--stride: ", stride, " must be in [1, seq-len = ",
             seq_len, "] (a stride past the window would skip tokens)");
  DSV3_CHECK(n_tokens >= 2, "the evaluation stream has ", n_tokens,
             " token(s); perplexity needs at least 2");
  std::vector<PerplexityWindow> w;
  int64_t prev_end = 0;
  for (int64_t b = 0; prev_end < n_tokens; b += stride) {
    const int64_t e = std::min(b + seq_len, n_tokens);
    const int64_t from = std::max(b + 1, prev_end);
    if (from < e) w.push_back({b, e, from});
    prev_end = e;
  }
  return w;
}

PerplexityResult strided_perplexity(Model& m, const std::vector<int32_t>& ids,
                                    const PerplexityOptions& o, const PerplexityProgress& progress) {
  const int64_t n = int64_t(ids.size()), V = m.vocab(), H = m.config().hidden_size;
  DSV3_CHECK(o.seq_len <= m.config().max_position_embeddings, "--seq-len: ", o.seq_len,
             " is longer than the model's context (max_position_embeddings = ",
             m.config().max_position_embeddings, ")");
  const std::vector<PerplexityWindow> plan = plan_windows(n, o.seq_len, o.stride);
  for (int64_t i = 0; i < n; ++i)
    DSV3_CHECK(ids[size_t(i)] >= 0 && ids[size_t(i)] < V, "token id ", ids[size_t(i)],
               " at position ", i, " is outside the model's vocabulary [0, ", V, ")");
  const int64_t chunk = std::max<int64_t>(1, o.head_chunk);

  PerplexityResult r;
  ForwardScratch s;
  std::vector<float> hidden(static_cast<size_t>(o.seq_len * H));  // [L, H] after model.norm
  std::vector<float> logits(static_cast<size_t>(chunk * V));     // [chunk, V]
  for (const PerplexityWindow& w : plan) {
    const int64_t T = w.end - w.begin;
    KvCache cache = m.new_cache(T);
    ForwardArgs fa;
    fa.ids = ids.data() + w.begin;
    fa.T = T;
    fa.hidden = hidden.data();
    m.forward(cache, fa, s);
    // Token p is predicted by the state at p - 1 (window row p - 1 - begin).
    for (int64_t p0 = w.score_from; p0 < w.end; p0 += chunk) {
      const int64_t rows = std::min(chunk, w.end - p0);
      m.head_logits(0, hidden.data() + (p0 - 1 - w.begin) * H, rows, logits.data(), s);
      for (int64_t i = 0; i < rows; ++i) {
        const float* row = logits.data() + i * V;
        r.nll_sum += double(row_logsumexp(row, V)) - double(row[ids[size_t(p0 + i)]]);
      }
    }
    r.tokens_scored += w.end - w.score_from;
    ++r.windows;
    if (progress) progress(r, w.end, n);
  }
  return r;
}

}  // namespace dsv3::eval
