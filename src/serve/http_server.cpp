#include "serve/http_server.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <thread>

#include "core/check.h"
#include "serve/client_socket.h"
#include "serve/disagg.h"
#include "serve/engine.h"
#include "serve/kv_socket.h"
#include "serve/openai_api.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::serve {
namespace {

// src/serve/chat_page.html, made a raw string literal at configure time (CMakeLists.txt).
const char kChatPage[] =
#include "chat_page.inc"
    ;

using Clock = std::chrono::steady_clock;
constexpr double kAliveCheckS = 0.2;  // how often a waiting handler checks its client



// ---- one generation request -------------------------------------------------------------

// The engine streams of one HTTP request (n choices per prompt) and their wire state.
struct Job {
  ResponseMeta meta;
  bool include_usage = false;
  std::vector<std::shared_ptr<Stream>> streams;
  std::vector<ChoiceBuilder> choices;
  std::vector<bool> done;
  int64_t n = 1;  // choices per prompt
  Usage usage;    // prompt_tokens filled at submit, the rest by count_usage()
  int fd = -1;    // the client's socket, -1 if not found
  void cancel_all() {
    for (auto& s : streams) s->cancel();
  }
  void count_usage() {
    for (const ChoiceBuilder& b : choices) usage.completion_tokens += b.completion_tokens();
    // Cached tokens: the first choice of each prompt (the others share its prefix anyway).
    for (size_t i = 0; i < choices.size(); i += size_t(n)) usage.cached_tokens += choices[i].cached_tokens();
  }
};

// The message of the last error answered on this thread, for the logger (which httplib calls
// on the same thread after the response went out, when the body may be compressed).
thread_local std::string t_last_error;

void send_error(httplib::Response& res, const ApiError& e) {
  t_last_error = e.what();
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
}

template <class F>
httplib::Server::Handler guarded(F f) {
  return [f](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const Error& e) {  // the engine's and the tokenizer's checks of client input
      send_error(res, ApiError(400, e.what()));
    } catch (const nlohmann::json::exception& e) {  // a JSON value of an unexpected type
      send_error(res, ApiError(400, str_cat("invalid request: ", e.what())));
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, str_cat("internal error: ", e.what())));
    } catch (...) {
      send_error(res, ApiError(500, "internal error"));
    }
  };
}

bool is_known_path(const std::string& p, bool* get, bool* post) {
  *get = p == "/" || p == "/favicon.ico" || p == "/health" || p == "/metrics" || p == "/v1/models" ||
         p.rfind("/v1/models/", 0) == 0 || p == "/v1/disagg/info" || p == "/v1/expert_load";
  *post = p == "/v1/chat/completions" || p == "/v1/completions" || p == "/tokenize" ||
          p == "/detokenize" || p == "/v1/disagg/prefill" || p == "/v1/disagg/kv" ||
          p == "/admin/rebalance";
  return *get || *post;
}

}  // namespace

struct HttpServer::Impl {
  HttpOptions opt;
  httplib::Server svr;
  std::atomic<Engine*> engine{nullptr};
  std::atomic<const tok::Tokenizer*> tokenizer{nullptr};
  std::atomic<bool> closing{false};
  std::thread thread;
  bool bound = false;
  const int64_t created = int64_t(std::time(nullptr));
  std::atomic<int> corrupt{0};        // prefill role: pushes still to damage (testing)
  PendingTransfers pending;           // decode role
  // Disaggregation counters (GET /metrics): prefill side, then decode side.
  std::atomic<uint64_t> xfer_sent{0}, xfer_sent_bytes{0}, xfer_resent{0}, xfer_failed{0};
  std::atomic<uint64_t> xfer_received{0}, xfer_received_bytes{0}, xfer_refused{0}, xfer_claimed{0};
  KvLayout layout;                    // decode role: what a transfer must match (set_ready)
  std::unique_ptr<TransferListener> listener;  // decode role: the transfer port

  explicit Impl(HttpOptions o)
      : opt(std::move(o)), corrupt(opt.fault_corrupt_transfers), pending(opt.pending_ttl_s, opt.pending_max_bytes) {}

