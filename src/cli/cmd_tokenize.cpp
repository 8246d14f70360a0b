// dsv3 tokenize   --tokenizer PATH [--jsonl] [--add-special-tokens]
// dsv3 detokenize --tokenizer PATH [--jsonl] [--skip-special-tokens]
// dsv3 tokenizer train --vocab-size N --input FILE... --out tokenizer.json
// dsv3 tokenizer chat --tokenizer PATH [--add-generation-prompt] [--ids]
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/check.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace dsv3::cli {

namespace {

using nlohmann::json;

std::string read_stdin() {
  std::ostringstream ss;
  ss << std::cin.rdbuf();
  return ss.str();
}

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s + "]";
}

// Ids from "[1, 2, 3]" or "1 2 3"; anything else is an error naming the bad text.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& where) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '[' || c == ']' || c == ',' || std::isspace(uint8_t(c))) { ++i; continue; }
    size_t end = i;
    if (text[end] == '-') ++end;
    while (end < text.size() && std::isdigit(uint8_t(text[end]))) ++end;
    DSV3_CHECK(end > i && end - i < 11 && text[end - 1] != '-', where, ": expected token ids, got '",
               text.substr(i, std::min<size_t>(20, text.size() - i)), "'");
    const long long v = std::stoll(text.substr(i, end - i));
    DSV3_CHECK(v >= 0 && v <= INT32_MAX, where, ": token id ", v, " out of range");
    ids.push_back(int32_t(v));
    i = end;
  }
  return ids;
}

struct TokOpts {
  std::string tokenizer;
  bool jsonl = false, special = false, skip_special = false, gen_prompt = false, ids = false;
};

void run_tokenize(const TokOpts& o) {
  const auto t = tok::Tokenizer::from_path(o.tokenizer);
  if (!o.jsonl) {
    std::printf("%s\n", ids_json(t->encode(read_stdin(), o.special)).c_str());
    return;
  }
  std::string line;
  std::vector<int32_t> ids;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      DSV3_FAIL("stdin line ", n, ": not valid JSON: ", e.what());
    }
    DSV3_CHECK(j.is_string(), "stdin line ", n, ": expected a JSON string");
    ids.clear();
    t->encode_into(j.get<std::string>(), ids, o.special);
    std::printf("%s\n", ids_json(ids).c_str());
  }
}

void run_detokenize(const TokOpts& o) {
  const auto t = tok::Tokenizer::from_path(o.tokenizer);
  if (!o.jsonl) {
    const std::string text = t->decode(parse_ids(read_stdin(), "stdin"), o.skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return;
  }
  std::string line;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    const std::string where = str_cat("stdin line ", n);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      DSV3_FAIL(where, ": not valid JSON: ", e.what());
    }
    DSV3_CHECK(j.is_array(), where, ": expected a JSON array of token ids");
    std::vector<int32_t> ids;
    for (const json& v : j) {
      DSV3_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
                 where, ": expected non-negative integer ids, got ", v.dump());
      ids.push_back(int32_t(v.get<int64_t>()));
    }
    std::printf("%s\n", json(t->decode(ids, o.skip_special)).dump().c_str());
  }
}

void run_chat(const TokOpts& o) {
  const auto t = tok::Tokenizer::from_path(o.tokenizer);
  json j;
  try {
    j = json::parse(read_stdin());
  } catch (const json::exception& e) {
    DSV3_FAIL("stdin: not valid JSON: ", e.what());
  }
  const json& msgs = j.is_object() && j.contains("messages") ? j["messages"] : j;
  const std::string bos = t->bos_token().empty() ? "<｜begin▁of▁sentence｜>" : t->bos_token();
  const std::string text =
      tok::render_chat_deepseek_v3(tok::parse_chat_messages(msgs), o.gen_prompt, bos);
  if (o.ids) std::printf("%s\n", ids_json(t->encode(text, false)).c_str());
  else std::fwrite(text.data(), 1, text.size(), stdout);
}

struct TrainOpts {
  std::vector<std::string> inputs;
  std::string out;
  int32_t vocab_size = 32000;
  int64_t min_frequency = 2;
  std::vector<std::string> special;
};

void run_train(const TrainOpts& o) {
  std::vector<std::string> texts;
  for (const std::string& f : o.inputs) {
    std::ifstream in(f, std::ios::binary);
    DSV3_CHECK(in.good(), "--input: cannot open '", f, "'");
    std::ostringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
  }
  tok::TrainOptions opt;
  opt.vocab_size = o.vocab_size;
  opt.min_frequency = o.min_frequency;
  if (!o.special.empty()) opt.special_tokens = o.special;
  const auto t = tok::train_bpe(texts, opt);
  std::ofstream out(o.out, std::ios::binary);
  DSV3_CHECK(out.good(), "--out: cannot write '", o.out, "'");
  out << tok::to_tokenizer_json(*t);
  DSV3_CHECK(out.good(), "--out: write to '", o.out, "' failed");
  std::fprintf(stderr, "trained %d tokens (%zu merges) -> %s\n", t->vocab_size(),
               t->bpe().merge_list().size(), o.out.c_str());
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokOpts>();
  CLI::App* enc = app.add_subcommand("tokenize", "Text on stdin -> token ids (JSON array)");
  enc->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a model directory")->required();
  enc->add_flag("--jsonl", o->jsonl, "one JSON string per input line -> one id array per line");
  enc->add_flag("--add-special-tokens", o->special, "add BOS/EOS as the post-processor says");
  enc->callback([o] { run_tokenize(*o); });

  CLI::App* dec = app.add_subcommand("detokenize", "Token ids on stdin -> text");
  dec->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a model directory")->required();
  dec->add_flag("--jsonl", o->jsonl, "one JSON id array per input line -> one JSON string per line");
  dec->add_flag("--skip-special-tokens", o->skip_special, "drop special tokens from the text");
  dec->callback([o] { run_detokenize(*o); });

  CLI::App* tk = app.add_subcommand("tokenizer", "Train a tokenizer, render chat prompts");
  tk->require_subcommand(1);
  auto t = std::make_shared<TrainOpts>();
  CLI::App* tr = tk->add_subcommand("train", "Train a byte-level BPE (DeepSeek-V3 pre-tokenizer)");
  tr->add_option("--input", t->inputs, "training text files")->required()->expected(1, -1);
  tr->add_option("--out", t->out, "tokenizer.json to write")->required();
  tr->add_option("--vocab-size", t->vocab_size, "special tokens + 256 bytes + merges")->capture_default_str();
  tr->add_option("--min-frequency", t->min_frequency, "least count of a merged pair")->capture_default_str();
  tr->add_option("--special", t->special, "special tokens, ids 0.. (default: DeepSeek-V3's BOS, EOS)");
  tr->callback([t] { run_train(*t); });

  CLI::App* ch = tk->add_subcommand("chat", "Messages JSON on stdin -> DeepSeek-V3 chat prompt");
  ch->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a model directory")->required();
  ch->add_flag("--add-generation-prompt", o->gen_prompt, "end with <｜Assistant｜>");
  ch->add_flag("--ids", o->ids, "print the prompt's token ids instead of its text");
  ch->callback([o] { run_chat(*o); });
}

}  // namespace dsv3::cli
