#include "serve/kv_transfer.h"

#include <nmmintrin.h>

#include <array>
#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "data/dataset.h"
#include "model/model.h"

namespace dsv3::serve {
namespace {

constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'K', 'V', 'T', '\n'};
// A header larger than this is not one we wrote (a few hundred bytes per prompt).
constexpr uint32_t kMaxHeaderBytes = 1u << 20;

void put_u32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}
uint32_t get_u32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(uint8_t(p[i])) << (8 * i);
  return v;
}

// Little-endian hosts only (x86-64, as the kernels): int32 and f32 arrays are copied as bytes.
static_assert(std::endian::native == std::endian::little);

std::array<uint32_t, 256> crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli
    t[i] = c;
  }
  return t;
}

uint32_t crc32c_table(const uint8_t* p, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> t = crc_table();
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_hw(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c = crc;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = uint32_t(c);
  for (; i < n; ++i) c32 = _mm_crc32_u8(c32, p[i]);
  return c32;
}

}  // namespace

constexpr size_t kMaxKeptBufferBytes = size_t(256) << 20;

struct BufferPool::State {
  std::mutex mu;
  std::vector<std::unique_ptr<std::string>> free;
  size_t keep = 4;
};

BufferPool::BufferPool(size_t keep) : st_(std::make_shared<State>()) { st_->keep = keep; }

ByteBuffer BufferPool::get() {
  std::unique_ptr<std::string> s;
  {
    std::lock_guard<std::mutex> lk(st_->mu);
    if (!st_->free.empty()) {
      s = std::move(st_->free.back());
      st_->free.pop_back();
    }
  }
  if (!s) s = std::make_unique<std::string>();
  s->clear();
  std::weak_ptr<State> w = st_;
  return ByteBuffer(s.release(), [w](std::string* p) {
    std::unique_ptr<std::string> own(p);
    if (auto st = w.lock()) {
      std::lock_guard<std::mutex> lk(st->mu);
      // Kept only while few and not huge: one outsized transfer does not pin its memory.
      if (st->free.size() < st->keep && own->capacity() <= kMaxKeptBufferBytes) st->free.push_back(std::move(own));
    }
  });
}

uint8_t* KvSequence::alloc_rows(size_t n) {
  if (!buf) buf = std::make_shared<std::string>();
  buf->resize(n);
  rows_off = 0;
  rows_len = n;
  return reinterpret_cast<uint8_t*>(buf->data());
}

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  static const bool hw = __builtin_cpu_supports("sse4.2");
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  crc = hw ? crc32c_hw(p, n, crc) : crc32c_table(p, n, crc);
  return ~crc;
}

std::string model_fingerprint(const Model& m) {
  std::string s = model_config_to_json(m.config());
  const TensorView& e = m.weights().embed_tokens.w;
  if (e.data) s.append(static_cast<const char*>(e.data), std::min<size_t>(e.nbytes(), 1 << 16));
  return data::fnv1a64_hex(s);
}

KvLayout kv_layout(const Model& m) {
  KvLayout l;
  l.model = model_fingerprint(m);
  l.layers = m.config().num_hidden_layers;
  l.row = mla_cache_row(m.config());
  l.dtype = m.kv_cache_dtype();
  l.vocab = m.vocab();
  return l;
}

std::string encode_kv_transfer(const KvTransfer& t) {
  std::string s;
  encode_kv_transfer(t, &s);
  return s;
}

void encode_kv_transfer(const KvTransfer& t, std::string* out) {
  const KvLayout& l = t.layout;
  nlohmann::json positions = nlohmann::json::array();
  nlohmann::json cached = nlohmann::json::array();
  for (const KvSequence& q : t.seqs) {
    positions.push_back(int64_t(q.tokens.size()));
    cached.push_back(q.cached);
  }
  const nlohmann::json h = {{"model", l.model},           {"transfer_id", t.id},
                            {"layers", l.layers},         {"row", l.row},
                            {"cache_dtype", cache_dtype_name(l.dtype)},
                            {"row_bytes", l.row_bytes()}, {"vocab", l.vocab},
                            {"positions", positions},     {"cached", cached}};
  const std::string header = h.dump();
  size_t total = sizeof kMagic + 8 + header.size() + 4;
  for (const KvSequence& q : t.seqs) total += q.tokens.size() * 4 + q.rows_len + q.logits.size() * 4;
  std::string& s = *out;
  s.clear();
  s.reserve(total);
  s.append(kMagic, sizeof kMagic);
  put_u32(s, kKvTransferVersion);
  put_u32(s, uint32_t(header.size()));
  s += header;
  for (const KvSequence& q : t.seqs) {
    const int64_t P = int64_t(q.tokens.size());
    DSV3_ASSERT(int64_t(q.rows_len) == l.layers * P * l.row_bytes() && int64_t(q.logits.size()) == l.vocab);
    s.append(reinterpret_cast<const char*>(q.tokens.data()), q.tokens.size() * 4);
    s.append(reinterpret_cast<const char*>(q.rows()), q.rows_len);
    s.append(reinterpret_cast<const char*>(q.logits.data()), q.logits.size() * 4);
  }
  put_u32(s, crc32c(s.data(), s.size()));
}

