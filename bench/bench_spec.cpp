// dsv3 bench speculative --model DIR [--prompts FILE] [--tokens 128] [--draft 1,2,3:0.3]
//                        [--reps 3] [--temperature 0] [--threads T] [--json]
//   --draft lists the speculative modes: N drafts per step, or N:P up to N drafts with the
//   adaptive length of infer/speculative.h (stop once the drafts' joint probability < P).
//   MTP speculative decoding beside plain decoding, in one run, on the same prompts: decode
//   tokens/s of each (the first new token comes from the prefill and is not counted), the
//   speedup, the acceptance rate per draft position and tokens per verify step. Each rep
//   runs every prompt plainly and then with each draft length, from an empty cache, so the
//   modes share the machine's noise; the speedup is the median of the per-rep ratios.
//   Greedy (the default) also checks that every speculative output equals the plain one and
//   fails otherwise. The memory-bandwidth roofline of plain decoding (weight bytes per step
//   ÷ stream bandwidth measured in the same run) tells whether the model is memory-bound.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "benches.h"
#include "core/check.h"
#include "core/clock.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "infer/generate.h"
#include "kernels/gemv.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::bench {
namespace {

namespace fs = std::filesystem;

struct SpecOpts {
  std::string model, prompts_file, drafts = "1,2,3:0.3";
  int64_t tokens = 128, reps = 3;
  double temperature = 0;
  int threads = 0;
  bool json = false;
};

// The default prompts: the kinds of text the demo corpus holds (C++ headers, fortunes).
const std::vector<std::string> kDefaultPrompts = {
    "#include <vector>\n#include <string>\n\nnamespace std {\n",
    "template<typename _Tp, typename _Alloc>\n  class vector\n  {\n",
    "  /**\n   *  @brief  Returns the number of elements in the",
    "// Copyright (C) 2001-2022 Free Software Foundation, Inc.\n//\n",
    "A man who is not afraid of the sea will soon be drowned,",
    "Q: How many programmers does it take to change a light bulb?\n",
};

// One prompt per line; "\n" and "\t" escapes inside a line stand for those characters.
std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream f(path);
  DSV3_CHECK(f.good(), "--prompts: cannot open '", path, "'");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    std::string p;
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size() && (line[i + 1] == 'n' || line[i + 1] == 't')) {
        p += line[i + 1] == 'n' ? '\n' : '\t';
        ++i;
      } else {
        p += line[i];
      }
    }
    if (!p.empty()) out.push_back(p);
  }
  DSV3_CHECK(!out.empty(), "--prompts: '", path, "' holds no prompt (one per line)");
  return out;
}

// "a,b,c" -> {"a", "b", "c"} (empty entries kept, so that "1,,2" is reported).
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(',', b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

double parse_double(const std::string& s, const char* flag) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  DSV3_CHECK(!s.empty() && end == s.c_str() + s.size(), flag, ": '", s, "' is not a number");
  return v;
}

struct Mode {
  int64_t draft = 0;                 // 0: plain
  double min_p = 0;                  // adaptive draft length (0: always `draft`)
  std::vector<double> tps;           // per rep: decode tokens / decode seconds over all prompts
  std::vector<double> ratio;         // per rep: tps / plain tps of the same rep
  SpeculativeStats spec;             // summed over every run
  int64_t mismatches = 0;            // greedy runs whose ids differ from plain decoding
};