  // JSON endpoints keep their own body limit when the decode role admits large transfers.
  void check_body(const httplib::Request& req) const {
    if (req.body.size() > opt.max_body_bytes)
      throw ApiError(413, str_cat("the request body is too large (", req.body.size(), " bytes; at most ",
                                  opt.max_body_bytes, ")"), "", "payload_too_large");
  }
  void need_role(const char* role, const std::string& path) const {
    if (opt.role != role)
      throw ApiError(404, str_cat(path, " needs an instance started with --role ", role, " (this one is ",
                                  opt.role, ")"), "", "not_found");
  }
  std::vector<std::vector<int32_t>> prompts_of(Endpoint kind, const json& body, GenParams* params) const;
  // Decode role: verify and keep one transfer (the transfer port and POST /v1/disagg/kv).
  // Throws ApiError with the refusal's status.
  json receive(const ByteBuffer& bytes, const std::string& header_id) {
    auto t = std::make_shared<KvTransfer>();
    KvTransferError err;
    if (!decode_kv_transfer(bytes, layout, t.get(), &err)) {
      ++xfer_refused;
      throw ApiError(err.status, err.message, "", err.status == 422 ? "transfer_damaged" : "transfer_invalid");
    }
    if (!header_id.empty() && header_id != t->id)
      throw ApiError(400, str_cat("the ", kTransferIdHeader, " header says '", header_id, "', the transfer '",
                                  t->id, "'"), "", "transfer_invalid");
    std::string why;
    const json out = {{"transfer_id", t->id}, {"sequences", int64_t(t->seqs.size())},
                      {"bytes", int64_t(bytes->size())}};
    if (const int st = pending.put(std::move(t), int64_t(bytes->size()), &why)) {
      ++xfer_refused;
      throw ApiError(st, why, "", st == 409 ? "transfer_duplicate" : "transfer_store_full");
    }
    ++xfer_received;
    xfer_received_bytes += bytes->size();
    return out;
  }

  Engine& ready_engine() const {
    Engine* e = engine.load();
    if (!e) throw ApiError(503, "the model is still loading; retry shortly", "", "model_loading");
    if (e->draining()) throw ApiError(503, "the server is shutting down", "", "draining");
    return *e;
  }
  const tok::Tokenizer& need_tokenizer(const char* what) const {
    const tok::Tokenizer* t = tokenizer.load();
    if (!t) throw ApiError(400, str_cat(what, " needs text, but the model directory has no tokenizer.json"));
    return *t;
  }
  TokenBytes token_bytes() const {
    const tok::Tokenizer* t = tokenizer.load();
    return [t](int32_t id) -> std::string {
      if (!t || id < 0 || id >= t->vocab_size()) return "";
      try {
        return std::string(t->token_bytes(id));
      } catch (const Error&) {
        return "";
      }
    };
  }
  void check_model(const std::string& name) const {
    if (!name.empty() && name != opt.served_model_name)
      throw ApiError(404, str_cat("The model '", name, "' does not exist; this server serves '",
                                  opt.served_model_name, "'"),
                     "model", "model_not_found");
  }

  void routes();
  httplib::Server::HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res);
  void generate(const httplib::Request& req, httplib::Response& res, Endpoint kind);
  bool pump(Job& job, const std::function<bool(size_t, const Event&)>& on,
            const std::function<bool()>& alive);
  bool stream_job(Job& job, httplib::DataSink& sink);
};

