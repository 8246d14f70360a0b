#include "serve/router.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "core/check.h"
#include "core/clock.h"
#include "serve/client_socket.h"
#include "serve/disagg.h"
#include "serve/openai_api.h"

namespace dsv3::serve {
namespace {

using micros = std::chrono::microseconds;
micros us(double s) { return micros(int64_t(s * 1e6)); }

struct Instance {
  std::string url;
  const char* role = "";
  std::atomic<bool> healthy{false};
  std::atomic<int64_t> in_flight{0};
  std::atomic<uint64_t> requests{0}, failures{0};
};

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
}

// One relayed request's stream from a decode instance: filled by the upstream thread, drained
// by the client's content provider.
struct Pipe {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> chunks;
  bool headers = false, done = false;
  std::atomic<bool> cancel{false};
  int status = 0;
  std::string content_type, error;
  std::shared_ptr<httplib::Client> client;
  std::thread upstream;  // uses the Pipe by pointer: the owners (handler, provider) join it
  ~Pipe() {
    cancel = true;
    if (client) client->stop();  // a silent instance: do not wait out its read timeout
    if (upstream.joinable()) upstream.join();
  }
};

// 128 random bits from the OS, as 32 hex digits: transfer ids are not guessable.
std::string transfer_id() {
  std::random_device rd;
  static const char* hex = "0123456789abcdef";
  std::string id = "kv-";
  for (int i = 0; i < 4; ++i) {
    const uint32_t v = rd();
    for (int k = 0; k < 8; ++k) id += hex[(v >> (4 * k)) & 15];
  }
  return id;
}

}  // namespace

struct Router::Impl {
  RouterOptions opt;
  httplib::Server svr;
  std::vector<std::unique_ptr<Instance>> prefill, decode;
  std::atomic<uint64_t> rr{0};
  std::thread listener, health;
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  bool stopping = false, bound = false;
  std::atomic<bool> closed{false};
  // Counters (GET /metrics).
  std::atomic<uint64_t> requests{0}, failed{0}, transfer_bytes{0};
  std::mutex time_mu;
  double prefill_s = 0, transfer_s = 0;

  explicit Impl(RouterOptions o) : opt(std::move(o)) {
    auto make = [](const std::vector<std::string>& urls, const char* role) {
      std::vector<std::unique_ptr<Instance>> v;
      for (const std::string& u : urls) {
        DSV3_CHECK(u.rfind("http://", 0) == 0, "router: --", role, " URL '", u,
                   "' must start with http:// (e.g. http://127.0.0.1:8081)");
        auto i = std::make_unique<Instance>();
        i->url = u;
        while (!i->url.empty() && i->url.back() == '/') i->url.pop_back();
        i->role = role;
        v.push_back(std::move(i));
      }
      return v;
    };
    DSV3_CHECK(!opt.prefill.empty(), "router: give at least one --prefill URL");
    DSV3_CHECK(!opt.decode.empty(), "router: give at least one --decode URL");
    DSV3_CHECK(opt.timeout_s > 0 && opt.connect_timeout_s > 0 && opt.health_interval_s > 0,
               "router: --timeout, --connect-timeout and --health-interval must be > 0");
    prefill = make(opt.prefill, "prefill");
    decode = make(opt.decode, "decode");
  }

  std::unique_ptr<httplib::Client> client(const Instance& i, double read_timeout_s) const {
    auto c = std::make_unique<httplib::Client>(i.url);
    c->set_connection_timeout(us(opt.connect_timeout_s));
    c->set_read_timeout(us(read_timeout_s));
    c->set_write_timeout(us(opt.timeout_s));
    return c;
  }

