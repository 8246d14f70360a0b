// `dsv3 data prepare`: documents from JSONL / plain files / directories -> token ids in the
// data set layout of dataset.h.
//
// Inputs, in the order given; a directory is walked recursively in sorted path order
// (hidden entries skipped) and contributes only files whose kind it recognises:
//   *.jsonl      one document per line: {"text": string, "kind": "text"|"code" (default
//                "text"), other keys ignored}; blank lines are skipped; bytes that are not
//                UTF-8 are replaced by U+FFFD first (the tokenizer's input policy)
//   *.txt *.md   one document per file, kind text
//   source files one document per file, kind code: see is_code_path()
// A file named directly with another extension is one text document.
// Documents are tokenized without BOS/EOS; ones that give no tokens (empty text) are dropped.
//
// Held-out split (val_fraction > 0): k = round(val_fraction * n_docs) whole documents
// (at least 1, at most n_docs - 1), chosen by seed alone, go to DATA/val/, a data set of
// the same layout (its own tokens.bin, docs.bin, meta.json); DATA/ keeps the others. Both
// keep the input order. The loader reads DATA/ as before and never sees val/; evaluation
// (`dsv3 eval ppl`, `eval niah`) opens DATA/val/.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace dsv3::tok { class Tokenizer; }

namespace dsv3::data {

struct PrepareOptions {
  std::string tokenizer;            // tokenizer.json or a directory holding it
  std::vector<std::string> inputs;  // files and directories
  std::string out;                  // DATA/ to write (replaced when it is a data set)
  int threads = 0;                  // 0: default_threads()
  bool progress = false;            // one line per input file on stderr
  double val_fraction = 0;          // documents held out into DATA/val/; in [0, 1)
  uint64_t seed = 0;                // which documents are held out
};

struct PrepareStats {
  DataMeta meta;  // DATA/ (the training split when there is a held-out one)
  DataMeta val;   // DATA/val/ (n_docs = 0: no held-out split)
  int64_t bytes_text = 0, bytes_code = 0;  // document bytes read, by kind
  int64_t dropped_empty = 0;
  double seconds = 0;
};

// True for source-code paths: a known extension (.h .hpp .cpp .cc .c .py .rs .go ...) or
// no extension inside a directory named "include" (the C++ standard headers).
bool is_code_path(const std::string& path);

// Writes DATA/ atomically (DATA.tmp-PID, then rename). Throws dsv3::Error on a missing
// input, a malformed JSONL line (file:line), an empty corpus, a val_fraction outside
// [0, 1), or a split of fewer than 2 documents.
PrepareStats prepare_data(const PrepareOptions& opt);

}  // namespace dsv3::data
