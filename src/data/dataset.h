// A prepared training data set (what `dsv3 data prepare` writes), a directory DATA/ of:
//   tokens.bin  uint32 little-endian token ids, every document's tokens back to back (no
//               BOS, no EOS: the loader adds the EOS separators)
//   docs.bin    one 16-byte record per document, little-endian:
//                 uint64 begin (offset into tokens.bin, in tokens), uint32 length (tokens),
//                 uint8 kind (0 text, 1 code), 3 zero bytes
//               records are in input order and contiguous: begin[i+1] = begin[i] + length[i]
//   meta.json   {"format": "dsv3-data", "version": 1, "vocab_size", "n_docs", "n_tokens",
//                "n_docs_code", "n_tokens_code", "eos_id", "bos_id", "fim_begin_id",
//                "fim_hole_id", "fim_end_id" (-1 when the tokenizer lacks the token),
//                "tokenizer_hash" (FNV-1a 64 of tokenizer.json's bytes, 16 hex digits: a
//                mismatch check, not a security hash), "sources" (input count)}
// DataSet::open validates all three against each other and mmaps the two binaries.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::data {

inline constexpr const char* kFormatName = "dsv3-data";
inline constexpr int kFormatVersion = 1;
inline constexpr size_t kDocRecordBytes = 16;
// DeepSeek-V3's special tokens (tokenizer.json of deepseek-ai/DeepSeek-V3).
inline constexpr const char* kBosToken = "<｜begin▁of▁sentence｜>";
inline constexpr const char* kEosToken = "<｜end▁of▁sentence｜>";
inline constexpr const char* kFimBeginToken = "<｜fim▁begin｜>";
inline constexpr const char* kFimHoleToken = "<｜fim▁hole｜>";
inline constexpr const char* kFimEndToken = "<｜fim▁end｜>";

enum class DocKind : uint8_t { kText = 0, kCode = 1 };

struct DocEntry {
  uint64_t begin = 0;   // first token in tokens.bin
  uint32_t length = 0;  // tokens
  DocKind kind = DocKind::kText;
};

struct DataMeta {
  int32_t vocab_size = 0;
  int64_t n_docs = 0, n_tokens = 0, n_docs_code = 0, n_tokens_code = 0, sources = 0;
  int32_t eos_id = -1, bos_id = -1, fim_begin_id = -1, fim_hole_id = -1, fim_end_id = -1;
  std::string tokenizer_hash;  // 16 lowercase hex digits

  std::string to_json() const;
  // Validates types and ranges; `where` names the file in messages.
  static DataMeta from_json(const std::string& text, const std::string& where);
};

// FNV-1a 64 of bytes, as 16 lowercase hex digits.
std::string fnv1a64_hex(std::string_view bytes);
// The hash of the tokenizer at `path` (a tokenizer.json or a directory holding one).
std::string tokenizer_hash(const std::string& path);
// The files of a tokenizer given as tokenizer.json or its directory: tokenizer.json, and
// tokenizer_config.json when it sits beside it (what checkpoints and DATA/tokenizer/ copy).
// Empty for ""; dsv3::Error when there is no tokenizer.json.
std::vector<std::string> tokenizer_files(const std::string& tokenizer);
// DATA/tokenizer/: the copy of its tokenizer `dsv3 data prepare` keeps with a data set.
inline constexpr const char* kDataTokenizerDir = "tokenizer";

class DataSet {
 public:
  // Opens and validates DATA/ (sizes, contiguous in-bounds records, kinds, token ids below
  // vocab_size). expect_tokenizer_hash: when non-empty, must equal meta's tokenizer_hash.
  static DataSet open(const std::string& dir, const std::string& expect_tokenizer_hash = "");
  DataSet(DataSet&& o) noexcept;
  DataSet& operator=(DataSet&& o) noexcept;
  DataSet(const DataSet&) = delete;
  DataSet& operator=(const DataSet&) = delete;
  ~DataSet();

  const DataMeta& meta() const { return meta_; }
  const std::string& dir() const { return dir_; }
  int64_t n_docs() const { return meta_.n_docs; }
  DocEntry doc(int64_t i) const;
  // Token ids of document i (in the mapping; little-endian hosts only, checked at open).
  const uint32_t* doc_tokens(int64_t i) const { return tokens_ + doc(i).begin; }
  const uint32_t* tokens() const { return tokens_; }

 private:
  DataSet() = default;
  void release();

  std::string dir_;
  DataMeta meta_;
  const uint32_t* tokens_ = nullptr;  // [n_tokens] mapped
  const uint8_t* docs_ = nullptr;     // [n_docs, 16] mapped
  size_t tokens_bytes_ = 0, docs_bytes_ = 0;
};

}  // namespace dsv3::data