  // Fewest in flight among the healthy, ties broken round robin; nullptr when none is healthy.
  Instance* pick(std::vector<std::unique_ptr<Instance>>& v) {
    const size_t n = v.size(), start = size_t(rr.fetch_add(1) % n);
    Instance* best = nullptr;
    for (size_t k = 0; k < n; ++k) {
      Instance* i = v[(start + k) % n].get();
      if (i->healthy.load() && (!best || i->in_flight.load() < best->in_flight.load())) best = i;
    }
    return best;
  }
  // A request failed at instance i; take_out: choose it no more until /health is 200.
  void failed_at(Instance& i, bool take_out, const std::string& why) {
    ++i.failures;
    if (take_out) mark_down(i, why);
  }
  void mark_down(Instance& i, const std::string& why) {
    if (i.healthy.exchange(false))
      std::fprintf(stderr, "dsv3 router: %s instance %s taken out: %s\n", i.role, i.url.c_str(), why.c_str());
  }

  void check_health(Instance& i) {
    auto c = client(i, std::min(opt.timeout_s, std::max(1.0, opt.health_interval_s)));
    auto r = c->Get("/health");
    const bool ok = r && r->status == 200;
    const bool was = i.healthy.exchange(ok);
    if (ok && !was) std::fprintf(stderr, "dsv3 router: %s instance %s is healthy\n", i.role, i.url.c_str());
    if (!ok && was)
      std::fprintf(stderr, "dsv3 router: %s instance %s is not healthy (%s)\n", i.role, i.url.c_str(),
                   r ? str_cat("HTTP ", r->status).c_str() : httplib::to_string(r.error()).c_str());
  }
  void health_round() {
    for (auto& i : prefill) check_health(*i);
    for (auto& i : decode) check_health(*i);
  }
  void health_loop() {
    std::unique_lock<std::mutex> lk(stop_mu);
    while (!stopping) {
      stop_cv.wait_for(lk, std::chrono::duration<double>(opt.health_interval_s), [&] { return stopping; });
      if (stopping) break;
      lk.unlock();
      health_round();
      lk.lock();
    }
  }

  bool authorised(const httplib::Request& q, httplib::Response& r) const {
    if (opt.api_key.empty() || q.path == "/health") return true;
    if (q.get_header_value("Authorization") == "Bearer " + opt.api_key) return true;
    send_error(r, ApiError(401, "missing or incorrect API key", "", "invalid_api_key"));
    return false;
  }

  void generate(const httplib::Request& q, httplib::Response& r, const char* endpoint);
  void relay(const httplib::Request& q, httplib::Response& r, bool post);
  std::string metrics() const;
  void routes();
};

