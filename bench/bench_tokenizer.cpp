// dsv3 bench tokenize --tokenizer PATH --input FILE [--doc-bytes N] [--seconds S] [--json]
// Encode throughput on one thread, in MB/s of UTF-8 input: the whole file as one call,
// and as documents of about --doc-bytes (cut at line ends), the form a data pipeline uses.
// tools/tokenizer/bench.sh runs the Rust HF tokenizers on the same text for comparison.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "bench_util.h"
#include "core/check.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::bench {

namespace {

struct TokOpts {
  std::string tokenizer, input;
  size_t doc_bytes = 4096;
  double seconds = 2.0;
  bool json = false;
};

void run_tokenize(const TokOpts& o) {
  std::ifstream f(o.input, std::ios::binary);
  DSV3_CHECK(f.good(), "--input: cannot open '", o.input, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  DSV3_CHECK(!text.empty(), "--input: '", o.input, "' is empty");
  DSV3_CHECK(o.doc_bytes > 0, "--doc-bytes must be positive");
  std::vector<std::string> docs;
  for (size_t at = 0; at < text.size();) {
    size_t end = std::min(text.size(), at + o.doc_bytes);
    const size_t nl = text.find('\n', end);
    end = nl == std::string::npos ? text.size() : nl + 1;
    docs.push_back(text.substr(at, end - at));
    at = end;
  }
  const auto tok = tok::Tokenizer::from_path(o.tokenizer);
  // The first pass runs with an empty word cache.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tok->encode(text);
  const double cold_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const size_t n_tokens = ids.size();
  // FNV-1a (32-bit) over the ids: bench_hf.js prints the same checksum for HF's ids.
  uint32_t checksum = 2166136261u;
  for (const int32_t id : ids) checksum = (checksum ^ uint32_t(id)) * 16777619u;
  const Timing whole = time_it([&] { ids.clear(); tok->encode_into(text, ids); }, o.seconds, 3);
  const Timing split = time_it([&] {
    for (const std::string& d : docs) { ids.clear(); tok->encode_into(d, ids); }
  }, o.seconds, 3);
  const double mb = double(text.size()) / 1e6;
  if (o.json) {
    std::printf("{\"bench\":\"tokenize\",\"bytes\":%zu,\"tokens\":%zu,\"docs\":%zu,"
                "\"ids_fnv1a\":\"%08x\",\"cold_mb_s\":%.2f,\"whole_mb_s\":%.2f,\"docs_mb_s\":%.2f}\n",
                text.size(), n_tokens, docs.size(), checksum, mb / cold_s, mb / whole.median_s,
                mb / split.median_s);
  } else {
    std::printf("dsv3 tokenize: %.2f MB, %zu tokens (%.2f bytes/token, ids FNV-1a %08x), 1 thread\n",
                mb, n_tokens, double(text.size()) / double(n_tokens), checksum);
    std::printf("  first pass (cold cache)   %8.2f MB/s\n", mb / cold_s);
    std::printf("  one call, whole text      %8.2f MB/s (median of %d)\n", mb / whole.median_s, whole.reps);
    std::printf("  %zu docs of ~%zu bytes   %8.2f MB/s (median of %d)\n", docs.size(), o.doc_bytes,
                mb / split.median_s, split.reps);
  }
}

}  // namespace

void add_tokenize(CLI::App& bench) {
  auto o = std::make_shared<TokOpts>();
  CLI::App* s = bench.add_subcommand("tokenize", "Tokenizer encode throughput (MB/s, 1 thread)");
  s->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a model directory")->required();
  s->add_option("--input", o->input, "UTF-8 text file")->required();
  s->add_option("--doc-bytes", o->doc_bytes, "document size for the per-document pass")->capture_default_str();
  s->add_option("--seconds", o->seconds, "time budget per measurement")->capture_default_str();
  s->add_flag("--json", o->json, "one JSON line");
  s->callback([o] { run_tokenize(*o); });
}

}  // namespace dsv3::bench
