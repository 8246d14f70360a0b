// dsv3 eval ppl  --model DIR --data DATA --seq-len L [--stride S] [--max-tokens N] [--json]
// dsv3 eval niah --model DIR --lengths N,... --depths D,... [--trials K] [--seed S] --out DIR
//                (--data DATA | --haystack FILE)
// Held-out evaluation (eval/perplexity.h, eval/niah.h): DATA/val/ when `data prepare
// --val-fraction` made one, else DATA/ (and the output says so).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "model_args.h"
#include "core/check.h"
#include "core/parallel.h"
#include "data/dataset.h"
#include "eval/held_out.h"
#include "eval/niah.h"
#include "eval/perplexity.h"
#include "io/file_util.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {
namespace {

namespace fs = std::filesystem;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The model's tokenizer.json, or "" when the directory has none.
std::string model_tokenizer(const std::string& model) {
  const fs::path p = fs::path(model) / "tokenizer.json";
  std::error_code ec;
  return fs::exists(p, ec) ? p.string() : "";
}

// "256,512, 1024" -> {256, 512, 1024}; names the flag and the bad entry.
std::vector<int64_t> parse_int_list(const std::string& s, const char* flag) {
  std::vector<int64_t> v;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    const size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
    item = a == std::string::npos ? "" : item.substr(a, b - a + 1);
    DSV3_CHECK(!item.empty(), flag, ": empty entry in '", s, "' (expected integers separated by commas)");
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(item.c_str(), &end, 10);
    DSV3_CHECK(end && *end == '\0' && errno == 0, flag, ": '", item, "' is not an integer");
    v.push_back(x);
    i = j + 1;
  }
  return v;
}

// ---- eval ppl ----------------------------------------------------------------------------

struct PplArgs {
  std::string model, data, kv_cache = "bf16";
  int64_t seq_len = 0, stride = 0, max_tokens = 0;
  bool json = false;
  int threads = 0;
};

void run_ppl(const PplArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  DSV3_CHECK(a.max_tokens >= 0, "--max-tokens: ", a.max_tokens, " must be ≥ 0 (0: all)");
  const std::string tok_path = model_tokenizer(a.model);
  const eval::HeldOut held =
      eval::open_held_out(a.data, tok_path.empty() ? "" : data::tokenizer_hash(tok_path));
  ModelOptions mo;
  mo.with_mtp = false;
  mo.kv_cache = CacheDtype(cli::parse_kv_cache(a.kv_cache));
  Model m(a.model, mo);
  const std::vector<int32_t> ids = eval::packed_stream(held.set, a.max_tokens);
  eval::PerplexityOptions po;
  po.seq_len = a.seq_len;
  po.stride = a.stride == 0 ? a.seq_len : a.stride;
  if (!a.json)
    std::printf("data: %s; %zu tokens (documents joined by EOS%s)\n", held.describe().c_str(),
                ids.size(), a.max_tokens > 0 ? ", cut to --max-tokens" : "");
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  double last = 0;
  const eval::PerplexityResult r = eval::strided_perplexity(
      m, ids, po, [&](const eval::PerplexityResult& p, int64_t done, int64_t total) {
        if (seconds_since(t0) - last < 10 || done == total) return;
        last = seconds_since(t0);
        std::fprintf(stderr, "ppl: %lld/%lld tokens, mean NLL %.4f so far\n",
                     static_cast<long long>(done), static_cast<long long>(total), p.mean_nll());
      });
  const double secs = seconds_since(t0);
  if (a.json) {
    nlohmann::json j;
    j["model"] = a.model;
    j["data"] = held.set.dir();
    j["split"] = held.is_val_split ? "val" : "all";
    j["seq_len"] = po.seq_len;
    j["stride"] = po.stride;
    j["tokens"] = ids.size();
    j["tokens_scored"] = r.tokens_scored;
    j["windows"] = r.windows;
    j["mean_nll"] = r.mean_nll();
    j["perplexity"] = r.perplexity();
    j["seconds"] = secs;
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("seq-len %lld, stride %lld: %lld tokens scored in %lld windows; mean NLL %.4f nats, "
              "perplexity %.3f (%.1f s, %.0f tokens/s)\n",
              static_cast<long long>(po.seq_len), static_cast<long long>(po.stride),
              static_cast<long long>(r.tokens_scored), static_cast<long long>(r.windows),
              r.mean_nll(), r.perplexity(), secs, double(r.tokens_scored) / std::max(secs, 1e-9));
}

// ---- eval niah ---------------------------------------------------------------------------

struct NiahArgs {
  std::string model, lengths, depths = "0,10,20,30,40,50,60,70,80,90,100", out, data, haystack;
  std::string kv_cache = "bf16";
  int trials = 1;
  uint64_t seed = 0;
  int threads = 0;
};

void run_niah(const NiahArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  eval::NiahOptions o;
  o.lengths = parse_int_list(a.lengths, "--lengths");
  o.depths = parse_int_list(a.depths, "--depths");
  o.trials = a.trials;
  o.seed = a.seed;
  eval::validate_niah_options(o, 0);
  DSV3_CHECK(a.data.empty() != a.haystack.empty(), "give exactly one of --data (a prepared data "
             "set; its val/ split) and --haystack (a text file)");
  const std::string tok_path = model_tokenizer(a.model);
  DSV3_CHECK(!tok_path.empty(), a.model, ": no tokenizer.json; eval niah writes its prompts "
             "with the model's tokenizer (copy the one the model was trained with there)");
  const auto t = tok::Tokenizer::from_path(tok_path);
  ModelOptions mo;
  mo.with_mtp = false;
  mo.kv_cache = CacheDtype(cli::parse_kv_cache(a.kv_cache));
  Model m(a.model, mo);
  const int64_t max_pos = m.config().max_position_embeddings;
  eval::validate_niah_options(o, max_pos - eval::kNiahMaxAnswerTokens);
  const int64_t longest = *std::max_element(o.lengths.begin(), o.lengths.end());

  std::vector<int32_t> hay;
  std::string source;
  if (!a.data.empty()) {
    const eval::HeldOut held = eval::open_held_out(a.data, data::tokenizer_hash(tok_path));
    hay = eval::haystack_stream(held.set, *t, longest);
    source = held.describe();
  } else {
    hay = t->encode(read_text_file(a.haystack), false);
    source = a.haystack;
  }
  const eval::NiahBuilder b(*t, std::move(hay));
  std::printf("haystack: %s, %lld tokens; %zu lengths x %zu depths, %d trial(s) per cell\n",
              source.c_str(), static_cast<long long>(b.haystack_size()), o.lengths.size(),
              o.depths.size(), o.trials);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  const eval::NiahResult r = eval::run_niah(
      b, o, eval::model_answerer(m, longest), [&](size_t li, size_t di, double score) {
        std::fprintf(stderr, "niah: length %lld depth %lld%%: %.2f (%.0f s)\n",
                     static_cast<long long>(o.lengths[li]), static_cast<long long>(o.depths[di]),
                     score, seconds_since(t0));
      });
  std::printf("%s", eval::niah_grid_text(r).c_str());

  std::error_code ec;
  fs::create_directories(a.out, ec);
  DSV3_CHECK(fs::is_directory(a.out, ec), "--out: cannot create '", a.out, "'");
  const std::string json_path = (fs::path(a.out) / "niah.json").string();
  const std::string png_path = (fs::path(a.out) / "niah.png").string();
  write_file_atomic(json_path, eval::niah_json(r, a.model));
  std::printf("wrote %s\n", json_path.c_str());
  const std::string title = "Needle in a Haystack: " + fs::path(a.model).lexically_normal().string() +
                            " (" + std::to_string(o.trials) + " trial(s) per cell)";
  eval::write_niah_png(r, title, png_path);
  std::printf("wrote %s\n", png_path.c_str());
}

}  // namespace