// Prefill (and ship), then relay the decode instance's answer.
void Router::Impl::generate(const httplib::Request& q, httplib::Response& r, const char* endpoint) {
  ++requests;
  if (q.body.size() > opt.max_body_bytes)
    throw ApiError(413, str_cat("the request body is too large (", q.body.size(), " bytes)"), "", "payload_too_large");
  const json body = parse_body(q.body);
  const auto st = body.find("stream");
  if (st != body.end() && !st->is_boolean() && !st->is_null()) throw ApiError(400, "stream must be a boolean", "stream");
  const bool stream = st != body.end() && st->is_boolean() && st->get<bool>();

  Instance* P = pick(prefill);
  Instance* D = pick(decode);
  if (!P || !D)
    throw ApiError(503, str_cat("no healthy ", !P ? "prefill" : "decode", " instance (the router polls /health every ",
                                opt.health_interval_s, " s)"), "", "no_instance");
  // D counts as busy from its choice on, so requests arriving together spread over the
  // decode instances; the upstream thread releases it (or this guard, on an earlier exit).
  ++D->in_flight;
  struct Release {
    Instance* d;
    ~Release() {
      if (d) --d->in_flight;
    }
  } release{D};
  const std::string id = transfer_id();
  const json preq = {{"endpoint", endpoint}, {"request", body}, {"transfer_id", id}, {"decode_url", D->url}};
  httplib::Headers fwd;
  if (q.has_header("Authorization")) fwd.emplace("Authorization", q.get_header_value("Authorization"));

  // 1. Prefill and ship.
  {
    ++P->requests;
    ++P->in_flight;
    auto c = client(*P, opt.timeout_s);
    auto res = c->Post("/v1/disagg/prefill", fwd, dump(preq), "application/json");
    --P->in_flight;
    if (!res) {
      // Silent past --timeout: a busy instance is not a dead one (its /health decides); any
      // other failure (refused, reset) takes it out at once.
      failed_at(*P, res.error() != httplib::Error::Read, httplib::to_string(res.error()));
      if (res.error() == httplib::Error::Read)
        throw ApiError(504, str_cat("the prefill instance ", P->url, " did not answer within ", opt.timeout_s,
                                    " s (--timeout)"), "", "prefill_timeout");
      throw ApiError(502, str_cat("the prefill instance ", P->url, " failed: ", httplib::to_string(res.error())),
                     "", "prefill_failed");
    }
    if (res->status != 200) {
      // The prefill instance's own error: the client's request (4xx) or the decode side
      // (502/503). Only its own error code, not text a client could put in a message, says
      // the decode instance is unreachable.
      std::string code;
      try {
        code = json::parse(res->body).at("error").value("code", std::string());
      } catch (const json::exception&) {
      }
      if (res->status == 502 && code == "decode_unreachable") failed_at(*D, true, "unreachable from prefill");
      if (res->status >= 500 && res->status != 502 && res->status != 503 && res->status != 504)
        failed_at(*P, true, str_cat("HTTP ", res->status));
      r.status = res->status;
      r.set_content(res->body, "application/json");
      return;
    }
    try {
      const json a = json::parse(res->body);
      transfer_bytes += a.value("bytes", uint64_t(0));
      std::lock_guard<std::mutex> lk(time_mu);
      prefill_s += a.value("prefill_s", 0.0);
      transfer_s += a.value("transfer_s", 0.0);
    } catch (const json::exception&) {
    }
  }

  // 2. Decode, relayed.
  fwd.emplace(kTransferIdHeader, id);
  const std::string path = q.path;
  auto pipe = std::make_shared<Pipe>();
  ++D->requests;
  pipe->client = std::shared_ptr<httplib::Client>(client(*D, opt.timeout_s));
  pipe->upstream = std::thread([this, pipe = pipe.get(), c = pipe->client.get(), D, fwd, path, b = q.body] {
    httplib::Request up;
    up.method = "POST";
    up.path = path;
    up.headers = fwd;
    up.set_header("Content-Type", "application/json");
    up.body = b;
    up.response_handler = [&](const httplib::Response& res) {
      std::lock_guard<std::mutex> lk(pipe->mu);
      pipe->headers = true;
      pipe->status = res.status;
      pipe->content_type = res.get_header_value("Content-Type");
      pipe->cv.notify_all();
      return !pipe->cancel.load();
    };
    up.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (pipe->cancel.load()) return false;
      std::lock_guard<std::mutex> lk(pipe->mu);
      pipe->chunks.emplace_back(data, n);
      pipe->cv.notify_all();
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    const bool ok = c->send(up, res, err);
    --D->in_flight;
    // As for prefill: a read that timed out or broke mid-answer leaves the verdict to /health.
    if (!ok && !pipe->cancel.load()) failed_at(*D, err != httplib::Error::Read, httplib::to_string(err));
    std::lock_guard<std::mutex> lk(pipe->mu);
    pipe->done = true;
    if (!ok) pipe->error = httplib::to_string(err);
    pipe->cv.notify_all();
  });
  release.d = nullptr;  // the upstream thread releases D

  // Waits watching the client: one that leaves cancels the request (the decode instance sees
  // its connection close and drops it, as for a direct client). A streamed answer is watched
  // by its writes from the headers on.
  const int fd = connection_fd(q);
  std::unique_lock<std::mutex> lk(pipe->mu);
  auto wait_for_client = [&](auto ready) {
    while (!pipe->cv.wait_for(lk, std::chrono::milliseconds(200), ready)) {
      if (peer_gone(fd) || closed.load()) {
        pipe->cancel = true;
        lk.unlock();
        pipe->client->stop();
        throw ApiError(503, "the request was cancelled (client gone or router closing)");
      }
    }
  };
  wait_for_client([&] { return pipe->headers || pipe->done; });
  if (!pipe->headers) {
    ++failed;
    throw ApiError(502, str_cat("the decode instance ", D->url, " failed: ", pipe->error), "", "decode_failed");
  }
  if (!stream || pipe->status != 200) {
    wait_for_client([&] { return pipe->done; });
    std::string out;
    for (const std::string& s : pipe->chunks) out += s;
    if (!pipe->error.empty()) {
      ++failed;
      throw ApiError(502, str_cat("the decode instance ", D->url, " failed mid-answer: ", pipe->error), "",
                     "decode_failed");
    }
    r.status = pipe->status;
    r.set_content(out, pipe->content_type.empty() ? "application/json" : pipe->content_type);
    return;
  }
  lk.unlock();
  r.set_header("Cache-Control", "no-cache");
  r.set_header("X-Accel-Buffering", "no");
  r.set_chunked_content_provider(
      "text/event-stream",
      [this, pipe, D](size_t, httplib::DataSink& sink) {
        std::string tail;  // the last bytes written: did the stream end with [DONE]?
        for (;;) {
          std::unique_lock<std::mutex> l(pipe->mu);
          pipe->cv.wait_for(l, std::chrono::milliseconds(200), [&] { return !pipe->chunks.empty() || pipe->done; });
          while (!pipe->chunks.empty()) {
            std::string s = std::move(pipe->chunks.front());
            pipe->chunks.pop_front();
            l.unlock();
            if (!sink.write(s.data(), s.size())) {  // the client left
              pipe->cancel = true;
              return false;
            }
            tail = (tail + s).substr(tail.size() + s.size() > 64 ? tail.size() + s.size() - 64 : 0);
            l.lock();
          }
          if (pipe->done) {
            const bool complete = pipe->error.empty() && tail.find("[DONE]") != std::string::npos;
            const std::string why = pipe->error.empty() ? "the stream ended early" : pipe->error;
            l.unlock();
            if (!complete) {
              ++failed;
              const std::string e = sse_event(error_body(ApiError(
                  502, str_cat("the decode instance ", D->url, " failed mid-stream: ", why), "", "decode_failed")));
              sink.write(e.data(), e.size());
            }
            sink.done();
            return true;
          }
          if (closed.load()) {
            pipe->cancel = true;
            return false;
          }
        }
      },
      [pipe](bool) { pipe->cancel = true; });
}