bool decode_kv_transfer(const ByteBuffer& blob, const KvLayout& expect, KvTransfer* out,
                        KvTransferError* err) {
  const std::string_view b = *blob;
  auto fail = [&](int status, std::string msg) {
    err->status = status;
    err->message = std::move(msg);
    return false;
  };
  if (b.size() < sizeof kMagic + 12 || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0)
    return fail(400, "not a dsv3 KV transfer (bad magic or too short)");
  const uint32_t version = get_u32(b.data() + 8);
  if (version != kKvTransferVersion)
    return fail(400, str_cat("KV transfer version ", version, " is not supported (this build reads ",
                             kKvTransferVersion, ")"));
  // The checksum first: nothing of a damaged transfer is trusted, its header included.
  const uint32_t want = get_u32(b.data() + b.size() - 4);
  const uint32_t got = crc32c(b.data(), b.size() - 4);
  if (want != got)
    return fail(422, str_cat("KV transfer checksum mismatch (crc32c ", got, ", expected ", want,
                             "): the transfer was damaged"));
  const uint32_t hn = get_u32(b.data() + 12);
  if (hn > kMaxHeaderBytes || sizeof kMagic + 8 + size_t(hn) + 4 > b.size())
    return fail(400, str_cat("KV transfer header of ", hn, " bytes does not fit the transfer"));
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(b.substr(sizeof kMagic + 8, hn));
  } catch (const nlohmann::json::exception& e) {
    return fail(400, str_cat("KV transfer header is not JSON: ", e.what()));
  }
  KvTransfer t;
  KvLayout& l = t.layout;
  std::vector<int64_t> positions, cached;
  int64_t row_bytes = 0;
  try {
    l.model = h.at("model").get<std::string>();
    t.id = h.at("transfer_id").get<std::string>();
    l.layers = h.at("layers").get<int64_t>();
    l.row = h.at("row").get<int64_t>();
    l.vocab = h.at("vocab").get<int64_t>();
    const std::string dt = h.at("cache_dtype").get<std::string>();
    if (!parse_cache_dtype(dt, &l.dtype)) return fail(400, str_cat("KV transfer cache_dtype '", dt, "' is unknown"));
    row_bytes = h.at("row_bytes").get<int64_t>();
    positions = h.at("positions").get<std::vector<int64_t>>();
    cached = h.at("cached").get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception& e) {
    return fail(400, str_cat("KV transfer header: ", e.what()));
  }
  if (l.model != expect.model)
    return fail(409, str_cat("KV transfer is for model ", l.model, ", this instance serves ", expect.model,
                             " (prefill and decode must load the same checkpoint)"));
  if (l.layers != expect.layers || l.row != expect.row || l.dtype != expect.dtype || l.vocab != expect.vocab)
    return fail(409, str_cat("KV transfer layout (", l.layers, " layers x ", l.row, " values in ",
                             cache_dtype_name(l.dtype), ", vocab ", l.vocab, ") differs from this instance's (",
                             expect.layers, " x ", expect.row, " in ", cache_dtype_name(expect.dtype),
                             ", vocab ", expect.vocab, "): start both with the same --kv-cache"));
  // The sizes only now, from a layout known to be this instance's (no overflow from a sender's).
  if (row_bytes != l.row_bytes()) return fail(400, "KV transfer row_bytes does not match its row and cache_dtype");
  if (positions.empty()) return fail(400, "KV transfer holds no sequence");
  if (cached.size() != positions.size()) return fail(400, "KV transfer: cached and positions differ in length");
  size_t off = sizeof kMagic + 8 + hn;
  const size_t end = b.size() - 4;
  const size_t rb = size_t(l.row_bytes());
  for (size_t i = 0; i < positions.size(); ++i) {
    const int64_t P = positions[i];
    if (P < 1 || P > (int64_t(1) << 24)) return fail(400, str_cat("KV transfer sequence of ", P, " positions"));
    if (cached[i] < 0 || cached[i] > P) return fail(400, str_cat("KV transfer: cached ", cached[i], " of ", P));
    const size_t tok_b = size_t(P) * 4, rows_b = size_t(l.layers) * size_t(P) * rb,
                 log_b = size_t(l.vocab) * 4;
    if (end - off < tok_b + rows_b + log_b) return fail(400, "KV transfer is shorter than its header says");
    KvSequence q;
    q.cached = cached[i];
    q.tokens.resize(size_t(P));
    std::memcpy(q.tokens.data(), b.data() + off, tok_b);
    off += tok_b;
    q.buf = blob;  // the rows stay where they arrived
    q.rows_off = off;
    q.rows_len = rows_b;
    off += rows_b;
    q.logits.resize(size_t(l.vocab));
    std::memcpy(q.logits.data(), b.data() + off, log_b);
    off += log_b;
    for (int32_t id : q.tokens)
      if (id < 0 || id >= l.vocab) return fail(400, str_cat("KV transfer token id ", id, " is outside the vocabulary"));
    t.seqs.push_back(std::move(q));
  }
  if (off != end) return fail(400, str_cat("KV transfer has ", end - off, " bytes after its last sequence"));
  *out = std::move(t);
  return true;
}

}  // namespace dsv3::serve