// Auth, CORS and wrong methods, before httplib's routing (which reads the body after this).
httplib::Server::HandlerResponse HttpServer::Impl::pre_route(const httplib::Request& req,
                                                             httplib::Response& res) {
  using HR = httplib::Server::HandlerResponse;
  const std::string origin = req.get_header_value("Origin");
  bool cors = false;
  if (!origin.empty()) {
    for (const std::string& o : opt.cors_origins) cors = cors || o == "*" || o == origin;
    if (cors) {
      const bool any = std::find(opt.cors_origins.begin(), opt.cors_origins.end(), "*") !=
                       opt.cors_origins.end();
      res.set_header("Access-Control-Allow-Origin", any ? "*" : origin);
      if (!any) res.set_header("Vary", "Origin");
    }
  }
  bool get = false, post = false;
  const bool known = is_known_path(req.path, &get, &post);
  const char* allow = get ? "GET, HEAD, OPTIONS" : "POST, OPTIONS";
  if (req.method == "OPTIONS") {  // a CORS preflight (never authenticated: browsers send no key)
    res.status = 204;
    res.set_header("Allow", known ? allow : "OPTIONS");
    if (cors) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      const std::string h = req.get_header_value("Access-Control-Request-Headers");
      res.set_header("Access-Control-Allow-Headers", h.empty() ? "Authorization, Content-Type" : h);
      res.set_header("Access-Control-Max-Age", "600");
    }
    return HR::Handled;
  }
  const bool open = req.path == "/" || req.path == "/favicon.ico" || req.path == "/health";
  if (!opt.api_key.empty() && !open) {
    const std::string auth = req.get_header_value("Authorization");
    const std::string want = "Bearer " + opt.api_key;
    // Constant time in the key's length: no early exit on the first differing byte.
    unsigned diff = auth.size() != want.size();
    for (size_t i = 0; i < want.size(); ++i) diff |= unsigned(i < auth.size() ? auth[i] ^ want[i] : 1);
    if (diff) {
      send_error(res, ApiError(401, auth.empty() ? "missing API key: send \"Authorization: Bearer KEY\""
                                                 : "incorrect API key",
                               "", "invalid_api_key"));
      return HR::Handled;
    }
  }
  const bool is_get = req.method == "GET" || req.method == "HEAD";
  if (known && !((get && is_get) || (post && req.method == "POST"))) {
    res.set_header("Allow", allow);
    send_error(res, ApiError(405, str_cat("method ", req.method, " is not allowed on ", req.path,
                                          " (allowed: ", allow, ")"),
                             "", "method_not_allowed"));
    return HR::Handled;
  }
  return HR::Unhandled;
}

// Feeds every choice's events to `on` until each has finished. Returns false, with every
// request cancelled, when the client went away (`alive` false), the server is closing, or
// `on` refused an event (its write failed).
bool HttpServer::Impl::pump(Job& job, const std::function<bool(size_t, const Event&)>& on,
                            const std::function<bool()>& alive) {
  const size_t n = job.streams.size();
  auto last_check = Clock::now();
  const auto take = [&](size_t i, const Event& e) {
    if (e.kind != Event::Kind::Token) job.done[i] = true;
    return on(i, e);
  };
  for (;;) {
    size_t active = 0, first = n;
    bool got = false;
    for (size_t i = 0; i < n; ++i) {
      Event e;
      while (!job.done[i] && job.streams[i]->next(&e, 0)) {
        got = true;
        if (!take(i, e)) return job.cancel_all(), false;
      }
      if (!job.done[i]) {
        ++active;
        if (first == n) first = i;
      }
    }
    if (active == 0) return true;
    if (!got) {
      // Block on one stream; with several, briefly, so the others are served soon too.
      Event e;
      if (job.streams[first]->next(&e, active == 1 ? kAliveCheckS : 0.005) && !take(first, e))
        return job.cancel_all(), false;
    }
    const auto now = Clock::now();
    if (std::chrono::duration<double>(now - last_check).count() >= kAliveCheckS) {
      last_check = now;
      if (closing.load() || !alive()) return job.cancel_all(), false;
    }
  }
}

bool HttpServer::Impl::stream_job(Job& job, httplib::DataSink& sink) {
  const auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
  const auto chunk = [&](json choice) {
    std::vector<json> c;
    c.push_back(std::move(choice));
    return write(sse_event(chunk_json(job.meta, std::move(c), job.include_usage)));
  };
  if (job.meta.kind == Endpoint::Chat)
    for (const ChoiceBuilder& b : job.choices)
      if (!chunk(b.role_choice())) return job.cancel_all(), false;
  bool failed = false;
  const bool ok = pump(
      job,
      [&](size_t i, const Event& e) {
        if (e.kind == Event::Kind::Error) {
          // The engine failed the request: an error object in the stream (the OpenAI clients
          // raise it), and no [DONE].
          failed = true;
          write(sse_event(error_body(ApiError(500, e.finish_reason.empty() ? "the engine failed the request"
                                                                           : e.finish_reason))));
          return false;
        }
        for (json& c : job.choices[i].on_event(e))
          if (!chunk(std::move(c))) return false;
        return true;
      },
      [&] { return !peer_gone(job.fd) && sink.is_writable(); });
  if (failed) {
    sink.done();
    return true;
  }
  if (!ok) return false;
  job.count_usage();
  if (job.include_usage && !write(sse_event(usage_chunk_json(job.meta, job.usage)))) return false;
  if (!write(sse_done())) return false;
  sink.done();
  return true;
}

