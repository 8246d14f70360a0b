// A Hugging Face tokenizer.json with a byte-level BPE model (DeepSeek-V3's, GPT-2 style
// files and what `dsv3 tokenizer train` writes): added tokens matched first (leftmost,
// longest), then the pre-tokenizer pipeline, then BPE per word with a word -> ids cache.
//
// Input policy: text is bytes; ill-formed UTF-8 is replaced by U+FFFD per maximal
// ill-formed subpart before tokenization — what HF gives for the same bytes read through
// String::from_utf8_lossy / TextDecoder (HF itself only accepts valid strings). Decoding
// is lossy the same way (HF's ByteLevel decoder uses from_utf8_lossy).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"

namespace dsv3::tok {

class WordCache;

class Tokenizer {
 public:
  // path: a tokenizer.json, or a directory holding tokenizer.json (and optionally
  // tokenizer_config.json, which supplies BOS/EOS handling and the chat template).
  static std::unique_ptr<Tokenizer> from_path(const std::string& path);
  // tokenizer_json: the file's text; config_json: tokenizer_config.json's text or empty.
  static std::unique_ptr<Tokenizer> from_json(const std::string& tokenizer_json,
                                              const std::string& config_json = "",
                                              const std::string& origin = "tokenizer.json");
  // Builds a tokenizer from parts (the trainer).
  Tokenizer(Bpe bpe, PreTokenizer pre, std::vector<AddedToken> added);
  ~Tokenizer();

  // add_special_tokens: the post-processor's tokens (BOS for DeepSeek-V3, as transformers'
  // LlamaTokenizerFast with add_bos_token). Thread-safe.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  void encode_into(std::string_view text, std::vector<int32_t>& out,
                   bool add_special_tokens = false) const;
  // Concatenated token bytes made valid UTF-8 (lossy). Throws dsv3::Error on an unknown id.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  // The raw bytes of one token (may be part of a UTF-8 character). Throws on unknown ids.
  std::string_view token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;

  int32_t vocab_size() const { return int32_t(id_bytes_off_.size()) - 1; }  // max id + 1
  int32_t token_to_id(std::string_view content) const;  // added token or vocab entry, -1
  int32_t bos_id() const { return bos_id_; }  // -1 when unknown
  int32_t eos_id() const { return eos_id_; }
  const std::string& chat_template() const { return chat_template_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

  const Bpe& bpe() const { return bpe_; }
  const PreTokenizer& pre_tokenizer() const { return pre_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  const std::vector<int32_t>& prefix_ids() const { return prefix_ids_; }
  const std::vector<int32_t>& suffix_ids() const { return suffix_ids_; }

 private:
  Tokenizer() = default;
  void build();  // id tables and matchers from bpe_, added_
  void encode_segment(std::string_view seg, std::vector<int32_t>& out, WordCache* cache) const;

  Bpe bpe_;
  PreTokenizer pre_;
  std::vector<AddedToken> added_;
  AddedMatcher match_raw_, match_normalized_;
  std::string id_bytes_;                 // decoded bytes of every id, concatenated
  std::vector<uint32_t> id_bytes_off_;   // [vocab_size + 1]
  std::vector<uint8_t> id_kind_;         // [vocab_size] 0 unknown, 1 vocab, 2 added, 3 special
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // post-processor
  int32_t bos_id_ = -1, eos_id_ = -1;
  std::string bos_token_, eos_token_, chat_template_;

  mutable std::mutex cache_mu_;
  std::unique_ptr<WordCache> cache_;
};

// Token-by-token decoding for streamed output: never emits half a UTF-8 character. The
// concatenation of push() results and finish() equals Tokenizer::decode of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, bool skip_special_tokens = false)
      : t_(t), skip_special_(skip_special_tokens) {}
  std::string push(int32_t id);
  std::string finish();  // flushes an unfinished character as U+FFFD

 private:
  const Tokenizer& t_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace dsv3::tok
