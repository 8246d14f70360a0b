// `dsv3 data prepare` (prepare.h): gather documents, tokenize them in parallel, write the
// data set to a temp directory and rename it into place.
#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "io/file_util.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace dsv3::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

enum class FileType { kSkip, kJsonl, kText, kCode };

std::string lower_ext(const fs::path& p) {
  std::string e = p.extension().string();
  for (char& c : e) c = char(std::tolower(uint8_t(c)));
  return e;
}

FileType file_type(const fs::path& p, bool named) {
  const std::string e = lower_ext(p);
  if (e == ".jsonl") return FileType::kJsonl;
  if (e == ".txt" || e == ".md") return FileType::kText;
  if (is_code_path(p.string())) return FileType::kCode;
  return named ? FileType::kText : FileType::kSkip;
}

struct Doc {
  std::string text;
  DocKind kind;
  bool chat = false;  // a rendered conversation: its closing EOS is the packer's (see add)
};

// tokens.bin and docs.bin of one directory, appended document by document, and the counts
// of what they hold in `meta`.
class DocFiles {
 public:
  explicit DocFiles(const fs::path& dir) {
    tokens_ = std::fopen((dir / "tokens.bin").c_str(), "wb");
    docs_ = std::fopen((dir / "docs.bin").c_str(), "wb");
    DSV3_CHECK(tokens_ && docs_, dir.string(), ": cannot create output files");
  }
  ~DocFiles() {
    if (tokens_) std::fclose(tokens_);
    if (docs_) std::fclose(docs_);
  }

  void append(const uint32_t* ids, uint32_t len, DocKind kind, DataMeta& meta) {
    DSV3_CHECK(std::fwrite(ids, 4, len, tokens_) == len, "writing tokens.bin failed");
    uint8_t rec[kDocRecordBytes] = {};
    const uint64_t begin = uint64_t(meta.n_tokens);
    std::memcpy(rec, &begin, 8);
    std::memcpy(rec + 8, &len, 4);
    rec[12] = uint8_t(kind);
    DSV3_CHECK(std::fwrite(rec, 1, sizeof rec, docs_) == sizeof rec, "writing docs.bin failed");
    meta.n_tokens += len;
    ++meta.n_docs;
    if (kind == DocKind::kCode) meta.n_tokens_code += len, ++meta.n_docs_code;
  }

  void close() {
    for (FILE** f : {&tokens_, &docs_}) {
      const bool ok = std::fflush(*f) == 0 && ::fsync(fileno(*f)) == 0;
      std::fclose(*f);
      *f = nullptr;
      DSV3_CHECK(ok, "flushing the data set files failed");
    }
  }

 private:
  FILE* tokens_ = nullptr;
  FILE* docs_ = nullptr;
};

// Tokenizes documents and appends them to the output files.
class Writer {
 public:
  Writer(const fs::path& dir, const tok::Tokenizer& t, int32_t eos, int32_t bos, int threads)
      : t_(t), eos_(eos), bos_(bos), threads_(threads), files_(dir) {}

  // Tokenizes docs in parallel (one document per task; the order of the output is the
  // input order whatever the threads do) and appends them.
  void add(std::vector<Doc>& docs, PrepareStats& st) {
    std::vector<std::vector<int32_t>> ids(docs.size());
    const int64_t n = int64_t(docs.size());
    parallel_for_dynamic(n, threads_, [&](int64_t i) { ids[size_t(i)] = t_.encode(docs[size_t(i)].text, false); });
    std::vector<uint32_t> buf;
    for (size_t i = 0; i < docs.size(); ++i) {
      // The template ends a conversation with EOS and the loader puts one after every
      // document: keep one. It also starts it with BOS, which no other document has: kept,
      // the model would learn that BOS begins a chat, and every plain prompt (the tokenizer
      // adds BOS to them too) would be continued as one. Dropped, conversations and
      // documents both follow the previous document's EOS.
      if (docs[i].chat && !ids[i].empty() && ids[i].back() == eos_) ids[i].pop_back();
      if (docs[i].chat && !ids[i].empty() && ids[i].front() == bos_) ids[i].erase(ids[i].begin());
      const bool code = docs[i].kind == DocKind::kCode;
      (code ? st.bytes_code : st.bytes_text) += int64_t(docs[i].text.size());
      if (ids[i].empty()) {
        ++st.dropped_empty;
        continue;
      }
      DSV3_CHECK(ids[i].size() <= UINT32_MAX, "a document of ", ids[i].size(),
                 " tokens is too long (the format holds up to 2^32-1 per document)");
      buf.assign(ids[i].begin(), ids[i].end());
      files_.append(buf.data(), uint32_t(buf.size()), docs[i].kind, st.meta);
    }
    docs.clear();
  }