void Router::Impl::relay(const httplib::Request& q, httplib::Response& r, bool post) {
  Instance* D = pick(decode);
  if (!D) throw ApiError(503, "no healthy decode instance", "", "no_instance");
  auto c = client(*D, opt.timeout_s);
  httplib::Headers h;
  if (q.has_header("Authorization")) h.emplace("Authorization", q.get_header_value("Authorization"));
  auto res = post ? c->Post(q.path.c_str(), h, q.body, "application/json") : c->Get(q.path.c_str(), h);
  if (!res) {
    failed_at(*D, res.error() != httplib::Error::Read, httplib::to_string(res.error()));
    throw ApiError(502, str_cat("the decode instance ", D->url, " failed: ", httplib::to_string(res.error())));
  }
  r.status = res->status;
  r.set_content(res->body, res->get_header_value("Content-Type"));
}

std::string Router::Impl::metrics() const {
  std::string s;
  auto line = [&](const char* name, const char* type, const char* help, const std::string& v) {
    s += str_cat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ", v, "\n");
  };
  line("dsv3_router_requests_total", "counter", "Generation requests received.", std::to_string(requests.load()));
  line("dsv3_router_failed_total", "counter", "Requests that failed at an instance.", std::to_string(failed.load()));
  line("dsv3_router_transfer_bytes_total", "counter", "KV transfer bytes shipped prefill to decode.",
       std::to_string(transfer_bytes.load()));
  {
    std::lock_guard<std::mutex> lk(const_cast<std::mutex&>(time_mu));
    line("dsv3_router_prefill_seconds_total", "counter", "Prefill time reported by prefill instances.",
         str_cat(prefill_s));
    line("dsv3_router_transfer_seconds_total", "counter", "KV transfer time reported by prefill instances.",
         str_cat(transfer_s));
  }
  s += "# HELP dsv3_router_instance_healthy 1 when the instance's /health answered 200.\n"
       "# TYPE dsv3_router_instance_healthy gauge\n";
  for (const auto* v : {&prefill, &decode})
    for (const auto& i : *v)
      s += str_cat("dsv3_router_instance_healthy{role=\"", i->role, "\",url=\"", i->url, "\"} ",
                   i->healthy.load() ? 1 : 0, "\n");
  s += "# HELP dsv3_router_instance_failures_total Requests an instance failed.\n"
       "# TYPE dsv3_router_instance_failures_total counter\n";
  for (const auto* v : {&prefill, &decode})
    for (const auto& i : *v)
      s += str_cat("dsv3_router_instance_failures_total{role=\"", i->role, "\",url=\"", i->url, "\"} ",
                   i->failures.load(), "\n");
  return s;
}

