// `dsv3 router`: the OpenAI-compatible front of a disaggregated deployment (docs/serve.md
// "Deployment"; the instance side is serve/disagg.h). For each generation request it picks a
// healthy prefill instance and a healthy decode instance (fewest requests in flight, then
// round robin), asks the prefill instance to prefill the prompt and ship its latent cache to
// the decode instance, then relays the decode instance's answer — streamed chunk by chunk
// when the client asked for a stream.
//
// Faults: an instance that cannot be reached, fails, or stays silent past --timeout gives the
// client an error (a JSON error with a 5xx status, or an error event in a stream that had
// started) and is taken out of the choice until its /health answers 200 again (polled every
// --health-interval). Nothing an instance or a client does ends the router.
//
//   POST /v1/chat/completions, /v1/completions   disaggregated
//   GET  /v1/models, POST /tokenize, /detokenize  relayed to a decode instance
//   GET  /health                                  200 with ≥ 1 healthy instance of each role
//   GET  /metrics                                 the router's counters (Prometheus text)
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace dsv3::serve {

struct RouterOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                       // 0: any free port (bind() returns it)
  std::vector<std::string> prefill;      // base URLs, http://host:port
  std::vector<std::string> decode;
  double timeout_s = 60;                 // an instance silent this long fails the request
  double connect_timeout_s = 3;
  double health_interval_s = 1;
  std::string api_key;                   // non-empty: "Authorization: Bearer KEY" required
  size_t max_body_bytes = size_t(8) << 20;
  int threads = 64;
};

class Router {
 public:
  explicit Router(RouterOptions o);
  ~Router();  // shutdown()
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  int bind();    // throws dsv3::Error when the address cannot be bound; returns the port
  void start();  // one health round, then serves and polls health on background threads
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::serve