  void close() { files_.close(); }
  const std::string& bos_token() const { return t_.bos_token(); }
  // The chat template writes DeepSeek-V3's role and EOS markers as text: the tokenizer must
  // hold each as one special token (the EOS being the data set's), or the conversations
  // would train on their bytes. Checked at the first conversation.
  void check_chat_tokens(const std::string& where) {
    if (chat_checked_) return;
    const std::string bos = bos_token().empty() ? kBosToken : bos_token();
    for (const std::string& s : {bos, std::string(kEosToken), std::string("<｜User｜>"),
                                 std::string("<｜Assistant｜>")})
      DSV3_CHECK(t_.token_to_id(s) >= 0, where, ": a conversation needs the tokenizer's special "
                 "token ", s, ", which this tokenizer lacks (DeepSeek-V3's chat format)");
    DSV3_CHECK(t_.token_to_id(kEosToken) == eos_, where, ": the chat template closes turns with ",
               kEosToken, " but the tokenizer's EOS is id ", eos_);
    chat_checked_ = true;
  }

 private:
  const tok::Tokenizer& t_;
  int32_t eos_, bos_;
  int threads_;
  bool chat_checked_ = false;
  DocFiles files_;
};

// Splits the data set in dir/all/ into dir/ (kept documents) and dir/val/ (held out):
// k = round(fraction * n) documents, clamped to [1, n - 1], those with the k smallest
// mix_key(seed, index) — a choice that depends on the seed and the document count only.
// The documents were written once to all/ because k needs n, which only the end of the
// tokenization knows (empty documents are dropped); the copy costs one more write.
void split_held_out(const fs::path& dir, double fraction, uint64_t seed, PrepareStats& st) {
  const DataSet all = DataSet::open((dir / "all").string());
  const int64_t n = all.n_docs();
  DSV3_CHECK(n >= 2, "--val-fraction: the corpus has ", n, " document; holding out whole "
             "documents needs at least 2 (or --val-fraction 0)");
  const int64_t k = std::clamp<int64_t>(std::llround(fraction * double(n)), 1, n - 1);
  std::vector<std::pair<uint64_t, int64_t>> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = {mix_key(seed, uint64_t(i), 0x76616c), i};
  std::nth_element(order.begin(), order.begin() + k, order.end());
  std::vector<bool> held(static_cast<size_t>(n), false);
  for (int64_t j = 0; j < k; ++j) held[size_t(order[size_t(j)].second)] = true;

  DataMeta train = all.meta(), val = all.meta();
  for (DataMeta* m : {&train, &val}) m->n_docs = m->n_tokens = m->n_docs_code = m->n_tokens_code = 0;
  std::error_code ec;
  DSV3_CHECK(fs::create_directories(dir / "val", ec), "--out: cannot create '",
             (dir / "val").string(), "' (", ec.message(), ")");
  DocFiles train_files(dir), val_files(dir / "val");
  for (int64_t i = 0; i < n; ++i) {
    const DocEntry e = all.doc(i);
    if (held[size_t(i)])
      val_files.append(all.doc_tokens(i), e.length, e.kind, val);
    else
      train_files.append(all.doc_tokens(i), e.length, e.kind, train);
  }
  train_files.close();
  val_files.close();
  write_file_atomic((dir / "meta.json").string(), train.to_json());
  write_file_atomic((dir / "val" / "meta.json").string(), val.to_json());
  st.meta = train;
  st.val = val;
}

constexpr size_t kChunkBytes = size_t(32) << 20;  // tokenize this much text per batch

