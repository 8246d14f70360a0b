// dsv3 data prepare --tokenizer T --input FILES/DIRS... --out DATA [--threads N]
// dsv3 data info DATA [--tokenizer T]
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "data/dataset.h"
#include "data/prepare.h"

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
  std::printf("vocab %d, eos %d, fim begin/hole/end %d/%d/%d, tokenizer hash %s\n", m.vocab_size,
              m.eos_id, m.fim_begin_id, m.fim_hole_id, m.fim_end_id, m.tokenizer_hash.c_str());
}

struct InfoOpts {
  std::string dir, tokenizer;
};

void run_info(const InfoOpts& o) {
  const std::string hash = o.tokenizer.empty() ? "" : data::tokenizer_hash(o.tokenizer);
  const data::DataSet ds = data::DataSet::open(o.dir, hash);
  std::printf("%s", ds.meta().to_json().c_str());
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
  p->callback([o] {
    o->progress = true;
    run_prepare(*o);
  });

  auto i = std::make_shared<InfoOpts>();
  CLI::App* in = d->add_subcommand("info", "Validate DATA/ and print its meta.json");
  in->add_option("dir", i->dir, "data set directory")->required();
  in->add_option("--tokenizer", i->tokenizer, "check that DATA/ was made with this tokenizer");
  in->callback([i] { run_info(*i); });
}

}  // namespace dsv3::cli
