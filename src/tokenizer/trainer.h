// `dsv3 tokenizer train`: learns a byte-level BPE on our own text with DeepSeek-V3's
// pre-tokenizer, and writes tokenizer.json files that Hugging Face tokenizers loads.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dsv3::tok {

struct TrainOptions {
  int32_t vocab_size = 32000;  // special tokens + 256 bytes + merges
  int64_t min_frequency = 2;   // a pair seen fewer times is never merged
  // Ids 0.. in this order, as in DeepSeek-V3 (BOS 0, EOS 1); never split, never learned.
  std::vector<std::string> special_tokens = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"};
};

// Trains on the concatenated texts (each a document; pre-tokenized independently).
std::unique_ptr<Tokenizer> train_bpe(const std::vector<std::string>& texts,
                                     const TrainOptions& opt);

// tokenizer.json text for any loaded or trained tokenizer (merges in the "a b" form).
std::string to_tokenizer_json(const Tokenizer& t);

}  // namespace dsv3::tok