void read_jsonl(const fs::path& p, Writer& w, std::vector<Doc>& docs, size_t& pending,
                PrepareStats& st) {
  std::ifstream in(p, std::ios::binary);
  DSV3_CHECK(in.good(), p.string(), ": cannot open");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = p.string() + ":" + std::to_string(n);
    json j;
    try {
      j = json::parse(tok::utf8_lossy(line));
    } catch (const json::exception& e) {
      DSV3_FAIL(where, ": not valid JSON (", e.what(), ")");
    }
    DSV3_CHECK(j.is_object() && (j.contains("text") != j.contains("messages")), where,
               ": expected an object with a string \"text\" or a chat's \"messages\" (one "
               "of the two)");
    if (j.contains("messages")) {
      // A conversation in the OpenAI form, rendered with DeepSeek-V3's chat template, as
      // the server renders a request (so a model trained on it answers through the API).
      std::vector<tok::ChatMessage> m;
      try {
        m = tok::parse_chat_messages(j["messages"]);
      } catch (const Error& e) {
        DSV3_FAIL(where, ": ", e.what());
      }
      DSV3_CHECK(!m.empty(), where, ": \"messages\" is empty");
      bool answered = false;
      for (size_t i = 0; i < m.size(); ++i) {
        const std::string& r = m[i].role;
        DSV3_CHECK(r == "system" || r == "user" || r == "assistant" || r == "tool", where,
                   ": messages[", i, "].role is '", r,
                   "'; the chat template knows system, user, assistant and tool");
        answered |= r == "assistant";
      }
      DSV3_CHECK(answered, where, ": a conversation to train on needs an assistant turn");
      DSV3_CHECK(!j.contains("kind") || j["kind"] == "text", where,
                 ": a chat document's \"kind\" can only be \"text\"");
      w.check_chat_tokens(where);
      const std::string bos = w.bos_token().empty() ? kBosToken : w.bos_token();
      docs.push_back({tok::render_chat_deepseek_v3(m, false, bos), DocKind::kText, true});
      pending += docs.back().text.size();
      if (pending >= kChunkBytes) w.add(docs, st), pending = 0;
      continue;
    }
    DSV3_CHECK(j["text"].is_string(), where, ": \"text\" must be a string");
    DocKind kind = DocKind::kText;
    if (j.contains("kind")) {
      DSV3_CHECK(j["kind"].is_string(), where, ": \"kind\" must be \"text\" or \"code\"");
      const std::string k = j["kind"].get<std::string>();
      DSV3_CHECK(k == "text" || k == "code", where, ": \"kind\" is \"", k,
                 "\", expected \"text\" or \"code\"");
      kind = k == "code" ? DocKind::kCode : DocKind::kText;
    }
    docs.push_back({j["text"].get<std::string>(), kind});
    pending += docs.back().text.size();
    if (pending >= kChunkBytes) w.add(docs, st), pending = 0;
  }
  DSV3_CHECK(!in.bad(), p.string(), ": read error");
}

std::vector<std::pair<fs::path, FileType>> collect(const std::vector<std::string>& inputs) {
  std::vector<std::pair<fs::path, FileType>> files;
  for (const std::string& in : inputs) {
    std::error_code ec;
    const fs::file_status s = fs::status(in, ec);
    DSV3_CHECK(fs::exists(s), "--input: '", in, "' does not exist");
    if (!fs::is_directory(s)) {
      files.push_back({in, file_type(in, true)});
      continue;
    }
    std::vector<fs::path> found;
    for (auto it = fs::recursive_directory_iterator(in); it != fs::recursive_directory_iterator(); ++it) {
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file() && file_type(it->path(), false) != FileType::kSkip)
        found.push_back(it->path());
    }
    std::sort(found.begin(), found.end());
    for (const fs::path& p : found) files.push_back({p, file_type(p, false)});
  }
  return files;
}

int32_t special_id(const tok::Tokenizer& t, const char* content) {
  const int32_t id = t.token_to_id(content);
  return id >= 0 && t.is_special(id) ? id : -1;
}

}  // namespace

bool is_code_path(const std::string& path) {
  static const char* const kExt[] = {
      ".h", ".hh", ".hpp", ".hxx", ".h++", ".c", ".cc", ".cpp", ".cxx", ".c++", ".inc", ".tcc",
      ".ipp", ".cu", ".cuh", ".py", ".rs", ".go", ".java", ".js", ".ts", ".sh", ".rb", ".lua",
      ".swift", ".kt", ".scala", ".cs", ".m", ".mm", ".pl", ".php", ".s", ".asm", ".zig",
      ".hs", ".ml", ".cmake", ".f90", ".jl", ".r", ".sql"};
  const fs::path p(path);
  const std::string e = lower_ext(p);
  if (e.empty()) {
    for (const auto& part : p.parent_path())
      if (part == "include") return true;
    return false;
  }
  return std::find(std::begin(kExt), std::end(kExt), e) != std::end(kExt);
}