void register_eval(CLI::App& app) {
  CLI::App* e = app.add_subcommand("eval", "Evaluate a model on held-out data: perplexity, needle in a haystack");
  e->require_subcommand(1);

  auto p = std::make_shared<PplArgs>();
  CLI::App* pc = e->add_subcommand("ppl", "Perplexity of held-out data with a sliding window");
  pc->add_option("--model", p->model, "Model directory")->required();
  pc->add_option("--data", p->data, "Prepared data set (its val/ split when it has one)")->required();
  pc->add_option("--seq-len", p->seq_len, "Window length L in tokens")->required();
  pc->add_option("--stride", p->stride, "Window step S ≤ L (default L; S < L scores every token "
                                        "once with ≥ L − S tokens of context)");
  pc->add_option("--max-tokens", p->max_tokens, "Evaluate only the first N tokens (0: all)");
  pc->add_flag("--json", p->json, "Print one JSON line");
  pc->add_option("--threads", p->threads, "Threads (default: all cores)");
  pc->add_option("--kv-cache", p->kv_cache, cli::kKvCacheHelp);
  pc->callback([p] { run_ppl(*p); });

  auto n = std::make_shared<NiahArgs>();
  CLI::App* nc = e->add_subcommand("niah", "Needle in a Haystack grid (report Figure 8): "
                                           "niah.json and niah.png in --out");
  nc->add_option("--model", n->model, "Model directory (with tokenizer.json)")->required();
  nc->add_option("--lengths", n->lengths, "Prompt lengths in tokens, e.g. 256,512,1024")->required();
  nc->add_option("--depths", n->depths, "Needle depths in percent")->capture_default_str();
  nc->add_option("--trials", n->trials, "Keys per cell (score = fraction retrieved)")->capture_default_str();
  nc->add_option("--seed", n->seed, "Seed of the keys")->capture_default_str();
  nc->add_option("--out", n->out, "Directory for niah.json and niah.png")->required();
  nc->add_option("--data", n->data, "Prepared data set: haystack from its val/ split");
  nc->add_option("--haystack", n->haystack, "Text file to cut haystacks from");
  nc->add_option("--threads", n->threads, "Threads (default: all cores)");
  nc->add_option("--kv-cache", n->kv_cache, cli::kKvCacheHelp);
  nc->callback([n] { run_niah(*n); });
}

}  // namespace dsv3::cli
