// dsv3 data prepare --tokenizer T --input FILES/DIRS... --out DATA [--threads N]
//                   [--val-fraction F] [--seed S]
// dsv3 data info DATA [--tokenizer T]
// dsv3 data sample DATA [--tokenizer T] [--seq-len T] [--batch B] [--seed S] [--batches N]
//                       [--fim-rate R] [--state JSON]
#include <CLI/CLI.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {

namespace {

void run_prepare(const data::PrepareOptions& o) {
  const data::PrepareStats st = data::prepare_data(o);
  const data::DataMeta& m = st.meta;
  std::printf("%s: %lld documents (%lld code), %lld tokens (%lld code) from %lld files; "
              "%lld text bytes, %lld code bytes; %lld empty documents dropped; %.2f s\n",
              o.out.c_str(), static_cast<long long>(m.n_docs), static_cast<long long>(m.n_docs_code),
              static_cast<long long>(m.n_tokens), static_cast<long long>(m.n_tokens_code),
              static_cast<long long>(m.sources), static_cast<long long>(st.bytes_text),
              static_cast<long long>(st.bytes_code), static_cast<long long>(st.dropped_empty),
              st.seconds);
  if (st.val.n_docs > 0) {
    const data::DataMeta& v = st.val;
    const double docs = double(m.n_docs + v.n_docs), toks = double(m.n_tokens + v.n_tokens);
    std::printf("split (seed %llu): train %s: %lld documents, %lld tokens (%.1f%% of tokens); "
                "val %s/val: %lld documents (%.1f%%), %lld tokens (%.1f%%)\n",
                static_cast<unsigned long long>(o.seed), o.out.c_str(),
                static_cast<long long>(m.n_docs), static_cast<long long>(m.n_tokens),
                100.0 * double(m.n_tokens) / toks, o.out.c_str(), static_cast<long long>(v.n_docs),
                100.0 * double(v.n_docs) / docs, static_cast<long long>(v.n_tokens),
                100.0 * double(v.n_tokens) / toks);
  }
  std::printf("vocab %d, eos %d, fim begin/hole/end %d/%d/%d, tokenizer hash %s\n", m.vocab_size,
              m.eos_id, m.fim_begin_id, m.fim_hole_id, m.fim_end_id, m.tokenizer_hash.c_str());
}

// --val-fraction: a number (the range is checked by prepare_data).
double parse_fraction(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  DSV3_CHECK(!s.empty() && end && *end == '\0' && errno == 0 && std::isfinite(v),
             "--val-fraction: '", s, "' is not a number (expected a fraction in [0, 1), e.g. 0.05)");
  return v;
}

struct InfoOpts {
  std::string dir, tokenizer;
};

void run_info(const InfoOpts& o) {
  const std::string hash = o.tokenizer.empty() ? "" : data::tokenizer_hash(o.tokenizer);
  const data::DataSet ds = data::DataSet::open(o.dir, hash);
  std::printf("%s", ds.meta().to_json().c_str());
}

struct SampleOpts {
  std::string dir, tokenizer, state;
  data::LoaderOptions lo{.seq_len = 64, .batch = 2};
  int batches = 1;
};

// Prints batches as the trainer would see them: decoded text when a tokenizer is given
// (special tokens shown), else ids; then the loader state to resume after them.
void run_sample(const SampleOpts& o) {
  std::unique_ptr<tok::Tokenizer> t;
  if (!o.tokenizer.empty()) t = tok::Tokenizer::from_path(o.tokenizer);
  const data::DataSet ds =
      data::DataSet::open(o.dir, o.tokenizer.empty() ? "" : data::tokenizer_hash(o.tokenizer));
  data::Loader L(ds, o.lo);
  if (!o.state.empty()) L.restore(data::LoaderState::from_json(o.state));
  std::vector<int32_t> b;
  const int64_t T1 = o.lo.seq_len + 1;
  for (int k = 0; k < o.batches; ++k) {
    L.next(b);
    for (int64_t r = 0; r < o.lo.batch; ++r) {
      const std::vector<int32_t> row(b.begin() + r * T1, b.begin() + (r + 1) * T1);
      std::printf("-- batch %d row %lld\n", k, static_cast<long long>(r));
      if (t) {
        std::printf("%s\n", t->decode(row).c_str());
      } else {
        for (int32_t id : row) std::printf("%d ", id);
        std::printf("\n");
      }
    }
  }
  std::printf("state %s\n", L.state().to_json().c_str());
}

}  // namespace

void register_data(CLI::App& app) {
  CLI::App* d = app.add_subcommand("data", "Prepare and inspect training data");
  d->require_subcommand(1);
  auto o = std::make_shared<data::PrepareOptions>();
  CLI::App* p = d->add_subcommand("prepare",
      "Tokenize documents (.jsonl, .txt/.md, source files, directories) into DATA/");
  p->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a directory holding it")->required();
  p->add_option("--input", o->inputs, "files and directories (recursive, sorted)")
      ->required()->expected(1, -1);
  p->add_option("--out", o->out, "data set directory to write")->required();
  p->add_option("--threads", o->threads, "tokenizer threads (0: all cores)")->capture_default_str();
  auto val_fraction = std::make_shared<std::string>("0");
  p->add_option("--val-fraction", *val_fraction,
                "fraction of whole documents held out into DATA/val/ (0: no split)")
      ->capture_default_str();
  p->add_option("--seed", o->seed, "which documents are held out")->capture_default_str();
  p->callback([o, val_fraction] {
    o->val_fraction = parse_fraction(*val_fraction);
    o->progress = true;
    run_prepare(*o);
  });

  auto i = std::make_shared<InfoOpts>();
  CLI::App* in = d->add_subcommand("info", "Validate DATA/ and print its meta.json");
  in->add_option("dir", i->dir, "data set directory")->required();
  in->add_option("--tokenizer", i->tokenizer, "check that DATA/ was made with this tokenizer");
  in->callback([i] { run_info(*i); });

  auto s = std::make_shared<SampleOpts>();
  CLI::App* sa = d->add_subcommand("sample", "Print the loader's first batches of DATA/");
  sa->add_option("dir", s->dir, "data set directory")->required();
  sa->add_option("--tokenizer", s->tokenizer, "decode the rows with this tokenizer");
  sa->add_option("--seq-len", s->lo.seq_len, "T (rows hold T+1 tokens)")->capture_default_str();
  sa->add_option("--batch", s->lo.batch, "rows per batch")->capture_default_str();
  sa->add_option("--seed", s->lo.seed, "shuffle / FIM seed")->capture_default_str();
  sa->add_option("--fim-rate", s->lo.fim_rate, "FIM rate of code documents")->capture_default_str();
  sa->add_option("--batches", s->batches, "batches to print")->capture_default_str();
  sa->add_option("--state", s->state, "loader state JSON to resume from");
  sa->callback([s] { run_sample(*s); });
}

}  // namespace dsv3::cli