PrepareStats prepare_data(const PrepareOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  DSV3_CHECK(!opt.inputs.empty(), "--input: no inputs given");
  DSV3_CHECK(!opt.out.empty(), "--out: no output directory given");
  DSV3_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "--val-fraction: ", opt.val_fraction,
             " is outside [0, 1) (the fraction of documents held out; 0 = no split)");
  const bool split = opt.val_fraction > 0;
  const auto files = collect(opt.inputs);
  const auto tokenizer = tok::Tokenizer::from_path(opt.tokenizer);
  const tok::Tokenizer& t = *tokenizer;

  PrepareStats st;
  DataMeta& m = st.meta;
  m.vocab_size = t.vocab_size();
  m.sources = int64_t(files.size());
  m.tokenizer_hash = tokenizer_hash(opt.tokenizer);
  m.bos_id = t.bos_id() >= 0 ? t.bos_id() : special_id(t, kBosToken);
  m.eos_id = t.eos_id() >= 0 ? t.eos_id() : special_id(t, kEosToken);
  DSV3_CHECK(m.eos_id >= 0, opt.tokenizer, ": the tokenizer has no EOS token (neither "
             "tokenizer_config.json's eos_token nor ", kEosToken, "); documents need a separator");
  m.fim_begin_id = special_id(t, kFimBeginToken);
  m.fim_hole_id = special_id(t, kFimHoleToken);
  m.fim_end_id = special_id(t, kFimEndToken);

  // Build in DATA.tmp-PID next to DATA (same file system, so the rename is atomic).
  const fs::path out = fs::path(opt.out).lexically_normal();
  const fs::path tmp = out.string() + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  if (fs::exists(out, ec))
    DSV3_CHECK(fs::is_directory(out) && (fs::is_empty(out) || fs::exists(out / "meta.json")),
               "--out: '", opt.out, "' exists and is not a dsv3 data set; not replacing it");
  fs::remove_all(tmp, ec);
  DSV3_CHECK(fs::create_directories(tmp, ec), "--out: cannot create '", tmp.string(), "' (",
             ec.message(), ")");
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code e;
      if (!p.empty()) fs::remove_all(p, e);
    }
  } cleanup{tmp};

  // With a split every document goes to tmp/all/ first (split_held_out).
  const fs::path first = split ? tmp / "all" : tmp;
  if (split) DSV3_CHECK(fs::create_directories(first, ec), "--out: cannot create '",
                        first.string(), "' (", ec.message(), ")");
  {
    Writer w(first, t, m.eos_id, m.bos_id, resolve_threads(opt.threads));
    std::vector<Doc> docs;
    size_t pending = 0;
    for (size_t f = 0; f < files.size(); ++f) {
      const auto& [path, type] = files[f];
      const int64_t docs_before = m.n_docs, tokens_before = m.n_tokens;
      if (type == FileType::kJsonl) {
        read_jsonl(path, w, docs, pending, st);
      } else {
        docs.push_back({read_text_file(path.string()),
                        type == FileType::kCode ? DocKind::kCode : DocKind::kText});
        pending += docs.back().text.size();
        if (pending >= kChunkBytes) w.add(docs, st), pending = 0;
      }
      if (opt.progress && type == FileType::kJsonl) {
        w.add(docs, st), pending = 0;  // so that the line's counts are this file's
        std::fprintf(stderr, "data: [%zu/%zu] %s: %lld docs, %lld tokens\n", f + 1, files.size(),
                     path.c_str(), static_cast<long long>(m.n_docs - docs_before),
                     static_cast<long long>(m.n_tokens - tokens_before));
      }
    }
    w.add(docs, st);
    w.close();
  }
  DSV3_CHECK(m.n_docs > 0 && m.n_tokens > 0, "no documents in the inputs (",
             files.size(), " files read, ", st.dropped_empty, " empty documents): nothing to train on");
  write_file_atomic((first / "meta.json").string(), m.to_json());
  if (split) {
    split_held_out(tmp, opt.val_fraction, opt.seed, st);
    fs::remove_all(first);
  }
  // The tokenizer travels with the data: `dsv3 train` takes it when the config names none.
  DSV3_CHECK(fs::create_directories(tmp / kDataTokenizerDir, ec), "--out: cannot create '",
             (tmp / kDataTokenizerDir).string(), "' (", ec.message(), ")");
  for (const std::string& f : tokenizer_files(opt.tokenizer))
    fs::copy_file(f, tmp / kDataTokenizerDir / fs::path(f).filename(), fs::copy_options::overwrite_existing);

  if (fs::exists(out, ec)) {
    const fs::path old = out.string() + ".old-" + std::to_string(::getpid());
    fs::rename(out, old);
    fs::rename(tmp, out);
    fs::remove_all(old, ec);
  } else {
    if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
    fs::rename(tmp, out);
  }
  cleanup.p.clear();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace dsv3::data
