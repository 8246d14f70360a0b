#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <cstring>
#include <sstream>

#include "core/check.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {

using nlohmann::json;

// word bytes -> ids, in flat arrays (open addressing) so that a hit allocates nothing.
// Sized so a few MB of mixed-language text fit before the cache is cleared.
// Cleared wholesale when full: text reuses a small set of words, so a cold restart is cheap.
class WordCache {
 public:
  WordCache() { slots_.resize(kSlots); }
  // Returns the cached ids of word or nullptr; n receives their count.
  const int32_t* find(std::string_view word, size_t h, uint32_t& n) const {
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots_[i];
      if (s.key_len == kEmpty) return nullptr;
      if (s.hash == h && s.key_len == word.size() &&
          std::memcmp(keys_.data() + s.key_off, word.data(), word.size()) == 0) {
        n = s.ids_len;
        return ids_.data() + s.ids_off;
      }
    }
  }
  void insert(std::string_view word, size_t h, const int32_t* ids, uint32_t n) {
    if (word.size() > kMaxWord) return;
    if (count_ * 2 >= kSlots) clear();
    size_t i = h & (kSlots - 1);
    while (slots_[i].key_len != kEmpty) i = (i + 1) & (kSlots - 1);
    slots_[i] = {h, uint32_t(keys_.size()), uint32_t(word.size()), uint32_t(ids_.size()), n};
    keys_.append(word);
    ids_.insert(ids_.end(), ids, ids + n);
    ++count_;
  }

 private:
  static constexpr size_t kSlots = size_t(1) << 18;  // 6 MB; ~130K distinct words
  static constexpr size_t kMaxWord = 256;  // longer words are rare; not worth caching
  static constexpr uint32_t kEmpty = ~0u;
  struct Slot {
    size_t hash = 0;
    uint32_t key_off = 0, key_len = kEmpty, ids_off = 0, ids_len = 0;
  };
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    count_ = 0;
  }
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t count_ = 0;
};

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DSV3_CHECK(f.good(), "cannot open '", path, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A token in tokenizer_config.json: a string or {"content": ...} (AddedToken).
std::string config_token(const json& c, const char* key) {
  if (!c.contains(key) || c[key].is_null()) return "";
  if (c[key].is_string()) return c[key].get<std::string>();
  DSV3_CHECK(c[key].is_object() && c[key].contains("content") && c[key]["content"].is_string(),
             "tokenizer_config.json: ", key, ": expected a string or {\"content\": ...}");
  return c[key]["content"].get<std::string>();
}

void check_normalizer(const json& n) {
  if (n.is_null()) return;
  DSV3_CHECK(n.is_object() && n.contains("type"), "normalizer: expected null or an object");
  const bool empty_seq = n["type"] == "Sequence" && n.contains("normalizers") &&
                         n["normalizers"].is_array() && n["normalizers"].empty();
  DSV3_CHECK(empty_seq, "normalizer: unsupported normalizer ", n["type"].dump(),
             " (only null or an empty Sequence are supported)");
}

bool decoder_is_byte_level(const json& d) {
  if (!d.is_object() || !d.contains("type")) return false;
  if (d["type"] == "ByteLevel") return true;
  if (d["type"] == "Sequence" && d.contains("decoders") && d["decoders"].is_array()) {
    return std::all_of(d["decoders"].begin(), d["decoders"].end(), decoder_is_byte_level) &&
           !d["decoders"].empty();
  }
  return false;
}

// HF TemplateProcessing "single": [{SpecialToken: {id}}, {Sequence: {id: "A"}}, ...].
void parse_post_processor(const json& p, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (p.is_null()) return;
  DSV3_CHECK(p.is_object() && p.contains("type") && p["type"].is_string(),
             "post_processor.type: missing");
  const std::string type = p["type"].get<std::string>();
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "Sequence") {
    DSV3_CHECK(p.contains("processors") && p["processors"].is_array(),
               "post_processor.processors: expected an array");
    for (const json& q : p["processors"]) parse_post_processor(q, prefix, suffix);
    return;
  }
  DSV3_CHECK(type == "TemplateProcessing", "post_processor.type: unsupported '", type,
             "' (supported: ByteLevel, TemplateProcessing, Sequence)");
  DSV3_CHECK(p.contains("single") && p["single"].is_array(),
             "post_processor.single: expected an array");
  DSV3_CHECK(p.contains("special_tokens") && p["special_tokens"].is_object(),
             "post_processor.special_tokens: expected an object");
  bool seen_seq = false;
  for (const json& piece : p["single"]) {
    if (piece.contains("Sequence")) { seen_seq = true; continue; }
    DSV3_CHECK(piece.contains("SpecialToken") && piece["SpecialToken"].contains("id"),
               "post_processor.single: expected SpecialToken or Sequence entries");
    const std::string name = piece["SpecialToken"]["id"].get<std::string>();
    const json& st = p["special_tokens"];
    DSV3_CHECK(st.contains(name) && st[name].contains("ids") && st[name]["ids"].is_array(),
               "post_processor.special_tokens[\"", name, "\"].ids: missing");
    for (const json& id : st[name]["ids"]) (seen_seq ? suffix : prefix).push_back(id.get<int32_t>());
  }
}

}  // namespace