std::vector<std::vector<int32_t>> HttpServer::Impl::prompts_of(Endpoint kind, const json& body,
                                                                GenParams* params) const {
  std::vector<std::vector<int32_t>> prompts;
  if (kind == Endpoint::Chat) {
    ChatRequest c = parse_chat_request(body);
    check_model(c.params.model);
    *params = std::move(c.params);
    prompts.push_back(chat_prompt_ids(need_tokenizer("/v1/chat/completions"), c.messages));
  } else {
    CompletionRequest c = parse_completion_request(body);
    check_model(c.params.model);
    *params = std::move(c.params);
    for (const Prompt& p : c.prompts)
      prompts.push_back(completion_prompt_ids(p.is_text ? &need_tokenizer("a text prompt") : nullptr, p));
  }
  return prompts;
}

void HttpServer::Impl::generate(const httplib::Request& req, httplib::Response& res, Endpoint kind) {
  Engine& eng = ready_engine();
  check_body(req);
  const json body = parse_body(req.body);
  GenParams params;
  const std::vector<std::vector<int32_t>> prompts = prompts_of(kind, body, &params);
  // A disaggregated request: its prompts were prefilled on a prefill instance.
  std::shared_ptr<const KvTransfer> transfer;
  if (req.has_header(kTransferIdHeader)) {
    need_role("decode", str_cat("the ", kTransferIdHeader, " header"));
    const std::string id = req.get_header_value(kTransferIdHeader);
    transfer = pending.take(id);
    if (!transfer)
      throw ApiError(409, str_cat("no KV transfer '", id, "' is waiting here (never received, already used, or ",
                                  "expired after ", opt.pending_ttl_s, " s)"), "", "transfer_missing");
    ++xfer_claimed;
    if (transfer->seqs.size() != prompts.size())
      throw ApiError(409, str_cat("KV transfer '", id, "' holds ", transfer->seqs.size(), " prompts, the request ",
                                  prompts.size()), "", "transfer_mismatch");
    for (size_t i = 0; i < prompts.size(); ++i)
      if (transfer->seqs[i].tokens != prompts[i])
        throw ApiError(409, str_cat("KV transfer '", id, "' was prefilled from other tokens than prompt ", i,
                                    " of this request (", transfer->seqs[i].tokens.size(), " vs ",
                                    prompts[i].size(), " tokens): do prefill and decode load the same tokenizer?"),
                       "", "transfer_mismatch");
  }

  auto job = std::make_shared<Job>();
  job->meta = {kind, new_response_id(kind), int64_t(std::time(nullptr)), opt.served_model_name};
  job->include_usage = params.stream && params.include_usage;
  job->n = params.n;
  const char* prompt_param = kind == Endpoint::Chat ? "messages" : "prompt";
  // Without max_tokens a request may run to the end of its context, or of the whole block
  // pool when --kv-cache-mb makes that smaller (the engine refuses more than the pool holds).
  int64_t limit = eng.context();
  const EngineMetrics em = eng.metrics();
  if (em.kv_blocks_total > 0 && em.kv_block_positions > 0)
    limit = std::min(limit, em.kv_blocks_total * em.kv_block_positions);
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const std::vector<int32_t>& ids = prompts[pi];
    std::vector<Request> reqs;
    try {
      reqs = engine_requests(params, ids, limit, job->meta.id);
    } catch (const ApiError& e) {
      job->cancel_all();
      throw ApiError(400, e.what(), prompt_param);
    }
    for (Request& r : reqs) {
      if (transfer)  // aliases the transfer: its rows are copied once, at admission
        r.import_kv = std::shared_ptr<const KvSequence>(transfer, &transfer->seqs[pi]);
      std::shared_ptr<Stream> s;
      try {
        s = eng.submit(std::move(r));
      } catch (const Error& e) {
        job->cancel_all();
        throw ApiError(400, e.what());
      }
      if (!s) {
        job->cancel_all();
        if (eng.draining()) throw ApiError(503, "the server is shutting down", "", "draining");
        throw ApiError(429, "the request queue is full; retry later", "", "queue_full");
      }
      job->choices.emplace_back(kind, int64_t(job->streams.size()), params.top_logprobs >= 0,
                                token_bytes());
      job->streams.push_back(std::move(s));
    }
    job->usage.prompt_tokens += int64_t(ids.size());
  }
  job->done.assign(job->streams.size(), false);
  job->fd = connection_fd(req);

  if (params.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job](size_t, httplib::DataSink& sink) { return stream_job(*job, sink); },
        [job](bool success) {
          if (!success) job->cancel_all();  // the provider never ran, or stopped early
        });
    return;
  }

  // Non-streamed: wait here, watching the client, then answer at once.
  struct CancelOnExit {
    Job& j;
    bool armed = true;
    ~CancelOnExit() {
      if (armed) j.cancel_all();
    }
  } guard{*job};
  std::string engine_error;
  const bool ok = pump(
      *job,
      [&](size_t i, const Event& e) {
        if (e.kind == Event::Kind::Error) {
          engine_error = e.finish_reason.empty() ? "the engine failed the request" : e.finish_reason;
          return false;
        }
        job->choices[i].on_event(e);
        return true;
      },
      [&] { return !peer_gone(job->fd); });
  if (!engine_error.empty()) throw ApiError(500, engine_error);
  if (!ok) throw ApiError(503, "the request was cancelled (client gone or server closing)");
  guard.armed = false;
  std::vector<json> choices;
  for (const ChoiceBuilder& b : job->choices) choices.push_back(b.final_choice());
  job->count_usage();
  res.set_content(dump(response_json(job->meta, choices, job->usage)), "application/json");
}