void run_spec(const SpecOpts& o) {
  DSV3_CHECK(o.tokens >= 2 && o.tokens <= 100000, "--tokens must be in [2, 100000], got ", o.tokens);
  DSV3_CHECK(o.reps >= 1 && o.reps <= 1000, "--reps must be in [1, 1000], got ", o.reps);
  DSV3_CHECK(o.temperature >= 0, "--temperature must be ≥ 0, got ", o.temperature);
  std::vector<Mode> modes(1);  // plain first
  for (const std::string& e : split_list(o.drafts)) {
    const size_t colon = e.find(':');
    Mode md;
    const std::string n = e.substr(0, colon);
    char* end = nullptr;
    md.draft = std::strtol(n.c_str(), &end, 10);
    DSV3_CHECK(!n.empty() && end == n.c_str() + n.size() && md.draft >= 1 && md.draft <= 16,
               "--draft: '", e, "' is not N or N:P with N in [1, 16]");
    if (colon != std::string::npos) {
      md.min_p = parse_double(e.substr(colon + 1), "--draft");
      DSV3_CHECK(md.min_p > 0 && md.min_p <= 1, "--draft: the probability in '", e, "' must be in (0, 1]");
    }
    modes.push_back(md);
  }
  DSV3_CHECK(fs::exists(fs::path(o.model) / "config.json"), "--model: '", o.model,
             "' has no config.json (not a model directory)");
  DSV3_CHECK(fs::exists(fs::path(o.model) / "tokenizer.json"), "--model: '", o.model,
             "' has no tokenizer.json (the prompts are text)");
  if (o.threads > 0) set_num_threads(o.threads);
  const int threads = resolve_threads(o.threads);
  ModelOptions mo;
  mo.threads = threads;
  Model m(o.model, mo);
  DSV3_CHECK(m.n_mtp() >= 1, "--model: '", o.model, "' has no MTP module (num_nextn_predict_layers = 0)");
  const auto tok = tok::Tokenizer::from_path(o.model);
  const std::vector<std::string> texts = o.prompts_file.empty() ? kDefaultPrompts : read_prompts(o.prompts_file);
  std::vector<std::vector<int32_t>> prompts;
  int64_t longest = 0;
  for (const std::string& t : texts) {
    prompts.push_back(tok->encode(t, true));
    longest = std::max<int64_t>(longest, int64_t(prompts.back().size()));
  }
  const int64_t context = longest + o.tokens + 32;  // room for the last step's drafts
  DSV3_CHECK(context <= m.config().max_position_embeddings, "prompt + --tokens (", context,
             ") exceed max_position_embeddings = ", m.config().max_position_embeddings);
  Generator gen(m, tok.get(), context);

  GenerateOptions go;
  go.max_new_tokens = o.tokens;
  go.stop_at_eos = false;  // the same amount of work for every mode
  go.sampling.temperature = o.temperature;
  const bool greedy = o.temperature == 0;

  const double bw0 = measure_membw(threads, 5);
  if (!o.json)
    std::fprintf(stderr, "%zu prompts x %lld new tokens, %zu modes, %lld reps ...\n", prompts.size(),
                 (long long)o.tokens, modes.size(), (long long)o.reps);
  // Warm-up: fault the mmapped weights in.
  gen.generate(prompts[0], go);
  for (int64_t rep = 0; rep < o.reps; ++rep) {
    std::vector<std::vector<int32_t>> plain_ids(prompts.size());
    for (Mode& md : modes) {
      double tokens = 0, secs = 0;
      for (size_t p = 0; p < prompts.size(); ++p) {
        gen.reset();
        go.speculative_draft = md.draft;
        go.speculative_min_p = md.min_p;
        go.sampling.seed = uint64_t(1000 * rep + int64_t(p) + 1);
        const GenerateResult r = gen.generate(prompts[p], go);
        tokens += double(r.stats.new_tokens - 1);
        secs += r.stats.decode_s;
        if (md.draft == 0) {
          plain_ids[p] = r.ids;
        } else {
          const SpeculativeStats& s = r.stats.spec;
          md.spec.steps += s.steps;
          md.spec.drafted += s.drafted;
          md.spec.accepted += s.accepted;
          md.spec.drafted_at.resize(std::max(md.spec.drafted_at.size(), s.drafted_at.size()), 0);
          md.spec.accepted_at.resize(md.spec.drafted_at.size(), 0);
          for (size_t j = 0; j < s.drafted_at.size(); ++j) {
            md.spec.drafted_at[j] += s.drafted_at[j];
            md.spec.accepted_at[j] += s.accepted_at[j];
          }
          if (greedy && r.ids != plain_ids[p]) ++md.mismatches;
        }
      }
      md.tps.push_back(secs > 0 ? tokens / secs : 0.0);
      md.ratio.push_back(modes[0].tps.back() > 0 ? md.tps.back() / modes[0].tps.back() : 0.0);
    }
    if (!o.json) {
      std::fprintf(stderr, "  rep %lld:", (long long)rep + 1);
      for (const Mode& md : modes) std::fprintf(stderr, " %.1f", md.tps.back());
      std::fprintf(stderr, " tok/s\n");
    }
  }
  const double bw1 = measure_membw(threads, 5);
  const double wbytes = double(m.decode_bytes_per_token());
  const double roof = 0.5 * (bw0 + bw1) * 1e9 / wbytes;
  const ParamCounts pc = count_parameters(m.config());

  auto tokens_per_step = [](const Mode& md) {
    return md.spec.steps > 0 ? double(md.spec.steps + md.spec.accepted) / double(md.spec.steps) : 1.0;
  };
  auto rate = [](const Mode& md, size_t j) {
    return md.spec.drafted_at[j] > 0 ? double(md.spec.accepted_at[j]) / double(md.spec.drafted_at[j]) : 0.0;
  };
  if (o.json) {
    std::printf("{\"bench\":\"speculative\",\"threads\":%d,\"params_main\":%lld,\"decode_bytes\":%.0f,"
                "\"membw_gbps\":[%.2f,%.2f],\"plain_roofline_tps\":%.2f,\"prompts\":%zu,"
                "\"tokens\":%lld,\"reps\":%lld,\"temperature\":%g,\"modes\":[",
                threads, (long long)pc.main_total(), wbytes, bw0, bw1, roof, prompts.size(),
                (long long)o.tokens, (long long)o.reps, o.temperature);
    for (size_t i = 0; i < modes.size(); ++i) {
      const Mode& md = modes[i];
      std::printf("%s{\"draft\":%lld,\"min_p\":%g,\"decode_tokens_per_s\":%.2f,\"speedup\":%.3f,"
                  "\"tokens_per_step\":%.3f,\"drafted\":%lld,\"accepted\":%lld,\"acceptance\":[",
                  i ? "," : "", (long long)md.draft, md.min_p, median(md.tps), median(md.ratio),
                  tokens_per_step(md), (long long)md.spec.drafted, (long long)md.spec.accepted);
      for (size_t j = 0; j < md.spec.drafted_at.size(); ++j) std::printf("%s%.4f", j ? "," : "", rate(md, j));
      std::printf("],\"mismatches\":%lld}", (long long)md.mismatches);
    }
    std::printf("]}\n");
  } else {
    std::printf("model %s: %.1fM parameters (main), %.1f MB of weights read per plain decode step, "
                "threads %d\n", o.model.c_str(), double(pc.main_total()) * 1e-6, wbytes * 1e-6, threads);
    std::printf("membw %.1f GB/s before, %.1f after: plain decode roofline %.1f tok/s\n", bw0, bw1, roof);
    std::printf("%zu prompts x %lld new tokens, %s, median of %lld reps\n", prompts.size(),
                (long long)o.tokens, greedy ? "greedy" : "sampled", (long long)o.reps);
    // step cost: one speculative step's time in plain steps (tokens/step ÷ speedup).
    std::printf("%-16s %12s %9s %12s %12s %10s  %s\n", "mode", "decode tok/s", "speedup", "tokens/step",
                "drafts/step", "step cost", "acceptance by draft position");
    for (const Mode& md : modes) {
      char name[48];
      if (md.draft == 0) std::snprintf(name, sizeof name, "plain");
      else if (md.min_p > 0) std::snprintf(name, sizeof name, "mtp N<=%lld p>=%g", (long long)md.draft, md.min_p);
      else std::snprintf(name, sizeof name, "mtp N=%lld", (long long)md.draft);
      const double per_step = md.spec.steps > 0 ? double(md.spec.drafted) / double(md.spec.steps) : 0.0;
      const double cost = median(md.ratio) > 0 ? tokens_per_step(md) / median(md.ratio) : 0.0;
      std::printf("%-16s %12.2f %8.2fx %12.2f %12.2f %9.2fx ", name, median(md.tps), median(md.ratio),
                  tokens_per_step(md), per_step, cost);
      for (size_t j = 0; j < md.spec.drafted_at.size(); ++j) std::printf(" %5.1f%%", 100.0 * rate(md, j));
      if (greedy && md.draft > 0) std::printf("  (ids %s)", md.mismatches ? "DIFFER" : "identical");
      std::printf("\n");
    }
  }
  for (const Mode& md : modes)
    DSV3_CHECK(md.mismatches == 0, "greedy speculative decoding with --draft ", md.draft,
               " differed from plain decoding in ", md.mismatches, " runs");
}

}  // namespace

void add_spec(CLI::App& bench) {
  auto o = std::make_shared<SpecOpts>();
  CLI::App* c = bench.add_subcommand("speculative", "MTP speculative vs plain decoding: speedup and acceptance");
  c->add_option("--model", o->model, "Model directory with an MTP module and tokenizer.json")->required();
  c->add_option("--prompts", o->prompts_file, "Text file, one prompt per line (\\n escapes); default: built-in");
  c->add_option("--tokens", o->tokens, "New tokens per prompt")->capture_default_str();
  c->add_option("--draft", o->drafts, "Modes to compare: N drafts per step, or N:P adaptive (stop below joint draft probability P)")
      ->capture_default_str();
  c->add_option("--reps", o->reps, "Repetitions (median)")->capture_default_str();
  c->add_option("--temperature", o->temperature, "0 = greedy (checks identical output)");
  c->add_option("--threads", o->threads, "Threads (default: all cores)");
  c->add_flag("--json", o->json, "One JSON line");
  c->callback([o] { run_spec(*o); });
}

}  // namespace dsv3::bench
