#include "serve/disagg.h"

#include <httplib.h>

#include "core/check.h"
#include "core/clock.h"
#include "serve/engine.h"
#include "serve/kv_socket.h"
#include "serve/openai_api.h"

namespace dsv3::serve {

void PendingTransfers::expire(double now) {
  for (auto it = m_.begin(); it != m_.end();) {
    if (now - it->second.at > ttl_s_) {
      bytes_ -= it->second.bytes;
      it = m_.erase(it);
    } else {
      ++it;
    }
  }
}

int PendingTransfers::put(std::shared_ptr<const KvTransfer> t, int64_t bytes, std::string* why) {
  std::lock_guard<std::mutex> lk(mu_);
  const double now = now_s();
  expire(now);
  if (m_.count(t->id)) {
    *why = str_cat("a transfer with id '", t->id, "' is already waiting");
    return 409;
  }
  if (bytes_ + bytes > max_bytes_) {
    *why = str_cat("the decode instance holds ", bytes_, " bytes of unclaimed transfers; ", bytes,
                   " more would pass its limit of ", max_bytes_);
    return 503;
  }
  bytes_ += bytes;
  const std::string id = t->id;
  m_[id] = Entry{std::move(t), now, bytes};
  return 0;
}

std::shared_ptr<const KvTransfer> PendingTransfers::take(const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  expire(now_s());
  auto it = m_.find(id);
  if (it == m_.end()) return nullptr;
  auto t = std::move(it->second.t);
  bytes_ -= it->second.bytes;
  m_.erase(it);
  return t;
}

namespace {

// "http://host:port[/...]" → host ("[::1]" kept bracketed; kv_socket strips it).
std::string url_host(const std::string& url) {
  std::string h = url.substr(url.find("//") + 2);
  h = h.substr(0, h.find('/'));
  const size_t colon = h.rfind(':');
  if (colon != std::string::npos && h.find(']', colon) == std::string::npos) h = h.substr(0, colon);
  return h;
}

// The prefill side's buffers (exported rows, encoded transfers), recycled across requests.
BufferPool& prefill_buffers() {
  static BufferPool pool(8);
  return pool;
}

// Prefills every prompt on the engine (export), waiting for all of them.
KvTransfer prefill(Engine& eng, const std::vector<std::vector<int32_t>>& prompts, const std::string& id,
                   const std::function<bool()>& alive) {
  KvTransfer t;
  t.layout = kv_layout(eng.model());
  t.id = id;
  std::vector<std::shared_ptr<Stream>> streams;
  std::vector<std::shared_ptr<KvSequence>> out;
  auto cancel_all = [&] {
    for (auto& s : streams) s->cancel();
  };
  for (const auto& ids : prompts) {
    Request r;
    r.prompt = ids;
    r.export_kv = std::make_shared<KvSequence>();
    r.export_kv->buf = prefill_buffers().get();
    r.tag = id;
    out.push_back(r.export_kv);
    std::shared_ptr<Stream> s;
    try {
      s = eng.submit(std::move(r));
    } catch (const Error& e) {
      cancel_all();
      throw ApiError(400, e.what());
    }
    if (!s) {
      cancel_all();
      throw ApiError(eng.draining() ? 503 : 429,
                     eng.draining() ? "the prefill instance is shutting down" : "the prefill queue is full",
                     "", eng.draining() ? "draining" : "queue_full");
    }
    streams.push_back(std::move(s));
  }
  for (auto& s : streams) {
    Event e;
    for (;;) {
      if (s->next(&e, 0.2)) {
        if (e.kind == Event::Kind::Error) {
          cancel_all();
          throw ApiError(500, str_cat("the prefill failed: ", e.finish_reason));
        }
        if (e.kind == Event::Kind::Finish) break;
      } else if (!alive()) {
        cancel_all();
        throw ApiError(503, "the prefill was cancelled (the router went away or the server is closing)");
      }
    }
  }
  for (auto& q : out) {
    if (!q->buf || q->logits.size() != size_t(t.layout.vocab))  // not expected: Finish came without export
      throw ApiError(500, "the prefill finished without exporting its cache");
    t.seqs.push_back(std::move(*q));
  }
  return t;
}

}  // namespace

nlohmann::json prefill_and_push(Engine& eng, const std::vector<std::vector<int32_t>>& prompts,
                                const std::string& transfer_id, const std::string& decode_url,
                                const PrefillPush& o, const std::function<bool()>& alive) {
  if (transfer_id.empty() || transfer_id.size() > 128)
    throw ApiError(400, "transfer_id must be a non-empty string of at most 128 characters", "transfer_id");
  if (decode_url.rfind("http://", 0) != 0)
    throw ApiError(400, str_cat("decode_url must be an http:// URL, got '", decode_url, "'"), "decode_url");
  const double t0 = now_s();
  KvTransfer t = prefill(eng, prompts, transfer_id, alive);
  const double t1 = now_s();
  const ByteBuffer blob_buf = prefill_buffers().get();
  encode_kv_transfer(t, blob_buf.get());
  for (KvSequence& q : t.seqs) q.buf.reset();  // the rows' buffers back to the pool
  const std::string& blob = *blob_buf;

  // The decode instance's transfer port (GET /v1/disagg/info), then the bytes over a plain
  // socket to the same host (serve/kv_socket.h).
  httplib::Client cli(decode_url);
  const auto secs = std::chrono::duration<double>(o.timeout_s);
  cli.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
  cli.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
  auto info = cli.Get("/v1/disagg/info");
  if (!info)
    throw ApiError(502, str_cat("the decode instance ", decode_url, " could not be reached (",
                                httplib::to_string(info.error()), ")"),
                   "", "decode_unreachable");
  int port = 0;
  int64_t max_bytes = 0;
  try {
    if (info->status == 200) {
      const nlohmann::json j = nlohmann::json::parse(info->body);
      port = j.at("transfer_port").get<int>();
      max_bytes = j.value("max_transfer_bytes", int64_t(0));
    }
  } catch (const nlohmann::json::exception&) {
  }
  if (port <= 0)
    throw ApiError(502, str_cat(decode_url, " is not a decode instance (GET /v1/disagg/info answered HTTP ",
                                info->status, "): start it with --role decode"),
                   "", "transfer_refused");
  if (max_bytes > 0 && int64_t(blob.size()) > max_bytes)
    throw ApiError(413, str_cat("the prompt's KV transfer is ", blob.size(), " bytes; the decode instance ", decode_url,
                                " takes at most ", max_bytes),
                   "", "transfer_too_large");
  const std::string host = url_host(decode_url);
  int attempts = 0;
  std::string last;
  for (; attempts < 2;) {
    ++attempts;
    std::string_view body = blob;
    std::string damaged;
    if (o.corrupt && o.corrupt->load() > 0 && o.corrupt->fetch_sub(1) > 0) {
      damaged = blob;
      damaged[damaged.size() / 2] = char(damaged[damaged.size() / 2] ^ 0x5a);
      body = damaged;
    }
    const TransferReply r = send_transfer(host, port, body, o.timeout_s);
    if (!r.delivered)
      throw ApiError(502, str_cat("the decode instance ", decode_url, " could not take the transfer: ", r.message),
                     "", "decode_unreachable");
    if (r.status == 200) {
      last.clear();
      break;
    }
    last = str_cat("status ", r.status, ": ", r.message.substr(0, 400));
    if (r.status != 422) break;  // only a damaged transfer is worth a second try
  }
  if (!last.empty()) {
    // Full (503) is the decode instance's back-pressure, passed on as such: retry later.
    const bool full = last.rfind("status 503", 0) == 0;
    throw ApiError(full ? 503 : 502,
                   str_cat("the decode instance ", decode_url, " refused the KV transfer after ", attempts,
                           attempts == 1 ? " attempt (" : " attempts (", last, ")"),
                   "", full ? "transfer_store_full" : "transfer_refused");
  }
  const double t2 = now_s();
  nlohmann::json lens = nlohmann::json::array();
  for (const KvSequence& q : t.seqs) lens.push_back(int64_t(q.tokens.size()));
  return {{"transfer_id", transfer_id}, {"bytes", int64_t(blob.size())}, {"prompt_tokens", lens},
          {"prefill_s", t1 - t0},       {"transfer_s", t2 - t1},          {"attempts", attempts}};
}

}  // namespace dsv3::serve
