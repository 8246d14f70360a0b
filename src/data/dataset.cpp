// DataSet: meta.json, the mmapped tokens.bin / docs.bin, and their validation (dataset.h).
#include "data/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/file_util.h"
#include "io/json_strict.h"

namespace dsv3::data {

namespace fs = std::filesystem;
using nlohmann::json;

std::string DataMeta::to_json() const {
  json j = json::object();
  j["format"] = kFormatName;
  j["version"] = kFormatVersion;
  j["vocab_size"] = vocab_size;
  j["n_docs"] = n_docs;
  j["n_tokens"] = n_tokens;
  j["n_docs_code"] = n_docs_code;
  j["n_tokens_code"] = n_tokens_code;
  j["eos_id"] = eos_id;
  j["bos_id"] = bos_id;
  j["fim_begin_id"] = fim_begin_id;
  j["fim_hole_id"] = fim_hole_id;
  j["fim_end_id"] = fim_end_id;
  j["tokenizer_hash"] = tokenizer_hash;
  j["sources"] = sources;
  return j.dump(1) + "\n";
}

namespace {

int64_t get_int(const json& j, const char* key, int64_t lo, int64_t hi, const std::string& where) {
  DSV3_CHECK(j.contains(key), where, ": missing key '", key, "'");
  const json& v = j[key];
  DSV3_CHECK(v.is_number_integer(), where, ": '", key, "' must be an integer");
  const int64_t x = v.get<int64_t>();
  DSV3_CHECK(x >= lo && x <= hi, where, ": '", key, "' = ", x, " is outside [", lo, ", ", hi, "]");
  return x;
}

}  // namespace

DataMeta DataMeta::from_json(const std::string& text, const std::string& where) {
  const json j = parse_json_strict(text, where, "meta.json");
  DSV3_CHECK(j.is_object(), where, ": expected a JSON object");
  DSV3_CHECK(j.contains("format") && j["format"] == kFormatName, where,
             ": 'format' is not \"", kFormatName, "\" (not a dsv3 data set)");
  const int64_t version = get_int(j, "version", 0, INT32_MAX, where);
  DSV3_CHECK(version == kFormatVersion, where, ": format version ", version,
             " is not supported (this build reads version ", kFormatVersion, ")");
  DataMeta m;
  m.vocab_size = int32_t(get_int(j, "vocab_size", 1, INT32_MAX, where));
  constexpr int64_t kBig = int64_t(1) << 50;
  m.n_docs = get_int(j, "n_docs", 1, kBig, where);
  m.n_tokens = get_int(j, "n_tokens", 1, kBig, where);
  m.n_docs_code = get_int(j, "n_docs_code", 0, m.n_docs, where);
  m.n_tokens_code = get_int(j, "n_tokens_code", 0, m.n_tokens, where);
  m.sources = get_int(j, "sources", 0, kBig, where);
  const int64_t v = m.vocab_size;
  m.eos_id = int32_t(get_int(j, "eos_id", 0, v - 1, where));
  m.bos_id = int32_t(get_int(j, "bos_id", -1, v - 1, where));
  m.fim_begin_id = int32_t(get_int(j, "fim_begin_id", -1, v - 1, where));
  m.fim_hole_id = int32_t(get_int(j, "fim_hole_id", -1, v - 1, where));
  m.fim_end_id = int32_t(get_int(j, "fim_end_id", -1, v - 1, where));
  DSV3_CHECK(j.contains("tokenizer_hash") && j["tokenizer_hash"].is_string(), where,
             ": 'tokenizer_hash' must be a string");
  m.tokenizer_hash = j["tokenizer_hash"].get<std::string>();
  return m;
}

std::string fnv1a64_hex(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : bytes) {
    h ^= uint8_t(c);
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::vector<std::string> tokenizer_files(const std::string& tok) {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  if (tok.empty()) return out;
  const fs::path p(tok);
  const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  const fs::path json_file = fs::is_directory(p) ? p / "tokenizer.json" : p;
  DSV3_CHECK(fs::exists(json_file), "tokenizer '", tok, "': no tokenizer.json there");
  out.push_back(json_file.string());
  if (fs::exists(dir / "tokenizer_config.json")) out.push_back((dir / "tokenizer_config.json").string());
  return out;
}

std::string tokenizer_hash(const std::string& path) {
  std::error_code ec;
  const std::string file = fs::is_directory(path, ec) ? (fs::path(path) / "tokenizer.json").string() : path;
  return fnv1a64_hex(read_text_file(file));
}

DataSet::DataSet(DataSet&& o) noexcept { *this = std::move(o); }

DataSet& DataSet::operator=(DataSet&& o) noexcept {
  if (this != &o) {
    release();
    dir_ = std::move(o.dir_);
    meta_ = std::move(o.meta_);
    tokens_ = o.tokens_;
    docs_ = o.docs_;
    tokens_bytes_ = o.tokens_bytes_;
    docs_bytes_ = o.docs_bytes_;
    o.tokens_ = nullptr;
    o.docs_ = nullptr;
    o.tokens_bytes_ = o.docs_bytes_ = 0;
  }
  return *this;
}

DataSet::~DataSet() { release(); }

void DataSet::release() {
  if (tokens_) ::munmap(const_cast<uint32_t*>(tokens_), tokens_bytes_);
  if (docs_) ::munmap(const_cast<uint8_t*>(docs_), docs_bytes_);
  tokens_ = nullptr;
  docs_ = nullptr;
}

DocEntry DataSet::doc(int64_t i) const {
  DSV3_DASSERT(i >= 0 && i < meta_.n_docs);
  const uint8_t* r = docs_ + size_t(i) * kDocRecordBytes;
  DocEntry e;
  std::memcpy(&e.begin, r, 8);
  std::memcpy(&e.length, r + 8, 4);
  e.kind = DocKind(r[12]);
  return e;
}

DataSet DataSet::open(const std::string& dir, const std::string& expect_tokenizer_hash) {
  static_assert(std::endian::native == std::endian::little,
                "tokens.bin / docs.bin are little-endian and mapped as is");
  std::error_code ec;
  DSV3_CHECK(fs::is_directory(dir, ec), dir, ": not a directory (expected a data set from "
             "`dsv3 data prepare`)");
  DataSet ds;
  ds.dir_ = dir;
  const std::string meta_path = (fs::path(dir) / "meta.json").string();
  ds.meta_ = DataMeta::from_json(read_text_file(meta_path), meta_path);
  const DataMeta& m = ds.meta_;
  if (!expect_tokenizer_hash.empty())
    DSV3_CHECK(m.tokenizer_hash == expect_tokenizer_hash, dir, ": prepared with another "
               "tokenizer (hash ", m.tokenizer_hash, ", this tokenizer's is ",
               expect_tokenizer_hash, "); run `dsv3 data prepare` again with this tokenizer");

  const std::string tok_path = (fs::path(dir) / "tokens.bin").string();
  const std::string doc_path = (fs::path(dir) / "docs.bin").string();
  ds.tokens_ = reinterpret_cast<const uint32_t*>(map_file_readonly(tok_path, &ds.tokens_bytes_));
  ds.docs_ = map_file_readonly(doc_path, &ds.docs_bytes_);
  DSV3_CHECK(ds.tokens_bytes_ == uint64_t(m.n_tokens) * 4, tok_path, ": ", ds.tokens_bytes_,
             " bytes, meta.json says ", m.n_tokens, " tokens = ", m.n_tokens * 4,
             " bytes (truncated or corrupt; prepare again)");
  DSV3_CHECK(ds.docs_bytes_ == uint64_t(m.n_docs) * kDocRecordBytes, doc_path, ": ",
             ds.docs_bytes_, " bytes, meta.json says ", m.n_docs, " documents = ",
             m.n_docs * int64_t(kDocRecordBytes), " bytes (truncated or corrupt; prepare again)");
  uint64_t next = 0;
  int64_t n_code = 0, tok_code = 0;
  for (int64_t i = 0; i < m.n_docs; ++i) {
    const DocEntry e = ds.doc(i);
    const uint8_t* r = ds.docs_ + size_t(i) * kDocRecordBytes;
    DSV3_CHECK(e.begin == next && r[13] == 0 && r[14] == 0 && r[15] == 0, doc_path,
               ": record ", i, " is corrupt (begin ", e.begin, ", expected ", next, ")");
    DSV3_CHECK(uint8_t(e.kind) <= 1, doc_path, ": record ", i, " has kind ", int(e.kind),
               " (expected 0 text or 1 code)");
    DSV3_CHECK(e.length <= uint64_t(m.n_tokens) - next, doc_path, ": record ", i,
               " runs past the end of tokens.bin");
    next += e.length;
    if (e.kind == DocKind::kCode) ++n_code, tok_code += e.length;
  }
  DSV3_CHECK(next == uint64_t(m.n_tokens), doc_path, ": documents cover ", next,
             " tokens, meta.json says ", m.n_tokens);
  DSV3_CHECK(n_code == m.n_docs_code && tok_code == m.n_tokens_code, meta_path,
             ": code counts disagree with docs.bin (", n_code, " docs, ", tok_code, " tokens)");
  uint32_t bad = 0;
  int64_t bad_at = -1;
  for (int64_t i = 0; i < m.n_tokens; ++i)
    if (ds.tokens_[i] >= uint32_t(m.vocab_size)) {
      bad = ds.tokens_[i];
      bad_at = i;
      break;
    }
  DSV3_CHECK(bad_at < 0, tok_path, ": token ", bad_at, " is id ", bad, ", not below vocab_size ",
             m.vocab_size, " (corrupt)");
  return ds;
}

}  // namespace dsv3::data
