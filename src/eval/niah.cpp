// Needle in a Haystack: prompts, scoring, the grid and its files (niah.h).
#include "eval/niah.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/rng.h"
#include "infer/generate.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace dsv3::eval {

namespace {

constexpr const char* kNeedlePrefix = " The secret number is";
constexpr const char* kNeedleEnd = ".";
constexpr const char* kQuestion = "\nWhat is the secret number?";

std::vector<int32_t> encode_nonempty(const tok::Tokenizer& t, const std::string& text) {
  std::vector<int32_t> ids = t.encode(text, false);
  DSV3_CHECK(!ids.empty(), "the tokenizer encodes '", text, "' to no tokens");
  return ids;
}

// A sentence ends with this token: its bytes, trailing spaces dropped, end in . ! ? or a
// newline, or in the CJK full stop 。 (E3 80 82).
bool ends_sentence(std::string_view b) {
  while (!b.empty() && b.back() == ' ') b.remove_suffix(1);
  if (b.empty()) return false;
  const char c = b.back();
  if (c == '.' || c == '!' || c == '?' || c == '\n') return true;
  return b.size() >= 3 && b.substr(b.size() - 3) == "\xE3\x80\x82";
}

void append(std::vector<int32_t>& out, const std::vector<int32_t>& v) {
  out.insert(out.end(), v.begin(), v.end());
}

}  // namespace

double NiahResult::mean() const {
  double s = 0;
  for (double v : score) s += v;
  return score.empty() ? 0.0 : s / double(score.size());
}

NiahBuilder::NiahBuilder(const tok::Tokenizer& t, std::vector<int32_t> haystack)
    : t_(t), haystack_(std::move(haystack)) {
  prefix_ = t.prefix_ids();
  needle_prefix_ = encode_nonempty(t, kNeedlePrefix);
  needle_end_ = encode_nonempty(t, kNeedleEnd);
  question_ = encode_nonempty(t, kQuestion);
  append(question_, needle_prefix_);  // the question ends as the needle's prefix does
  boundary_after_.resize(haystack_.size());
  for (size_t i = 0; i < haystack_.size(); ++i)
    boundary_after_[i] = ends_sentence(t.token_bytes(haystack_[i]));
}

int64_t NiahBuilder::haystack_needed(int64_t length) const {
  // A key encodes to at least one token.
  return length - int64_t(prefix_.size() + needle_prefix_.size() + 1 + needle_end_.size() +
                          question_.size());
}

NiahPrompt NiahBuilder::build(int64_t length, int64_t depth_percent, const std::string& key) const {
  NiahPrompt p;
  p.key = key;
  p.answer = encode_nonempty(t_, " " + key);
  p.max_new = std::min<int64_t>(int64_t(p.answer.size()) + 1, kNiahMaxAnswerTokens);
  const int64_t fixed = int64_t(prefix_.size() + needle_prefix_.size() + p.answer.size() +
                                needle_end_.size() + question_.size());
  const int64_t h = length - fixed;
  DSV3_CHECK(h >= 0, "a prompt of ", length, " tokens cannot hold the needle and the question (",
             fixed, " tokens); use longer lengths");
  DSV3_CHECK(h <= haystack_size(), "the haystack has ", haystack_size(), " tokens; a prompt of ",
             length, " tokens needs ", h, " (give more text: a larger held-out split or --haystack)");
  // The sentence boundary nearest to depth% of the haystack (ties: the earlier one).
  const int64_t target = std::llround(double(depth_percent) / 100.0 * double(h));
  auto is_boundary = [&](int64_t j) { return j == 0 || j == h || boundary_after_[size_t(j - 1)]; };
  int64_t at = target;
  for (int64_t d = 0; d <= h; ++d) {
    if (target - d >= 0 && is_boundary(target - d)) { at = target - d; break; }
    if (target + d <= h && is_boundary(target + d)) { at = target + d; break; }
  }
  p.ids.reserve(size_t(length));
  append(p.ids, prefix_);
  p.ids.insert(p.ids.end(), haystack_.begin(), haystack_.begin() + at);
  p.needle_at = int64_t(p.ids.size());
  append(p.ids, needle_prefix_);
  append(p.ids, p.answer);
  append(p.ids, needle_end_);
  p.ids.insert(p.ids.end(), haystack_.begin() + at, haystack_.begin() + h);
  append(p.ids, question_);
  DSV3_ASSERT(int64_t(p.ids.size()) == length);
  return p;
}

std::string niah_key(uint64_t seed, int64_t length, int64_t depth, int trial) {
  Rng rng(mix_key(seed, uint64_t(length), uint64_t(depth) * 1000003u + uint64_t(trial)));
  return std::to_string(10000 + rng.below(90000));
}

