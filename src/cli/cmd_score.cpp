// `dsv3 score`: log-probabilities of a token sequence under the model (and, with --mtp,
// under each MTP module), the check that a checkpoint runs correctly.
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/check.h"
#include "core/parallel.h"
#include "kernels/softmax.h"
#include "infer/generate.h"
#include "model/model.h"
#include "model_args.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {
namespace {

struct ScoreArgs {
  std::string model, ids, prompt, attn = "auto", kv_cache = "bf16";
  bool mtp = false, json = false;
  int threads = 0;
};

// log p(target[i] | ...) for rows i of hidden h [n, H] through output head `module`,
// head computed in chunks so that n x V logits never exist at once.
std::vector<double> score_rows(const Model& m, int module, const float* h, int64_t n,
                               const int32_t* target, ForwardScratch& s) {
  const int64_t V = m.vocab(), H = m.config().hidden_size, chunk = 32;
  std::vector<float> logits(static_cast<size_t>(chunk * V));
  std::vector<double> out;
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t r = std::min(chunk, n - r0);
    m.head_logits(module, h + r0 * H, r, logits.data(), s);
    for (int64_t i = 0; i < r; ++i) {
      const float* row = logits.data() + i * V;
      const float lse = row_logsumexp(row, V);
      out.push_back(double(row[target[r0 + i]]) - double(lse));
    }
  }
  return out;
}

void run_score(const ScoreArgs& a) {
  DSV3_CHECK(a.ids.empty() != a.prompt.empty(), "give exactly one of --ids and --prompt");
  if (a.threads > 0) set_num_threads(a.threads);
  ModelOptions mo;
  mo.with_mtp = a.mtp;
  mo.kv_cache = CacheDtype(cli::parse_kv_cache(a.kv_cache));
  Model m(a.model, mo);
  std::vector<int32_t> ids;
  if (!a.ids.empty()) {
    ids = parse_id_list(a.ids);
  } else {
    const auto tok = tok::Tokenizer::from_path(a.model);
    ids = tok->encode(a.prompt, true);
    DSV3_CHECK(!ids.empty(), "--prompt: the text encodes to no tokens (empty prompt)");
  }
  const int64_t n = int64_t(ids.size()), H = m.config().hidden_size;
  for (size_t i = 0; i < ids.size(); ++i)
    DSV3_CHECK(ids[i] < m.vocab(), "token id ", ids[i], " at position ", i,
               " is outside the model's vocabulary [0, ", m.vocab(), ")");
  DSV3_CHECK(n <= m.config().max_position_embeddings, "the sequence has ", n,
             " tokens, longer than the model's context (max_position_embeddings = ",
             m.config().max_position_embeddings, ")");
  if (a.mtp) DSV3_CHECK(m.n_mtp() > 0, a.model, ": the model has no MTP module (num_nextn_predict_layers = 0)");

  KvCache cache = m.new_cache(n);
  ForwardScratch s;
  std::vector<float> hidden(static_cast<size_t>(n * H));
  const AttnForm form = AttnForm(parse_attn_form(a.attn));
  // In chunks of kPrefillChunk, as generate prefills (infer/generate.h): memory is the cache
  // and one chunk's activations whatever the length, and the log-probs are generate's.
  for (int64_t p = 0; p < n; p += kPrefillChunk) {
    ForwardArgs fa;
    fa.ids = ids.data() + p;
    fa.T = std::min(kPrefillChunk, n - p);
    fa.form = form;
    fa.hidden = hidden.data() + p * H;
    m.forward(cache, fa, s);
  }
  const std::vector<double> lp = score_rows(m, 0, hidden.data(), n - 1, ids.data() + 1, s);

  // MTP module k at position i takes h^{k-1}_i and t_{i+k} and predicts t_{i+k+1}.
  std::vector<std::vector<double>> mtp;
  if (a.mtp) {
    std::vector<float> prev = hidden, next(prev.size());
    for (int k = 1; k <= m.n_mtp() && n - k - 1 > 0; ++k) {
      const int64_t T = n - k;
      for (int64_t p = 0; p < T; p += kPrefillChunk) {
        MtpArgs ma;
        ma.k = k;
        ma.ids = ids.data() + k + p;
        ma.h_prev = prev.data() + p * H;
        ma.T = std::min(kPrefillChunk, T - p);
        ma.form = form;
        ma.hidden = next.data() + p * H;
        m.mtp_forward(cache, ma, s);
      }
      mtp.push_back(score_rows(m, k, next.data(), n - k - 1, ids.data() + k + 1, s));
      std::swap(prev, next);
    }
  }

  if (a.json) {
    nlohmann::json j;
    j["logprobs"] = lp;
    if (a.mtp) j["mtp_logprobs"] = mtp;
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  double nll = 0;
  std::printf("%6s %8s %12s\n", "pos", "id", "logprob");
  for (size_t i = 0; i < lp.size(); ++i) {
    std::printf("%6zu %8d %12.6f\n", i + 1, ids[i + 1], lp[i]);
    nll -= lp[i];
  }
  if (!lp.empty())
    std::printf("%zu tokens scored: mean NLL %.4f nats, perplexity %.3f\n", lp.size(),
                nll / double(lp.size()), std::exp(nll / double(lp.size())));
  for (size_t k = 0; k < mtp.size(); ++k) {
    double sum = 0;
    for (double v : mtp[k]) sum -= v;
    std::printf("MTP module %zu: %zu tokens, mean NLL %.4f nats\n", k + 1, mtp[k].size(),
                mtp[k].empty() ? 0.0 : sum / double(mtp[k].size()));
  }
}

}  // namespace

void register_score(CLI::App& app) {
  auto a = std::make_shared<ScoreArgs>();
  CLI::App* c = app.add_subcommand("score", "Log-probabilities of a token sequence under a model");
  c->add_option("--model", a->model, "Model directory (config.json + safetensors)")->required();
  c->add_option("--ids", a->ids, "Comma-separated token ids, e.g. 0,5,17");
  c->add_option("--prompt", a->prompt, "Text, tokenized with the model's tokenizer.json (BOS added)");
  c->add_flag("--mtp", a->mtp, "Also score with the MTP modules (mtp_logprobs)");
  c->add_flag("--json", a->json, "Print {\"logprobs\":[...]} (n-1 values; element i scores ids[i+1])");
  c->add_option("--attn", a->attn, "MLA form: auto (naive prefill), naive or absorbed");
  c->add_option("--threads", a->threads, "Threads (default: all cores)");
  c->add_option("--kv-cache", a->kv_cache, cli::kKvCacheHelp);
  c->callback([a] { run_score(*a); });
}

}  // namespace dsv3::cli