void HttpServer::Impl::routes() {
  svr.set_pre_routing_handler([this](const httplib::Request& q, httplib::Response& r) {
    try {
      return pre_route(q, r);
    } catch (const std::exception& e) {
      send_error(r, ApiError(500, str_cat("internal error: ", e.what())));
      return httplib::Server::HandlerResponse::Handled;
    }
  });
  // Statuses httplib sets itself (404 unknown path, 413 body too large, 400 bad request
  // line) get the same JSON error body as ours.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& q,
                                                                httplib::Response& r) {
    if (!r.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string msg = str_cat("HTTP ", r.status);
    std::string code;
    if (r.status == 404) msg = str_cat("no such endpoint: ", q.path), code = "not_found";
    if (r.status == 413) msg = "the request body is too large", code = "payload_too_large";
    send_error(r, ApiError(r.status, msg, "", code));
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
    send_error(r, ApiError(500, "internal error"));
  });
  // One short line per refused request; successful ones are logged by the engine.
  svr.set_logger([](const httplib::Request& q, const httplib::Response& r) {
    if (r.status >= 400 && q.path != "/health")  // 503 there is the answer, not an error
      std::fprintf(stderr, "dsv3 serve: %d %s %s: %.200s\n", r.status, q.method.c_str(), q.path.c_str(),
                   t_last_error.c_str());
    t_last_error.clear();
  });

  svr.Get("/", [](const httplib::Request&, httplib::Response& r) {
    r.set_content(kChatPage, sizeof kChatPage - 1, "text/html; charset=utf-8");
  });
  svr.Get("/favicon.ico", [](const httplib::Request&, httplib::Response& r) { r.status = 204; });
  svr.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    Engine* e = engine.load();
    const char* status = !e ? "loading" : e->draining() ? "draining" : "ok";
    r.status = !e || e->draining() ? 503 : 200;
    r.set_content(dump(json{{"status", status}}), "application/json");
  });
  svr.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& r) {
    Engine* e = engine.load();
    json list = {{"object", "list"},
                 {"data", {model_json(opt.served_model_name, created, e ? e->context() : 0)}}};
    r.set_content(dump(list), "application/json");
  }));
  svr.Get("/v1/models/(.+)", guarded([this](const httplib::Request& q, httplib::Response& r) {
    check_model(q.matches[1].str());
    Engine* e = engine.load();
    r.set_content(dump(model_json(opt.served_model_name, created, e ? e->context() : 0)),
                  "application/json");
  }));
  svr.Post("/v1/chat/completions", guarded([this](const httplib::Request& q, httplib::Response& r) {
    generate(q, r, Endpoint::Chat);
  }));
  svr.Post("/v1/completions", guarded([this](const httplib::Request& q, httplib::Response& r) {
    generate(q, r, Endpoint::Completion);
  }));
  svr.Post("/v1/disagg/prefill", guarded([this](const httplib::Request& q, httplib::Response& r) {
    need_role("prefill", q.path);
    Engine& eng = ready_engine();
    check_body(q);
    const json body = parse_body(q.body);
    const std::string ep = body.value("endpoint", "");
    if (ep != "chat" && ep != "completions")
      throw ApiError(400, "endpoint must be \"chat\" or \"completions\"", "endpoint");
    if (!body.contains("request") || !body["request"].is_object())
      throw ApiError(400, "request must be the client's request object", "request");
    GenParams params;
    const auto prompts = prompts_of(ep == "chat" ? Endpoint::Chat : Endpoint::Completion, body["request"], &params);
    PrefillPush push;
    push.timeout_s = opt.transfer_timeout_s;
    push.corrupt = &corrupt;
    const int fd = connection_fd(q);
    json out;
    try {
      out = prefill_and_push(eng, prompts, body.value("transfer_id", ""), body.value("decode_url", ""), push,
                             [&] { return !closing.load() && !peer_gone(fd); });
    } catch (const ApiError& e) {
      if (e.status == 502) ++xfer_failed;  // the decode side's refusal or absence
      throw;
    }
    ++xfer_sent;
    xfer_sent_bytes += out["bytes"].get<uint64_t>();
    xfer_resent += out["attempts"].get<uint64_t>() - 1;
    std::fprintf(stderr, "dsv3 serve: prefill %s prompt=%s bytes=%lld prefill=%.3fs transfer=%.3fs\n",
                 out["transfer_id"].get<std::string>().c_str(), out["prompt_tokens"].dump().c_str(),
                 (long long)out["bytes"].get<int64_t>(), out["prefill_s"].get<double>(),
                 out["transfer_s"].get<double>());
    r.set_content(dump(out), "application/json");
  }));
  svr.Post("/v1/disagg/kv", guarded([this](const httplib::Request& q, httplib::Response& r) {
    need_role("decode", q.path);
    ready_engine();
    r.set_content(dump(receive(std::make_shared<std::string>(q.body), q.get_header_value(kTransferIdHeader))),
                  "application/json");
  }));
  // The expert load since start as `dsv3 eplb --load` reads it: {"weight": [[per expert] per
  // MoE layer]}, with the layer indices and totals beside.
  svr.Get("/v1/expert_load", guarded([this](const httplib::Request&, httplib::Response& r) {
    r.set_content(dump(expert_load_json(ready_engine().metrics())), "application/json");
  }));
  // Redundant experts (serve/rebalance.h): a new placement from the load counted since the
  // last one, applied on every rank before the next step; answers what it expects to buy.
  svr.Post("/admin/rebalance", guarded([this](const httplib::Request&, httplib::Response& r) {
    Engine& e = ready_engine();
    if (!e.options().ep)
      throw ApiError(400, "rebalancing needs expert-parallel serving (mpirun -np N dsv3 serve --ep N)", "",
                     "not_expert_parallel");
    const EngineMetrics m = e.metrics();
    uint64_t routed = 0;
    for (const auto& row : m.expert_load)
      for (uint64_t v : row) routed += v;
    if (routed == 0)
      throw ApiError(409, "no token has been routed to an expert yet: there is no load to balance", "",
                     "no_expert_load");
    PlacementReport p;
    try {
      p = e.rebalance();
    } catch (const Error& ex) {
      throw ApiError(503, ex.what(), "", "rebalance_failed");
    }
    json layers = json::array(), p2l = json::array();
    for (size_t l = 0; l < p.phy2log.size(); ++l)
      if (!p.phy2log[l].empty()) {
        layers.push_back(l);
        p2l.push_back(p.phy2log[l]);
      }
    r.set_content(dump(json{{"slots", p.slots},
                            {"ranks", p.ranks},
                            {"source", p.source},
                            {"assignments", p.tokens},
                            {"expected_imbalance_before", p.before},
                            {"expected_imbalance_after", p.after},
                            {"layers", layers},
                            {"phy2log", p2l}}),
                  "application/json");
  }));
  svr.Get("/v1/disagg/info", guarded([this](const httplib::Request& q, httplib::Response& r) {
    need_role("decode", q.path);
    ready_engine();
    r.set_content(dump(json{{"role", opt.role},
                            {"transfer_port", listener ? listener->port() : 0},
                            {"max_transfer_bytes", opt.pending_max_bytes},
                            {"model", layout.model},
                            {"layers", layout.layers},
                            {"row", layout.row},
                            {"cache_dtype", cache_dtype_name(layout.dtype)},
                            {"vocab", layout.vocab}}),
                  "application/json");
  }));
  svr.Post("/tokenize", guarded([this](const httplib::Request& q, httplib::Response& r) {
    Engine& e = ready_engine();
    check_body(q);
    r.set_content(dump(tokenize_json(need_tokenizer("/tokenize"), parse_body(q.body), e.context())),
                  "application/json");
  }));
  svr.Post("/detokenize", guarded([this](const httplib::Request& q, httplib::Response& r) {
    ready_engine();
    check_body(q);
    r.set_content(dump(detokenize_json(need_tokenizer("/detokenize"), parse_body(q.body))),
                  "application/json");
  }));
  svr.Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& r) {
    Engine* e = engine.load();
    if (!e) throw ApiError(503, "the model is still loading", "", "model_loading");
    std::string text = metrics_text(e->metrics());
    auto counter = [&](const char* name, const char* help, uint64_t v) {
      text += str_cat("# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ", v, "\n");
    };
    if (opt.role == "prefill") {
      counter("dsv3_kv_transfers_sent_total", "KV transfers delivered to decode instances.", xfer_sent.load());
      counter("dsv3_kv_transfer_bytes_sent_total", "Bytes of the delivered KV transfers.", xfer_sent_bytes.load());
      counter("dsv3_kv_transfers_resent_total", "KV transfers sent again after a refusal as damaged.",
              xfer_resent.load());
      counter("dsv3_kv_transfers_failed_total", "KV transfers the decode instance refused or never got.",
              xfer_failed.load());
    } else if (opt.role == "decode") {
      counter("dsv3_kv_transfers_received_total", "KV transfers accepted.", xfer_received.load());
      counter("dsv3_kv_transfer_bytes_received_total", "Bytes of the accepted KV transfers.",
              xfer_received_bytes.load());
      counter("dsv3_kv_transfers_refused_total", "KV transfers refused (damaged, foreign, malformed, full).",
              xfer_refused.load());
      counter("dsv3_kv_transfers_claimed_total", "Generation requests served from a KV transfer.",
              xfer_claimed.load());
    }
    r.set_content(text, "text/plain; version=0.0.4; charset=utf-8");
  }));
}