bool niah_answer_matches(const std::string& answer_text, const std::string& key) {
  const size_t a = answer_text.find_first_not_of(" \t\n");
  if (a == std::string::npos || answer_text.compare(a, key.size(), key) != 0) return false;
  const size_t next = a + key.size();
  return next >= answer_text.size() || !std::isdigit(uint8_t(answer_text[next]));
}

void validate_niah_options(const NiahOptions& o, int64_t max_length) {
  DSV3_CHECK(!o.lengths.empty(), "--lengths: no lengths given");
  DSV3_CHECK(!o.depths.empty(), "--depths: no depths given");
  for (int64_t n : o.lengths) {
    DSV3_CHECK(n > 0, "--lengths: ", n, " is not a positive token count");
    DSV3_CHECK(max_length <= 0 || n <= max_length, "--lengths: ", n, " does not fit the model: "
               "the prompt and up to ", kNiahMaxAnswerTokens, " answer tokens need ",
               n + kNiahMaxAnswerTokens, " positions, max_position_embeddings allows ",
               max_length + kNiahMaxAnswerTokens, " (longest length ", max_length, ")");
  }
  for (int64_t d : o.depths)
    DSV3_CHECK(d >= 0 && d <= 100, "--depths: ", d, " is outside 0..100 (percent of the haystack)");
  DSV3_CHECK(o.trials >= 1, "--trials: ", o.trials, " must be at least 1");
}

NiahResult run_niah(const NiahBuilder& b, const NiahOptions& o, const NiahAnswerer& answer,
                    const NiahProgress& progress) {
  validate_niah_options(o, 0);
  const int64_t longest = *std::max_element(o.lengths.begin(), o.lengths.end());
  DSV3_CHECK(b.haystack_needed(longest) <= b.haystack_size(), "the haystack has ",
             b.haystack_size(), " tokens; the longest prompt (", longest, " tokens) needs up to ",
             b.haystack_needed(longest), " (give more text: a larger held-out split or --haystack)");
  NiahResult r;
  r.opt = o;
  r.score.assign(o.lengths.size() * o.depths.size(), 0.0);
  r.first_key.resize(r.score.size());
  r.first_answer.resize(r.score.size());
  for (size_t li = 0; li < o.lengths.size(); ++li) {
    for (size_t di = 0; di < o.depths.size(); ++di) {
      int passed = 0;
      for (int k = 0; k < o.trials; ++k) {
        const std::string key = niah_key(o.seed, o.lengths[li], o.depths[di], k);
        const NiahPrompt p = b.build(o.lengths[li], o.depths[di], key);
        const std::string text = b.tokenizer().decode(answer(p.ids, p.max_new), true);
        passed += niah_answer_matches(text, key);
        if (k == 0) {
          r.first_key[li * o.depths.size() + di] = key;
          r.first_answer[li * o.depths.size() + di] = text;
        }
      }
      r.score[li * o.depths.size() + di] = double(passed) / double(o.trials);
      if (progress) progress(li, di, r.score[li * o.depths.size() + di]);
    }
  }
  return r;
}

NiahAnswerer model_answerer(Model& m, int64_t max_length) {
  const int64_t context =
      std::min<int64_t>(m.config().max_position_embeddings, max_length + kNiahMaxAnswerTokens);
  // One Generator for all trials: consecutive prompts share their haystack up to the
  // needle, and its prefix reuse prefills only the rest (greedy output is unchanged).
  auto gen = std::make_shared<Generator>(m, nullptr, context);
  return [gen](const std::vector<int32_t>& prompt, int64_t max_new) {
    GenerateOptions o;
    o.max_new_tokens = max_new;
    o.stop_at_eos = true;
    return gen->generate(prompt, o).ids;
  };
}

std::string niah_grid_text(const NiahResult& r) {
  std::ostringstream s;
  char buf[64];
  s << "depth \\ length";
  for (int64_t n : r.opt.lengths) {
    std::snprintf(buf, sizeof buf, " %7lld", static_cast<long long>(n));
    s << buf;
  }
  s << "\n";
  for (size_t di = 0; di < r.opt.depths.size(); ++di) {
    std::snprintf(buf, sizeof buf, "%13lld%%", static_cast<long long>(r.opt.depths[di]));
    s << buf;
    for (size_t li = 0; li < r.opt.lengths.size(); ++li) {
      std::snprintf(buf, sizeof buf, " %7.2f", r.at(li, di));
      s << buf;
    }
    s << "\n";
  }
  std::snprintf(buf, sizeof buf, "mean %.3f", r.mean());
  s << buf << " over " << r.score.size() << " cells, " << r.opt.trials << " trial(s) each\n";
  return s.str();
}