void Router::Impl::routes() {
  auto guarded = [this](auto f) {
    return [this, f](const httplib::Request& q, httplib::Response& r) {
      try {
        if (authorised(q, r)) f(q, r);
      } catch (const ApiError& e) {
        send_error(r, e);
      } catch (const std::exception& e) {
        send_error(r, ApiError(500, str_cat("router internal error: ", e.what())));
      }
    };
  };
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    send_error(r, ApiError(r.status, r.status == 404 ? str_cat("no such endpoint: ", q.path) : str_cat("HTTP ", r.status)));
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
    send_error(r, ApiError(500, "router internal error"));
  });
  svr.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    int np = 0, nd = 0;
    for (auto& i : prefill) np += i->healthy.load();
    for (auto& i : decode) nd += i->healthy.load();
    r.status = np > 0 && nd > 0 ? 200 : 503;
    r.set_content(dump(json{{"status", r.status == 200 ? "ok" : "unavailable"},
                            {"prefill_healthy", np},
                            {"decode_healthy", nd}}),
                  "application/json");
  });
  svr.Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& r) {
    r.set_content(metrics(), "text/plain; version=0.0.4; charset=utf-8");
  }));
  svr.Post("/v1/chat/completions",
           guarded([this](const httplib::Request& q, httplib::Response& r) { generate(q, r, "chat"); }));
  svr.Post("/v1/completions",
           guarded([this](const httplib::Request& q, httplib::Response& r) { generate(q, r, "completions"); }));
  svr.Get("/v1/models", guarded([this](const httplib::Request& q, httplib::Response& r) { relay(q, r, false); }));
  svr.Get("/v1/models/(.+)", guarded([this](const httplib::Request& q, httplib::Response& r) { relay(q, r, false); }));
  svr.Post("/tokenize", guarded([this](const httplib::Request& q, httplib::Response& r) { relay(q, r, true); }));
  svr.Post("/detokenize", guarded([this](const httplib::Request& q, httplib::Response& r) { relay(q, r, true); }));
}

Router::Router(RouterOptions o) : impl_(std::make_unique<Impl>(std::move(o))) {
  std::signal(SIGPIPE, SIG_IGN);
  Impl& m = *impl_;
  configure_server(m.svr, size_t(std::max(4, m.opt.threads)), m.opt.max_body_bytes);
  m.routes();
}

Router::~Router() { shutdown(); }

int Router::bind() {
  Impl& m = *impl_;
  const int port = bind_server(m.svr, m.opt.host, m.opt.port, "router");
  m.bound = true;
  return port;
}

void Router::start() {
  Impl& m = *impl_;
  DSV3_ASSERT(m.bound && !m.listener.joinable());
  m.health_round();
  m.health = std::thread([&m] { m.health_loop(); });
  m.listener = std::thread([&m] { m.svr.listen_after_bind(); });
}

void Router::shutdown() {
  Impl& m = *impl_;
  if (m.closed.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lk(m.stop_mu);
    m.stopping = true;
  }
  m.stop_cv.notify_all();
  if (m.bound) m.svr.stop();
  if (m.listener.joinable()) m.listener.join();
  if (m.health.joinable()) m.health.join();
}

}  // namespace dsv3::serve
