// Needle in a Haystack (DeepSeek-V3 report §4.3, Figure 8; the test of Kamradt 2023): can
// the model retrieve one fact from anywhere in a long context?
//
// A cell (length N, depth d%) builds, for each trial, a prompt of exactly N tokens:
//   [tokenizer prefix, e.g. BOS] haystack[0, i) needle haystack[i, h) question
//   needle   = " The secret number is" + " KEY" + "."   (KEY: 5 random digits per trial)
//   question = "\nWhat is the secret number?" + " The secret number is"
// h = the haystack tokens that fill the rest of N; i = the sentence boundary of haystack
// [0, h) nearest to d% of h (a position after a token ending in . ! ? 。 or a newline; 0 and
// h count as boundaries). The pieces are tokenized separately and joined as ids, so the
// question ends with the same ids as the needle's prefix and the ideal answer is the ids
// of " KEY". The model answers greedily (a few tokens); the trial passes when the answer's
// text, leading spaces dropped, starts with KEY not followed by another digit. A cell's
// score is the fraction of trials that pass.
//
// The model sits behind NiahAnswerer (prompt ids -> answer ids), so tests can put a
// constructed answerer in its place; model_answerer() is the real one (greedy Generator).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dsv3 { class Model; }
namespace dsv3::tok { class Tokenizer; }

namespace dsv3::eval {

// The most answer tokens a trial asks for: " KEY" (5 digits) in any reasonable BPE, plus
// one to see that no digit follows. A prompt of N tokens needs N + this - 1 positions.
inline constexpr int64_t kNiahMaxAnswerTokens = 6;

// prompt ids -> the model's greedy continuation, at most max_new ids.
using NiahAnswerer =
    std::function<std::vector<int32_t>(const std::vector<int32_t>& prompt, int64_t max_new)>;

struct NiahOptions {
  std::vector<int64_t> lengths;  // prompt tokens per column
  std::vector<int64_t> depths;   // needle depth in percent per row, 0..100
  int trials = 1;
  uint64_t seed = 0;             // keys per (length, depth, trial)
};

struct NiahResult {
  NiahOptions opt;
  std::vector<double> score;       // [lengths x depths]: score[li * depths + di]
  // [lengths x depths]: trial 0's key and the answer's text, to see what the model says
  std::vector<std::string> first_key, first_answer;
  double at(size_t li, size_t di) const { return score[li * opt.depths.size() + di]; }
  double mean() const;
};

// One trial's prompt, what it asks for, and where the needle went.
struct NiahPrompt {
  std::vector<int32_t> ids;      // exactly the cell's length
  std::string key;               // 5 digits
  std::vector<int32_t> answer;   // ids of " KEY": the ideal greedy answer
  int64_t needle_at = 0;         // index in ids of the needle's first token
  int64_t max_new = 0;           // answer tokens to ask for
};

// The pieces every prompt shares, tokenized once.
class NiahBuilder {
 public:
  // haystack: the stream of real text to cut haystacks from. Throws when the tokenizer
  // gives no ids for the fixed texts.
  NiahBuilder(const tok::Tokenizer& t, std::vector<int32_t> haystack);
  // The prompt for one trial; throws when the haystack is shorter than the length needs or
  // the length cannot hold the needle and the question.
  NiahPrompt build(int64_t length, int64_t depth_percent, const std::string& key) const;
  // Haystack tokens a prompt of `length` tokens uses (length minus the fixed parts).
  int64_t haystack_needed(int64_t length) const;
  int64_t haystack_size() const { return int64_t(haystack_.size()); }
  // The ids of the needle before its key (" The secret number is"): a copying answerer
  // looks for them.
  const std::vector<int32_t>& needle_prefix() const { return needle_prefix_; }
  const tok::Tokenizer& tokenizer() const { return t_; }

 private:
  const tok::Tokenizer& t_;
  std::vector<int32_t> haystack_;
  std::vector<bool> boundary_after_;  // [haystack]: a sentence ends with this token
  std::vector<int32_t> prefix_, needle_prefix_, needle_end_, question_;
};

// "KEY" for (seed, length, depth, trial): 5 digits, 10000..99999.
std::string niah_key(uint64_t seed, int64_t length, int64_t depth, int trial);

// True when `answer_text`, leading whitespace dropped, starts with key and no digit follows.
bool niah_answer_matches(const std::string& answer_text, const std::string& key);

// Validates the grid (lengths > 0 and ascending-unique not required; depths in 0..100;
// trials >= 1); max_length > 0 also bounds the lengths (the model's context, answer
// tokens included). Throws dsv3::Error naming the flag.
void validate_niah_options(const NiahOptions& o, int64_t max_length);

// Called after each cell (progress lines).
using NiahProgress = std::function<void(size_t li, size_t di, double score)>;

NiahResult run_niah(const NiahBuilder& b, const NiahOptions& o, const NiahAnswerer& answer,
                    const NiahProgress& progress = {});

// The real answerer: greedy decoding with a Generator whose context holds max_length
// prompt tokens plus the answer (≤ max_position_embeddings). stop at EOS.
NiahAnswerer model_answerer(Model& m, int64_t max_length);

// The grid as text: one row per depth, one column per length, scores to 2 decimals.
std::string niah_grid_text(const NiahResult& r);
// niah.json: {"model", "seed", "trials", "lengths", "depths", "scores": [[per depth] per
// length], "mean", "examples": [[{"key", "answer"} of trial 0, per depth] per length]}.
std::string niah_json(const NiahResult& r, const std::string& model);
// The heatmap in the layout of the report's Figure 8 (x: context length, y: depth %, 0 at
// the top; colour: score, red 0 -> green 1) through gnuplot. Throws dsv3::Error when
// gnuplot is not installed or fails.
void write_niah_png(const NiahResult& r, const std::string& title, const std::string& png);

}  // namespace dsv3::eval