std::string niah_json(const NiahResult& r, const std::string& model) {
  nlohmann::json j;
  j["model"] = model;
  j["seed"] = r.opt.seed;
  j["trials"] = r.opt.trials;
  j["lengths"] = r.opt.lengths;
  j["depths"] = r.opt.depths;
  nlohmann::json scores = nlohmann::json::array();  // [length][depth]
  for (size_t li = 0; li < r.opt.lengths.size(); ++li) {
    nlohmann::json col = nlohmann::json::array();
    for (size_t di = 0; di < r.opt.depths.size(); ++di) col.push_back(r.at(li, di));
    scores.push_back(col);
  }
  j["scores"] = scores;
  nlohmann::json examples = nlohmann::json::array();
  for (size_t li = 0; li < r.opt.lengths.size(); ++li) {
    nlohmann::json col = nlohmann::json::array();
    for (size_t di = 0; di < r.opt.depths.size(); ++di) {
      const size_t c = li * r.opt.depths.size() + di;
      col.push_back({{"key", c < r.first_key.size() ? r.first_key[c] : ""},
                     {"answer", tok::utf8_lossy(c < r.first_answer.size() ? r.first_answer[c] : "")}});
    }
    examples.push_back(col);
  }
  j["examples"] = examples;
  j["scores_layout"] = "scores[i][j]: lengths[i], depths[j]";
  j["mean"] = r.mean();
  return j.dump() + "\n";
}

void write_niah_png(const NiahResult& r, const std::string& title, const std::string& png) {
  DSV3_CHECK(png.find('\'') == std::string::npos, "the heatmap path ", png, " has a quote");
  DSV3_CHECK(std::system("command -v gnuplot >/dev/null 2>&1") == 0,
             "the heatmap needs gnuplot, which is not installed (Debian: apt-get install -y "
             "gnuplot-nox); niah.json is written");
  char dir_template[] = "/tmp/dsv3-niah-XXXXXX";
  DSV3_CHECK(mkdtemp(dir_template) != nullptr, "cannot create a temporary directory in /tmp");
  const std::filesystem::path dir = dir_template;
  const std::string data = (dir / "cells.tsv").string(), script = (dir / "plot.gp").string();
  const size_t nl = r.opt.lengths.size(), nd = r.opt.depths.size();
  {
    std::ofstream f(data);
    for (size_t li = 0; li < nl; ++li)
      for (size_t di = 0; di < nd; ++di) f << li << '\t' << di << '\t' << r.at(li, di) << '\n';
  }
  std::string safe_title = title;
  for (char& c : safe_title)
    if (c == '"' || c == '\'' || c == '\\' || c == '\n') c = ' ';
  {
    std::ofstream g(script);
    g << "set terminal pngcairo size " << std::max<size_t>(640, 160 + 90 * nl) << ","
      << std::max<size_t>(420, 140 + 34 * nd) << " font \",10\" noenhanced\n"
      << "set output '" << png << "'\n"
      << "set title \"" << safe_title << "\"\n"
      << "set xlabel 'Context Length (#Tokens)'\nset ylabel 'Document Depth Percent (%)'\n"
      << "set xrange [-0.5:" << nl - 0.5 << "]\nset yrange [" << nd - 0.5 << ":-0.5]\n"
      << "set cbrange [0:1]\nset cblabel 'Score'\n"
      << "set palette defined (0 '#d73027', 0.5 '#fee08b', 1 '#1a9850')\n"
      << "set tics nomirror out\n";
    g << "set xtics (";
    for (size_t li = 0; li < nl; ++li) g << (li ? ", " : "") << "\"" << r.opt.lengths[li] << "\" " << li;
    g << ")\nset ytics (";
    for (size_t di = 0; di < nd; ++di) g << (di ? ", " : "") << "\"" << r.opt.depths[di] << "\" " << di;
    g << ")\n"
      << "set style fill solid 1.0 noborder\n"
      << "plot '" << data << "' using 1:2:(0.5):(0.5):3 with boxxyerror lc palette notitle, \\\n"
      << "     '" << data << "' using 1:2:(sprintf('%.2f', $3)) with labels notitle\n";
  }
  const int rc = std::system(("gnuplot '" + script + "'").c_str());
  std::filesystem::remove_all(dir);
  DSV3_CHECK(rc == 0, "gnuplot failed writing ", png, " (niah.json is written)");
}

}  // namespace dsv3::eval
