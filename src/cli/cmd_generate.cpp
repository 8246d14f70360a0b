// `dsv3 generate`: text (or token ids) from a prompt, streamed as it is produced.
// `dsv3 chat`: an interactive conversation in DeepSeek-V3's chat format over stdin/stdout;
// the Generator keeps the cache between turns, so each turn prefills only its new messages.
#include <algorithm>
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "core/check.h"
#include "core/parallel.h"
#include "infer/generate.h"
#include "model/model.h"
#include "model_args.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {
namespace {

constexpr int64_t kDefaultDraft = 3;

struct GenArgs {
  std::string model, prompt, ids, system;
  bool prompt_given = false, ids_given = false, json = false, compare = false, ignore_eos = false;
  std::string speculative = "auto";  // "auto" | "mtp" | "off" ("none" = "off")
  int64_t draft = 0;                 // drafts per step; 0: the default (kDefaultDraft)
  double draft_min_p = 0.2;          // adaptive draft length; 0: always `draft`
  CLI::Option* draft_min_p_opt = nullptr;  // given on the command line?
  int64_t max_new_tokens = 128, context = 0;
  SamplingParams sampling;
  std::vector<std::string> stop;
  int threads = 0;
  std::string activations = "f32", kv_cache = "bf16", weights = "huge";
};

void add_sampling_options(CLI::App* c, GenArgs& a) {
  c->add_option("--model", a.model, "Model directory (config.json + safetensors [+ tokenizer.json])")
      ->required();
  c->add_option("--temperature", a.sampling.temperature, "Sampling temperature (0 = greedy, default)");
  c->add_option("--top-k", a.sampling.top_k, "Keep the k most likely tokens (0 = off)");
  c->add_option("--top-p", a.sampling.top_p, "Nucleus sampling mass in (0, 1] (1 = off)");
  c->add_option("--seed", a.sampling.seed, "Random seed (default 0)");
  c->add_option("--stop", a.stop, "Stop string (repeatable); not included in the output");
  c->add_flag("--ignore-eos", a.ignore_eos,
              "Go on past end-of-sequence tokens up to --max-new-tokens (the server's ignore_eos; "
              "for measuring and testing decode)");
  c->add_option("--context", a.context, "Context positions (default: min(max_position_embeddings, 4096))");
  c->add_option("--threads", a.threads, "Threads (default: all cores)");
  c->add_option("--activations", a.activations, cli::kActivationsHelp);
  c->add_option("--kv-cache", a.kv_cache, cli::kKvCacheHelp);
  c->add_option("--weights", a.weights, cli::kWeightsHelp);
  c->add_option("--speculative", a.speculative,
                "MTP speculative decoding: auto (default: draft with the model's MTP modules only "
                "while it measurably pays on this model and machine; plain without MTP modules), "
                "mtp (draft every step), off (never; 'none' = off). Output is the same in every mode");
  c->add_option("--draft", a.draft,
                "Most tokens drafted per step when drafting (default 3, or "
                "num_nextn_predict_layers if larger; drafts past it chain the last module)");
  a.draft_min_p_opt = c->add_option("--draft-min-p", a.draft_min_p,
                                    "Stop drafting once the drafts' joint probability under the MTP "
                                    "module falls below this (default 0.2; 0 = always --draft; "
                                    "output is unchanged, only speed)");
}

// --speculative and the options that go with it, checked.
SpecMode spec_mode(const GenArgs& a) {
  const SpecMode m = parse_spec_mode(a.speculative);
  DSV3_CHECK(a.draft >= 0 && a.draft <= 16, "--draft must be in [1, 16], got ", a.draft);
  DSV3_CHECK(a.draft == 0 || m != SpecMode::Off, "--draft needs --speculative mtp or auto");
  DSV3_CHECK(a.draft_min_p >= 0 && a.draft_min_p <= 1, "--draft-min-p must be in [0, 1], got ",
             a.draft_min_p);
  DSV3_CHECK(a.draft_min_p_opt == nullptr || a.draft_min_p_opt->count() == 0 || m != SpecMode::Off,
             "--draft-min-p needs --speculative mtp or auto");
  return m;
}

std::unique_ptr<tok::Tokenizer> load_tokenizer(const std::string& dir, bool required,
                                               const char* why) {
  const bool present = std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json");
  DSV3_CHECK(present || !required, why, " needs a tokenizer, but the model directory '", dir,
             "' has no tokenizer.json");
  return present ? tok::Tokenizer::from_path(dir) : nullptr;
}

std::unique_ptr<Model> load_model(const GenArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  DSV3_CHECK(std::filesystem::exists(std::filesystem::path(a.model) / "config.json"),
             "--model: '", a.model, "' has no config.json (not a model directory)");
  ModelOptions mo;
  const SpecMode sm = spec_mode(a);
  mo.with_mtp = sm != SpecMode::Off;  // plain decoding does not use the MTP modules
  mo.bf16_activations = cli::parse_activations(a.activations);
  mo.kv_cache = CacheDtype(cli::parse_kv_cache(a.kv_cache));
  const bool huge = cli::parse_weights_memory(a.weights);
  auto m = std::make_unique<Model>(a.model, mo);
  // auto on a model without them is plain decoding (the stats say so).
  DSV3_CHECK(sm != SpecMode::Mtp || m->n_mtp() >= 1, "--speculative mtp: the model in '", a.model,
             "' has no MTP module (num_nextn_predict_layers = 0)");
  cli::make_weights_resident(*m, huge, "dsv3", /*quiet=*/true);
  return m;
}

GenerateOptions generate_options(const GenArgs& a, const Model& m) {
  GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.sampling = a.sampling;
  o.stop = a.stop;
  o.stop_at_eos = !a.ignore_eos;
  o.speculative_mode = spec_mode(a);
  if (o.speculative_mode != SpecMode::Off) {
    // Defaults measured on configs/mtp-bench.json (docs/PERF.md): up to 3 drafts with the
    // 0.2 cut-off was within noise of the best fixed length everywhere and well ahead of 1.
    o.speculative_draft = a.draft > 0 ? a.draft : std::max<int64_t>(kDefaultDraft, m.n_mtp());
    o.speculative_min_p = a.draft_min_p;
  }
  return o;
}

double ratio(int64_t a, int64_t b) { return b > 0 ? double(a) / double(b) : 0; }

// Which mode ran and why (every run): {"mode","chose","reason", the policy's estimates, this
// call's plain and verify steps}.
nlohmann::ordered_json speculation_json(const GenerateStats& s) {
  const SpecReport& r = s.speculation;
  return {{"mode", spec_mode_name(r.mode)},
          {"chose", r.drafting ? "mtp" : "plain"},
          {"reason", r.reason},
          {"plain_step_ms", 1e3 * r.plain_step_s},
          {"verify_step_ms", 1e3 * r.verify_step_s},
          {"acceptance", r.acceptance},
          {"tokens_per_verify", r.tokens_per_verify},
          {"est_speedup", r.speedup},
          {"plain_steps", s.decode_steps - s.spec.steps},
          {"verify_steps", s.spec.steps},
          {"switches", r.switches}};
}

nlohmann::ordered_json spec_json(const GenerateStats& s) {
  const SpeculativeStats& p = s.spec;
  std::vector<double> rate;
  for (size_t j = 0; j < p.drafted_at.size(); ++j)
    rate.push_back(ratio(p.accepted_at[j], p.drafted_at[j]));
  return {{"drafted", p.drafted},
          {"accepted", p.accepted},
          {"acceptance_rate", ratio(p.accepted, p.drafted)},
          {"acceptance_by_position", rate},
          {"steps", p.steps},
          {"drafts_per_step", ratio(p.drafted, p.steps)},
          {"tokens_per_step", ratio(p.steps + p.accepted, p.steps)},
          {"decode_tokens_per_s", s.decode_tokens_per_s}};
}

void print_spec_stats(const GenerateStats& s) {
  const SpecReport& r = s.speculation;
  if (r.mode == SpecMode::Auto)
    std::fprintf(stderr, "[speculative auto: chose %s (%s); %lld plain, %lld verify steps]\n",
                 r.drafting ? "mtp" : "plain", r.reason.c_str(),
                 (long long)(s.decode_steps - s.spec.steps), (long long)s.spec.steps);
  if (!s.speculative || s.spec.steps == 0) return;
  const SpeculativeStats& p = s.spec;
  std::fprintf(stderr, "[speculative: %lld drafted, %lld accepted (%.1f%%; by position",
               (long long)p.drafted, (long long)p.accepted, 100 * ratio(p.accepted, p.drafted));
  for (size_t j = 0; j < p.drafted_at.size(); ++j)
    std::fprintf(stderr, " %zu: %.1f%%", j + 1, 100 * ratio(p.accepted_at[j], p.drafted_at[j]));
  std::fprintf(stderr, "), %.2f drafts and %.2f tokens per step, %.2f decode tok/s]\n",
               ratio(p.drafted, p.steps), ratio(p.steps + p.accepted, p.steps), s.decode_tokens_per_s);
}

// The --compare line: decode tokens/s of the plain and the speculative run of one prompt.
void print_compare(const GenerateResult& plain, const GenerateResult& spec) {
  const double pl = plain.stats.decode_tokens_per_s, sp = spec.stats.decode_tokens_per_s;
  std::fprintf(stderr, "[compare: plain %.2f decode tok/s, speculative %.2f, speedup %.2fx; ids %s]\n",
               pl, sp, pl > 0 ? sp / pl : 0.0, plain.ids == spec.ids ? "identical" : "differ");
}

void print_stats(const GenerateResult& r) {
  const GenerateStats& s = r.stats;
  std::fprintf(stderr,
               "[%lld prompt tokens (%lld reused, %lld prefilled) in %.3f s, %.1f tok/s; "
               "%lld new tokens, %lld decode steps in %.3f s, %.2f tok/s; stop: %s]\n",
               (long long)s.prompt_tokens, (long long)s.reused_tokens, (long long)s.prefill_tokens,
               s.prefill_s, s.prefill_tokens_per_s, (long long)s.new_tokens,
               (long long)s.decode_steps, s.decode_s, s.decode_tokens_per_s,
               stop_reason_name(r.stop_reason));
  print_spec_stats(s);
}

void run_generate(const GenArgs& a) {
  DSV3_CHECK(a.prompt_given != a.ids_given, "give exactly one of --prompt and --ids");
  std::vector<int32_t> ids;
  if (!a.prompt_given) ids = parse_id_list(a.ids);  // checks for an empty list first
  const auto model = load_model(a);
  const auto tok = load_tokenizer(a.model, a.prompt_given || !a.stop.empty(),
                                  a.prompt_given ? "--prompt" : "--stop");
  if (a.prompt_given) {
    ids = tok->encode(a.prompt, true);  // BOS as the tokenizer's post-processor adds it
    DSV3_CHECK(!ids.empty(), "--prompt: the text encodes to no tokens (empty prompt)");
  }
  Generator gen(*model, tok.get(), a.context);
  const GenerateOptions o = generate_options(a, *model);
  DSV3_CHECK(!a.compare || o.speculative_draft > 0, "--compare needs --speculative mtp or auto");
  // --compare: the same prompt decoded plainly first (from an empty cache, as the
  // speculative run then is too).
  GenerateResult plain;
  if (a.compare) {
    GenerateOptions po = o;
    po.speculative_draft = 0;
    plain = gen.generate(ids, po);
    gen.reset();
  }
  const auto compare_json = [&](const GenerateResult& r) {
    const double sp = r.stats.decode_tokens_per_s, pl = plain.stats.decode_tokens_per_s;
    return nlohmann::ordered_json{{"plain_decode_tokens_per_s", pl},
                                  {"speculative_decode_tokens_per_s", sp},
                                  {"speedup", pl > 0 ? sp / pl : 0.0},
                                  {"same_ids", plain.ids == r.ids}};
  };
  if (a.json) {
    const GenerateResult r = gen.generate(ids, o);
    const GenerateStats& s = r.stats;
    nlohmann::ordered_json j;  // keys in the documented order
    j["ids"] = r.ids;
    if (tok) j["text"] = r.text;
    j["stop_reason"] = stop_reason_name(r.stop_reason);
    j["stats"] = {{"prompt_tokens", s.prompt_tokens},     {"reused_tokens", s.reused_tokens},
                  {"prefill_tokens", s.prefill_tokens},   {"new_tokens", s.new_tokens},
                  {"decode_steps", s.decode_steps},       {"prefill_s", s.prefill_s},
                  {"prefill_tokens_per_s", s.prefill_tokens_per_s},
                  {"decode_s", s.decode_s},               {"decode_tokens_per_s", s.decode_tokens_per_s}};
    j["stats"]["speculation"] = speculation_json(s);
    if (s.speculative) j["stats"]["speculative"] = spec_json(s);
    if (a.compare) j["stats"]["compare"] = compare_json(r);
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
    return;
  }
  // Without a tokenizer the ids are the output, comma-separated like --ids takes them.
  bool first = true;
  const GenerateResult r = gen.generate(ids, o, [&](int32_t id, const std::string& text) {
    if (tok) {
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else if (id >= 0) {
      std::printf("%s%d", first ? "" : ",", id);
      first = false;
    }
    std::fflush(stdout);
  });
  std::printf("\n");
  print_stats(r);
  if (a.compare) print_compare(plain, r);
}

void run_chat(const GenArgs& a) {
  const auto model = load_model(a);
  const auto tok = load_tokenizer(a.model, true, "chat");
  Generator gen(*model, tok.get(), a.context);
  const GenerateOptions o = generate_options(a, *model);
  DSV3_CHECK(!a.compare || o.speculative_draft > 0, "--compare needs --speculative mtp or auto");
  // --compare: every turn is also decoded plainly, by a second Generator with its own cache
  // (so the conversation's cache and its prefix reuse are untouched), after the streamed
  // speculative reply.
  std::unique_ptr<Generator> plain_gen;
  if (a.compare) plain_gen = std::make_unique<Generator>(*model, tok.get(), a.context);
  const std::string bos = tok->bos_token().empty() ? "<｜begin▁of▁sentence｜>" : tok->bos_token();
  std::vector<tok::ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system, {}});
  const size_t n_fixed = messages.size();
  // The conversation as the model saw it: the last turn's prompt ids + reply ids (+ EOS), and
  // the template text they stand for. The next turn appends only its new text's tokens, so
  // the reply is not re-tokenized (decoded text need not encode back to the same ids) and
  // the whole conversation stays a prefix of the Generator's cache.
  std::vector<int32_t> conv_ids;
  std::string conv_text;
  const bool tty = ::isatty(STDIN_FILENO);
  std::string line;
  for (;;) {
    if (tty) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      messages.resize(n_fixed);
      conv_ids.clear();
      std::fprintf(stderr, "[history cleared]\n");
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({"user", line, {}});
    const std::string text = tok::render_chat_deepseek_v3(messages, true, bos);
    std::vector<int32_t> ids;
    if (!conv_ids.empty() && text.compare(0, conv_text.size(), conv_text) == 0) {
      ids = conv_ids;
      tok->encode_into(std::string_view(text).substr(conv_text.size()), ids, false);
    } else {
      ids = tok->encode(text, false);  // the template holds BOS
    }
    const GenerateResult r = gen.generate(ids, o, [](int32_t, const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
    std::fflush(stdout);
    print_stats(r);
    if (plain_gen) {
      GenerateOptions po = o;
      po.speculative_draft = 0;
      print_compare(plain_gen->generate(ids, po), r);
    }
    messages.push_back({"assistant", r.text, {}});
    // A reply cut by a stop string or the context has ids beyond its text: re-tokenize next.
    conv_ids.clear();
    const bool eos_end = r.stop_reason == StopReason::Eos;
    if ((eos_end || r.stop_reason == StopReason::MaxTokens) && tok->eos_id() >= 0) {
      conv_ids = ids;
      conv_ids.insert(conv_ids.end(), r.ids.begin(), r.ids.end());
      if (!eos_end) conv_ids.push_back(tok->eos_id());  // the template closes the turn
      conv_text = tok::render_chat_deepseek_v3(messages, false, bos);
    }
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenArgs>();
  CLI::App* c = app.add_subcommand("generate", "Generate text (or token ids) from a prompt");
  add_sampling_options(c, *a);
  c->add_option("--prompt", a->prompt, "Text, tokenized with the model's tokenizer.json (BOS added)")
      ->each([a](const std::string&) { a->prompt_given = true; });
  c->add_option("--ids", a->ids, "Comma-separated prompt token ids, e.g. 0,5,17")
      ->each([a](const std::string&) { a->ids_given = true; });
  c->add_option("--max-new-tokens", a->max_new_tokens, "Most tokens to generate (default 128)");
  c->add_flag("--compare", a->compare,
              "With --speculative mtp or auto: also decode plainly first and report both tokens/s "
              "and the speedup");
  c->add_flag("--json", a->json,
              "Print one line {\"ids\",\"text\",\"stop_reason\",\"stats\"} instead of streaming");
  c->callback([a] { run_generate(*a); });

  auto b = std::make_shared<GenArgs>();
  CLI::App* ch = app.add_subcommand(
      "chat", "Chat in DeepSeek-V3's format: user lines from stdin (/reset clears, /exit or EOF ends)");
  b->max_new_tokens = 512;
  add_sampling_options(ch, *b);
  ch->add_option("--system", b->system, "System prompt");
  ch->add_option("--max-new-tokens", b->max_new_tokens, "Most tokens per reply (default 512)");
  ch->add_flag("--compare", b->compare,
               "With --speculative mtp or auto: also decode each turn plainly and report both "
               "tokens/s and the speedup");
  ch->callback([b] { run_chat(*b); });
}

}  // namespace dsv3::cli