Tokenizer::Tokenizer(Bpe bpe, PreTokenizer pre, std::vector<AddedToken> added)
    : bpe_(std::move(bpe)), pre_(std::move(pre)), added_(std::move(added)) {
  build();
}

Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_path(const std::string& path) {
  namespace fs = std::filesystem;
  std::string tok_path = path, cfg_path;
  if (fs::is_directory(path)) {
    tok_path = (fs::path(path) / "tokenizer.json").string();
    DSV3_CHECK(fs::exists(tok_path), "no tokenizer.json in directory '", path, "'");
  }
  const fs::path cfg = fs::path(tok_path).parent_path() / "tokenizer_config.json";
  const std::string config = fs::exists(cfg) ? read_file(cfg.string()) : "";
  return from_json(read_file(tok_path), config, tok_path);
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(const std::string& tokenizer_json,
                                                const std::string& config_json,
                                                const std::string& origin) {
  json j;
  try {
    j = json::parse(tokenizer_json);
  } catch (const json::exception& e) {
    DSV3_FAIL(origin, ": not valid JSON: ", e.what());
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  try {
    DSV3_CHECK(j.is_object(), "top level: expected a JSON object");
    DSV3_CHECK(j.contains("model"), "model: missing");
    check_normalizer(j.value("normalizer", json()));
    t->pre_ = PreTokenizer::from_json(j.value("pre_tokenizer", json()));
    DSV3_CHECK(t->pre_.has_byte_level(),
               "pre_tokenizer: no ByteLevel step (only byte-level BPE is supported)");
    DSV3_CHECK(decoder_is_byte_level(j.value("decoder", json())),
               "decoder: expected type ByteLevel (only byte-level BPE is supported)");
    t->bpe_ = Bpe::from_json(j["model"]);
    t->added_ = parse_added_tokens(j.value("added_tokens", json()));
    // build() sizes its per-id tables by the largest id: bound it as for model.vocab.
    const int64_t max_ok = 2 * (int64_t(t->bpe_.size()) + int64_t(t->added_.size())) + 1024;
    for (size_t k = 0; k < t->added_.size(); ++k)
      DSV3_CHECK(t->added_[k].id < max_ok, "added_tokens[", k, "].id: ", t->added_[k].id,
                 " is far beyond the ", t->bpe_.size(), "-token vocabulary");
    parse_post_processor(j.value("post_processor", json()), t->prefix_ids_, t->suffix_ids_);
  } catch (const Error& e) {
    throw Error(str_cat(origin, ": ", e.what()));
  }
  t->build();
  if (!config_json.empty()) {
    json c;
    try {
      c = json::parse(config_json);
    } catch (const json::exception& e) {
      DSV3_FAIL("tokenizer_config.json: not valid JSON: ", e.what());
    }
    DSV3_CHECK(c.is_object(), "tokenizer_config.json: expected a JSON object");
    t->bos_token_ = config_token(c, "bos_token");
    t->eos_token_ = config_token(c, "eos_token");
    t->bos_id_ = t->bos_token_.empty() ? -1 : t->token_to_id(t->bos_token_);
    t->eos_id_ = t->eos_token_.empty() ? -1 : t->token_to_id(t->eos_token_);
    if (c.contains("chat_template") && c["chat_template"].is_string())
      t->chat_template_ = c["chat_template"].get<std::string>();
    // transformers' LlamaTokenizerFast replaces the post-processor by BOS + text + EOS as
    // add_bos_token / add_eos_token say; DeepSeek-V3 ships add_bos_token = true.
    if (c.contains("add_bos_token") || c.contains("add_eos_token")) {
      t->prefix_ids_.clear();
      t->suffix_ids_.clear();
      if (c.value("add_bos_token", false)) {
        DSV3_CHECK(t->bos_id_ >= 0, "tokenizer_config.json: add_bos_token is true but bos_token '",
                   t->bos_token_, "' is not a token");
        t->prefix_ids_.push_back(t->bos_id_);
      }
      if (c.value("add_eos_token", false)) {
        DSV3_CHECK(t->eos_id_ >= 0, "tokenizer_config.json: add_eos_token is true but eos_token '",
                   t->eos_token_, "' is not a token");
        t->suffix_ids_.push_back(t->eos_id_);
      }
    }
  }
  return t;
}

void Tokenizer::build() {
  // Per-id decoded bytes: vocab tokens already hold raw bytes; added tokens go through the
  // ByteLevel decoder like any token (alphabet undone when every character is in it,
  // else their UTF-8 content), as HF's decode does.
  int32_t n = bpe_.size();
  for (const AddedToken& a : added_) n = std::max(n, a.id + 1);
  std::vector<std::string_view> bytes(static_cast<size_t>(n));
  id_kind_.assign(size_t(n), 0);
  for (int32_t id = 0; id < bpe_.size(); ++id) {
    if (!bpe_.has_id(id)) continue;
    bytes[size_t(id)] = bpe_.token_bytes(id);
    id_kind_[size_t(id)] = 1;
  }
  std::vector<std::string> added_bytes(added_.size());
  std::vector<const AddedToken*> raw, normalized;
  for (size_t k = 0; k < added_.size(); ++k) {
    const AddedToken& a = added_[k];
    if (!bytelevel_to_bytes(a.content, added_bytes[k])) added_bytes[k] = a.content;
    bytes[size_t(a.id)] = added_bytes[k];
    id_kind_[size_t(a.id)] = a.special ? 3 : 2;
    // HF matches non-normalized tokens on the raw text first, then normalized ones on the
    // (here identity-) normalized gaps.
    (a.normalized ? normalized : raw).push_back(&a);
  }
  id_bytes_.clear();
  id_bytes_off_.assign(1, 0);
  for (const std::string_view b : bytes) {
    id_bytes_ += b;
    id_bytes_off_.push_back(uint32_t(id_bytes_.size()));
  }
  match_raw_.build(raw);
  match_normalized_.build(normalized);
  cache_ = std::make_unique<WordCache>();
}

int32_t Tokenizer::token_to_id(std::string_view content) const {
  for (const AddedToken& a : added_)
    if (a.content == content) return a.id;
  std::string raw;
  return bpe_.id_of_bytes(bytelevel_to_bytes(content, raw) ? std::string_view(raw) : content);
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && id_kind_[size_t(id)] == 3;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  DSV3_CHECK(id >= 0 && id < vocab_size() && id_kind_[size_t(id)] != 0, "token id ", id,
             " is not in the vocabulary (valid ids: 0..", vocab_size() - 1, ")");
  return std::string_view(id_bytes_).substr(id_bytes_off_[size_t(id)],
                                            id_bytes_off_[size_t(id) + 1] - id_bytes_off_[size_t(id)]);
}

void Tokenizer::encode_segment(std::string_view seg, std::vector<int32_t>& out,
                               WordCache* cache) const {
  thread_local std::vector<Piece> pieces, scratch;
  thread_local std::vector<uint32_t> matches;
  thread_local BpeScratch bs;
  thread_local std::string word_buf;
  pre_.split(seg, pieces, scratch, matches);
  for (const Piece& p : pieces) {
    std::string_view word = seg.substr(p.begin, p.end - p.begin);
    if (p.prefix_space) {
      word_buf.assign(1, ' ');
      word_buf.append(word);
      word = word_buf;
    }
    if (!cache) {
      bpe_.encode_word(word, out, bs);
      continue;
    }
    const size_t h = std::hash<std::string_view>{}(word);
    uint32_t n = 0;
    if (const int32_t* ids = cache->find(word, h, n)) {
      out.insert(out.end(), ids, ids + n);
      continue;
    }
    const size_t start = out.size();
    bpe_.encode_word(word, out, bs);
    cache->insert(word, h, out.data() + start, uint32_t(out.size() - start));
  }
}

void Tokenizer::encode_into(std::string_view text, std::vector<int32_t>& out,
                            bool add_special_tokens) const {
  std::string fixed;
  if (!is_valid_utf8(text)) {
    fixed = utf8_lossy(text);
    text = fixed;
  }
  DSV3_CHECK(text.size() < (size_t(1) << 32), "text of ", text.size(),
             " bytes is too long to encode at once (limit 4 GiB)");
  if (add_special_tokens) out.insert(out.end(), prefix_ids_.begin(), prefix_ids_.end());
  thread_local std::vector<Segment> segs, segs2;
  segs.clear();
  match_raw_.split(text, 0, uint32_t(text.size()), segs);
  if (!match_normalized_.empty()) {
    segs2.clear();
    for (const Segment& s : segs) {
      if (s.id >= 0) segs2.push_back(s);
      else match_normalized_.split(text, s.begin, s.end, segs2);
    }
    segs.swap(segs2);
  }
  // One encode at a time uses the shared cache; a concurrent one goes without it.
  std::unique_lock<std::mutex> lock(cache_mu_, std::try_to_lock);
  WordCache* cache = lock.owns_lock() ? cache_.get() : nullptr;
  for (const Segment& s : segs) {
    if (s.id >= 0) out.push_back(s.id);
    else encode_segment(text.substr(s.begin, s.end - s.begin), out, cache);
  }
  if (add_special_tokens) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_into(text, out, add_special_tokens);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (const int32_t id : ids) {
    const std::string_view b = token_bytes(id);
    if (skip_special_tokens && id_kind_[size_t(id)] == 3) continue;
    bytes += b;
  }
  return is_valid_utf8(bytes) ? bytes : utf8_lossy(bytes);
}

std::string StreamDecoder::push(int32_t id) {
  const std::string_view b = t_.token_bytes(id);
  if (skip_special_ && t_.is_special(id)) return "";
  pending_ += b;
  // Emit all but an unfinished character at the end; what is emitted can be made valid
  // on its own, because U+FFFD substitution never looks past a complete-or-broken sequence.
  const size_t keep = size_t(utf8_incomplete_tail(pending_));
  std::string out = utf8_lossy(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace dsv3::tok
