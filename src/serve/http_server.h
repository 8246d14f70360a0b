// The HTTP front of `dsv3 serve` (cpp-httplib): OpenAI-compatible endpoints over the serving
// engine. It turns requests into Engine::submit calls and Stream events into responses and
// SSE chunks (the wire format lives in openai_api.h); it never touches the model.
//
//   GET  /                      the chat page (src/serve/chat_page.html, compiled in)
//   GET  /health                200 {"status":"ok"}; 503 "loading" / "draining"
//   GET  /v1/models[/NAME]      the served model
//   POST /v1/chat/completions   chat (DeepSeek-V3 template), streamed with "stream": true
//   POST /v1/completions        text / token-id prompts
//   POST /tokenize, /detokenize
//   GET  /metrics               Prometheus text format
//   POST /v1/disagg/prefill     --role prefill: prefill and push to a decode instance
//   POST /v1/disagg/kv          --role decode: receive a prefill (serve/kv_transfer.h)
//   GET  /v1/disagg/info        --role decode: the transfer port (serve/kv_socket.h), layout
//
// The listener is bound before the model loads (so /health can answer 503 "loading"); the
// engine is handed over with set_ready(). Every client error is a JSON {"error": {...}} with
// a 4xx status; nothing a client sends crashes the server.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace dsv3::tok { class Tokenizer; }

namespace dsv3::serve {

class Engine;

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                        // 0: any free port (bind() returns it)
  std::string served_model_name = "dsv3";
  std::string api_key;                    // non-empty: "Authorization: Bearer KEY" required
                                          // (except GET /, /health and CORS preflights)
  std::vector<std::string> cors_origins;  // allowed Origins; "*" = any; empty = no CORS
  size_t max_body_bytes = size_t(8) << 20;  // larger bodies: 413
  int threads = 64;                       // handler threads = concurrent connections served
  // Prefill/decode disaggregation (serve/disagg.h, docs/serve.md "Deployment"). "prefill"
  // adds POST /v1/disagg/prefill; "decode" adds POST /v1/disagg/kv and serves generation
  // requests that carry X-Dsv3-Transfer-Id from the transferred prefill; "mixed" neither.
  // Every role also serves ordinary requests.
  std::string role = "mixed";
  double transfer_timeout_s = 30;         // prefill: the push to a decode instance; decode:
                                          // a sender silent this long is dropped
  int transfer_port = 0;                  // decode: the KV transfer port (0: any free one,
                                          // named by GET /v1/disagg/info)
  int fault_corrupt_transfers = 0;        // prefill, testing only: damage this many pushes
  double pending_ttl_s = 120;             // decode: an unclaimed transfer is dropped after
  int64_t pending_max_bytes = int64_t(4) << 30;  // decode: unclaimed transfers held at most
};

class HttpServer {
 public:
  explicit HttpServer(HttpOptions o);
  ~HttpServer();  // shutdown()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; returns the port (the chosen one when port is 0). Throws
  // dsv3::Error when the address cannot be bound.
  int bind();
  // Serves on a background thread (after bind()).
  void start();
  // The model is loaded: answer requests from now on. Both must outlive shutdown().
  // tokenizer may be null (token-id prompts only).
  void set_ready(Engine* engine, const tok::Tokenizer* tokenizer);
  // Stops the listener and waits for the handler threads; requests still streaming are
  // cancelled and end. Idempotent.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::serve