HttpServer::HttpServer(HttpOptions o) : impl_(std::make_unique<Impl>(std::move(o))) {
  // A client that hangs up mid-stream must cost a failed write, not the process.
  std::signal(SIGPIPE, SIG_IGN);
  Impl& m = *impl_;
  // KV transfers come through the transfer port; POST /v1/disagg/kv (tools, tests) is held to
  // max_body_bytes like every other body.
  configure_server(m.svr, size_t(std::max(1, m.opt.threads)), m.opt.max_body_bytes);
  m.svr.set_keep_alive_max_count(1000);
  m.routes();
}

HttpServer::~HttpServer() { shutdown(); }

int HttpServer::bind() {
  Impl& m = *impl_;
  const int port = bind_server(m.svr, m.opt.host, m.opt.port, "serve");
  m.bound = true;
  return port;
}

void HttpServer::start() {
  DSV3_ASSERT(impl_->bound && !impl_->thread.joinable());
  impl_->thread = std::thread([this] { impl_->svr.listen_after_bind(); });
}

void HttpServer::set_ready(Engine* engine, const tok::Tokenizer* tokenizer) {
  Impl& m = *impl_;
  if (m.opt.role == "decode" && engine && !m.listener) {
    m.layout = kv_layout(engine->model());
    m.listener = std::make_unique<TransferListener>(
        m.opt.host, m.opt.transfer_port, m.opt.pending_max_bytes, m.opt.transfer_timeout_s,
        [&m](ByteBuffer bytes) -> std::pair<int, std::string> {
          try {
            return {200, dump(m.receive(bytes, ""))};
          } catch (const ApiError& e) {
            return {e.status, e.what()};
          }
        });
    std::fprintf(stderr, "dsv3 serve: KV transfers on %s:%d\n", m.opt.host.c_str(), m.listener->port());
  }
  m.tokenizer.store(tokenizer);
  m.engine.store(engine);
}

void HttpServer::shutdown() {
  Impl& m = *impl_;
  if (m.closing.exchange(true)) return;
  if (m.bound) m.svr.stop();
  if (m.thread.joinable()) m.thread.join();
  m.listener.reset();
}

}  // namespace dsv3::serve
