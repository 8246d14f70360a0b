// dsv3 bench serve (--model DIR | --url http://127.0.0.1:PORT) [--concurrency 1,4,16,32]
//                  [--prompt-tokens 128] [--max-tokens 128] [--requests-per-level K]
//                  [--threads T] [--format table|json]
//   Serving throughput and latency through the HTTP server, as vLLM's benchmark_serving
//   measures them: for each concurrency level, that many client threads send streamed
//   /v1/completions requests (prompts of exactly --prompt-tokens random token ids, distinct
//   per request so the prefix cache never helps; "ignore_eos": true so every request makes
//   --max-tokens tokens) until K requests are done. Per request: TTFT (send → first token)
//   and TPOT (the mean gap between its later tokens); per level: aggregate output tokens/s
//   and TTFT / TPOT p50 and p99.
//   With --model the benchmark starts `dsv3 serve` itself (a child on a free loopback port,
//   stopped with SIGTERM at the end) and first runs `dsv3 bench decode` on the same model at
//   the mean context of a request: a single stream through the server (1 / TPOT p50 at
//   concurrency 1) is reported as a fraction of it — the cost of the server and the engine
//   over a bare decode loop.
// Loopback only; every wait is bounded.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "benches.h"
#include "cli/model_args.h"
#include "core/check.h"
#include "core/clock.h"

namespace dsv3::bench {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr double kStartTimeoutS = 600;     // model load of the child server
constexpr double kRequestTimeoutS = 1800;  // one request's read timeout
constexpr double kStopTimeoutS = 60;       // SIGTERM → exit

struct ServeBenchOpts {
  std::string model, url, concurrency = "1,4,16,32", format = "table", batch_mode = "invariant";
  std::string activations = "f32", speculative = "auto", kv_cache = "bf16";
  int64_t prompt_tokens = 128, max_tokens = 128, requests = 0;
  int threads = 0;
  bool no_decode = false;
};

// ---- child processes -----------------------------------------------------------------------

std::string self_exe() { return fs::read_symlink("/proc/self/exe").string(); }

// fork + exec of argv with stdin from /dev/null, one of stdout / stderr into a pipe (returned
// in *fd) and the other to /dev/null. The child gets SIGTERM if this process dies.
pid_t spawn(const std::vector<std::string>& argv, bool capture_stderr, int* fd) {
  int p[2];
  DSV3_CHECK(pipe2(p, O_CLOEXEC) == 0, "bench serve: pipe failed");
  const pid_t pid = fork();
  DSV3_CHECK(pid >= 0, "bench serve: fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    const int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(capture_stderr ? null : p[1], 1);
    dup2(capture_stderr ? p[1] : null, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(p[1]);
  *fd = p[0];
  return pid;
}

// Waits up to timeout_s for pid; SIGKILL after that. Returns the exit status (-1: killed).
int wait_child(pid_t pid, double timeout_s) {
  const double t0 = now_s();
  int st = 0;
  while (now_s() - t0 < timeout_s) {
    if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  return -1;
}

// `dsv3 serve` as a child: its stderr read by a thread (kept for error messages), the port
// taken from its "listening on" line. The destructor stops it (SIGTERM, then SIGKILL).
class ChildServer {
 public:
  ChildServer(const std::vector<std::string>& argv) {
    pid_ = spawn(argv, /*capture_stderr=*/true, &fd_);
    reader_ = std::thread([this] {
      std::string buf;
      char tmp[4096];
      ssize_t n;
      while ((n = read(fd_, tmp, sizeof tmp)) > 0) {
        std::lock_guard<std::mutex> lk(mu_);
        log_.append(tmp, size_t(n));
        if (log_.size() > (1u << 20)) log_.erase(0, log_.size() - (1u << 19));
        std::smatch m;
        static const std::regex listening(R"(listening on http://127\.0\.0\.1:(\d+))");
        if (port_ == 0 && std::regex_search(log_, m, listening)) port_ = std::stoi(m[1]);
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> lk(mu_);
      eof_ = true;
      cv_.notify_all();
    });
  }
  ~ChildServer() { stop(); }

  // The port once the server listens; throws when it exits first or times out.
  int wait_port(double timeout_s) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, std::chrono::duration<double>(timeout_s), [&] { return port_ > 0 || eof_; });
    DSV3_CHECK(port_ > 0, "bench serve: dsv3 serve did not start:\n", log_);
    return port_;
  }
  std::string log_tail() {
    std::lock_guard<std::mutex> lk(mu_);
    return log_.substr(log_.size() > 3000 ? log_.size() - 3000 : 0);
  }
  bool running() { return pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0; }
  // SIGTERM and wait; returns the exit status (0: a clean drain).
  int stop() {
    int code = 0;
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      code = wait_child(pid_, kStopTimeoutS);
      pid_ = -1;
    }
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) close(fd_), fd_ = -1;
    return code;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string log_;
  int port_ = 0;
  bool eof_ = false;
};

// `dsv3 bench decode --model DIR --context C --json`: batch-1 tokens/s at context C.
double bench_decode_tps(const std::string& model, int64_t context, int threads,
                        const std::string& activations, const std::string& kv_cache) {
  std::vector<std::string> argv = {self_exe(), "bench", "decode", "--model", model, "--context",
                                   std::to_string(context), "--steps", "32", "--json",
                                   "--activations", activations, "--kv-cache", kv_cache};
  if (threads > 0) argv.insert(argv.end(), {"--threads", std::to_string(threads)});
  int fd = -1;
  const pid_t pid = spawn(argv, /*capture_stderr=*/false, &fd);
  std::string out;
  char tmp[4096];
  ssize_t n;
  while ((n = read(fd, tmp, sizeof tmp)) > 0) out.append(tmp, size_t(n));
  close(fd);
  const int code = wait_child(pid, 60);
  DSV3_CHECK(code == 0, "bench serve: dsv3 bench decode failed (exit ", code, "): ", out);
  const size_t brace = out.find('{');
  DSV3_CHECK(brace != std::string::npos, "bench serve: no JSON from dsv3 bench decode: ", out);
  const json j = json::parse(out.substr(brace));
  return j.at("runs").at(0).at("tokens_per_s").get<double>();
}

// ---- one request ---------------------------------------------------------------------------

struct Sample {
  bool ok = false;
  std::string error;
  int64_t tokens = 0;       // completion tokens (from the usage chunk)
  double ttft = 0;          // send → first token, s
  double tpot = 0;          // (last − first token) / (tokens − 1), s; 0 with one token
  double end = 0;           // finish, s since the level began
};

// One streamed /v1/completions request; each token arrives in its own chunk because it asks
// for "logprobs": 0 (without it a token with no printable text yet — or any token of a model
// without tokenizer.json — makes no chunk).
Sample run_request(httplib::Client& cli, const std::vector<int32_t>& prompt, int64_t max_tokens,
                   double level_t0) {
  Sample s;
  json body = {{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
               {"ignore_eos", true}, {"logprobs", 0}, {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string buf;
  double first = 0, last = 0;
  int64_t seen = 0;
  bool done = false;
  const double t0 = now_s();
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    const double now = now_s();
    buf.append(data, len);
    size_t cut;
    while ((cut = buf.find("\n\n")) != std::string::npos) {
      const std::string ev = buf.substr(0, cut);
      buf.erase(0, cut + 2);
      if (ev.rfind("data: ", 0) != 0) continue;
      const std::string payload = ev.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      const json j = json::parse(payload, nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) {
        s.error = j["error"].value("message", "error");
        return false;
      }
      if (j.contains("usage") && j["usage"].is_object()) s.tokens = j["usage"].value("completion_tokens", 0);
      for (const json& c : j.value("choices", json::array())) {
        const json& lp = c.contains("logprobs") ? c["logprobs"] : json();
        const int64_t k = lp.is_object() && lp.contains("tokens") ? int64_t(lp["tokens"].size()) : 0;
        if (k == 0) continue;
        if (seen == 0) first = now;
        last = now;
        seen += k;
      }
    }
    return true;
  };
  const httplib::Result res = cli.send(req);
  s.end = now_s() - level_t0;
  if (!res) {
    if (s.error.empty()) s.error = httplib::to_string(res.error());
    return s;
  }
  if (res->status != 200) {
    s.error = str_cat("HTTP ", res->status, " ", buf.substr(0, 300));
    return s;
  }
  if (!done && s.error.empty()) s.error = "the stream ended without [DONE]";
  if (s.tokens == 0) s.tokens = seen;
  s.ok = s.error.empty() && seen > 0;
  if (seen == 0 && s.error.empty()) s.error = "no tokens";
  s.ttft = first - t0;
  s.tpot = seen > 1 ? (last - first) / double(seen - 1) : 0;
  return s;
}

// ---- levels --------------------------------------------------------------------------------

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t k = size_t(std::ceil(p * double(v.size())));
  return v[std::min(v.size() - 1, k > 0 ? k - 1 : 0)];
}

struct Level {
  int64_t concurrency = 0, requests = 0, failed = 0, tokens = 0;
  double wall_s = 0, tps = 0, ttft_p50 = 0, ttft_p99 = 0, tpot_p50 = 0, tpot_p99 = 0;
  std::string first_error;
};

Level run_level(const std::string& host, int port, int64_t conc, int64_t n_requests,
                const ServeBenchOpts& o, int64_t vocab, uint32_t& seed) {
  // Distinct random prompts (the prefix cache finds nothing to share).
  std::vector<std::vector<int32_t>> prompts(size_t(n_requests), std::vector<int32_t>(size_t(o.prompt_tokens)));
  for (auto& p : prompts)
    for (auto& id : p) id = int32_t(lcg(seed) % uint32_t(vocab));
  std::vector<Sample> samples(static_cast<size_t>(n_requests));
  std::atomic<int64_t> next{0};
  // Each client connects (a keep-alive GET /health) before the clock starts: a burst of
  // connects can overflow the server's listen backlog and cost a 1 s SYN retransmit, which
  // is the network's cost, not the engine's.
  std::mutex mu;
  std::condition_variable cv;
  int64_t connected = 0;
  double t0 = 0;
  bool go = false;
  std::vector<std::thread> clients;
  for (int64_t c = 0; c < conc; ++c) {
    clients.emplace_back([&] {
      httplib::Client cli(host, port);
      cli.set_connection_timeout(10);
      cli.set_read_timeout(time_t(kRequestTimeoutS));
      cli.set_write_timeout(60);
      cli.set_keep_alive(true);
      cli.set_tcp_nodelay(true);  // else Nagle holds the body behind the headers (40 ms)
      cli.Get("/health");
      {
        std::unique_lock<std::mutex> lk(mu);
        if (++connected == conc) {
          t0 = now_s();
          go = true;
          cv.notify_all();
        }
        cv.wait(lk, [&] { return go; });
      }
      for (int64_t i; (i = next.fetch_add(1)) < n_requests;)
        samples[size_t(i)] = run_request(cli, prompts[size_t(i)], o.max_tokens, t0);
    });
  }
  for (auto& t : clients) t.join();
  Level L;
  L.concurrency = conc;
  L.requests = n_requests;
  std::vector<double> ttft, tpot;
  for (const Sample& s : samples) {
    if (!s.ok) {
      ++L.failed;
      if (L.first_error.empty()) L.first_error = s.error;
      continue;
    }
    L.tokens += s.tokens;
    L.wall_s = std::max(L.wall_s, s.end);
    ttft.push_back(s.ttft);
    if (s.tokens > 1) tpot.push_back(s.tpot);
  }
  L.tps = L.wall_s > 0 ? double(L.tokens) / L.wall_s : 0;
  L.ttft_p50 = percentile(ttft, 0.5);
  L.ttft_p99 = percentile(ttft, 0.99);
  L.tpot_p50 = percentile(tpot, 0.5);
  L.tpot_p99 = percentile(tpot, 0.99);
  return L;
}

void wait_health(const std::string& host, int port, double timeout_s, ChildServer* child) {
  httplib::Client cli(host, port);
  cli.set_connection_timeout(2);
  cli.set_read_timeout(5);
  const double t0 = now_s();
  for (;;) {
    const auto r = cli.Get("/health");
    if (r && r->status == 200) return;
    DSV3_CHECK(!child || child->running(), "bench serve: dsv3 serve exited while loading:\n",
               child->log_tail());
    DSV3_CHECK(now_s() - t0 < timeout_s, "bench serve: /health not 200 after ", timeout_s, " s");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void run_serve_bench(const ServeBenchOpts& o) {
  DSV3_CHECK(o.model.empty() != o.url.empty(), "give exactly one of --model and --url");
  DSV3_CHECK(o.prompt_tokens >= 1 && o.prompt_tokens <= 1 << 20, "--prompt-tokens must be in [1, 2^20]");
  DSV3_CHECK(o.max_tokens >= 1 && o.max_tokens <= 1 << 20, "--max-tokens must be in [1, 2^20]");
  DSV3_CHECK(o.requests >= 0 && o.requests <= 100000, "--requests-per-level must be in [0, 100000]");
  DSV3_CHECK(o.format == "table" || o.format == "json", "--format: expected table or json");
  std::vector<int64_t> levels;
  for (int32_t c : cli::parse_id_list(o.concurrency, "--concurrency")) {
    DSV3_CHECK(c >= 1 && c <= 1024, "--concurrency entries must be in [1, 1024], got ", c);
    levels.push_back(c);
  }
  DSV3_CHECK(!levels.empty(), "--concurrency: give at least one level");
  const int64_t max_conc = *std::max_element(levels.begin(), levels.end());

  std::string host = "127.0.0.1";
  int port = 0;
  int64_t vocab = 256;  // --url: ids every byte-level vocabulary has (the 256 bytes + specials)
  double decode_tps = 0;
  const int64_t decode_ctx = o.prompt_tokens + o.max_tokens / 2;
  std::unique_ptr<ChildServer> child;
  if (!o.model.empty()) {
    std::ifstream f(fs::path(o.model) / "config.json");
    DSV3_CHECK(f.good(), "--model: '", o.model, "' has no config.json");
    vocab = json::parse(f).at("vocab_size").get<int64_t>();
    if (!o.no_decode) {
      std::fprintf(stderr, "bench serve: dsv3 bench decode at context %lld ...\n", (long long)decode_ctx);
      decode_tps = bench_decode_tps(o.model, decode_ctx, o.threads, o.activations, o.kv_cache);
    }
    // Context: one request, rounded up to whole cache blocks; every level runs at once.
    const int64_t ctx = (o.prompt_tokens + o.max_tokens + 15) / 16 * 16;
    std::vector<std::string> argv = {self_exe(), "serve", "--model", o.model, "--host", host, "--port", "0",
                                     "--max-running", std::to_string(max_conc), "--context", std::to_string(ctx),
                                     "--batch-mode", o.batch_mode, "--activations", o.activations,
                                     "--kv-cache", o.kv_cache,
                                     "--speculative", o.speculative,
                                     "--no-request-log", "--drain-timeout", "10"};
    if (o.threads > 0) argv.insert(argv.end(), {"--threads", std::to_string(o.threads)});
    std::fprintf(stderr, "bench serve: starting dsv3 serve --model %s ...\n", o.model.c_str());
    child = std::make_unique<ChildServer>(argv);
    port = child->wait_port(kStartTimeoutS);
  } else {
    static const std::regex url(R"(http://(127\.0\.0\.1|localhost|\[::1\]):(\d+)/?)");
    std::smatch m;
    DSV3_CHECK(std::regex_match(o.url, m, url), "--url: expected http://127.0.0.1:PORT (loopback only), got '",
               o.url, "'");
    host = m[1] == "[::1]" ? "::1" : std::string(m[1]);
    port = std::stoi(m[2]);
  }
  const double load0 = now_s();
  wait_health(host, port, kStartTimeoutS, child.get());
  std::fprintf(stderr, "bench serve: server ready on port %d (%.1f s)\n", port, now_s() - load0);

  // Warm-up: faults the weights in and sizes the engine's scratch.
  uint32_t seed = 20250101;
  {
    ServeBenchOpts w = o;
    w.max_tokens = std::min<int64_t>(o.max_tokens, 4);
    const Level L = run_level(host, port, 1, 1, w, vocab, seed);
    DSV3_CHECK(L.failed == 0, "bench serve: the warm-up request failed: ", L.first_error);
  }
  std::vector<Level> rows;
  for (int64_t c : levels) {
    const int64_t n = o.requests > 0 ? o.requests : c;
    std::fprintf(stderr, "bench serve: concurrency %lld, %lld requests ...\n", (long long)c, (long long)n);
    rows.push_back(run_level(host, port, c, n, o, vocab, seed));
    if (rows.back().failed)
      std::fprintf(stderr, "bench serve: %lld requests failed, e.g.: %s\n", (long long)rows.back().failed,
                   rows.back().first_error.c_str());
  }
  if (child) {
    const int code = child->stop();
    if (code != 0) std::fprintf(stderr, "bench serve: dsv3 serve exited with %d\n%s", code, child->log_tail().c_str());
  }

  const Level* one = nullptr;
  for (const Level& L : rows)
    if (L.concurrency == 1 && L.tpot_p50 > 0) one = &L;
  const double single_tps = one ? 1.0 / one->tpot_p50 : 0;
  if (o.format == "json") {
    json j = {{"bench", "serve"}, {"model", o.model.empty() ? o.url : o.model}, {"prompt_tokens", o.prompt_tokens},
              {"max_tokens", o.max_tokens}, {"threads", o.threads}, {"batch_mode", o.batch_mode},
              {"activations", o.activations}, {"speculative", o.speculative}, {"kv_cache", o.kv_cache}};
    if (decode_tps > 0) j["bench_decode"] = {{"context", decode_ctx}, {"tokens_per_s", decode_tps}};
    if (single_tps > 0) j["single_stream_tokens_per_s"] = single_tps;
    if (single_tps > 0 && decode_tps > 0) j["single_stream_of_bench_decode"] = single_tps / decode_tps;
    json lv = json::array();
    for (const Level& L : rows)
      lv.push_back({{"concurrency", L.concurrency}, {"requests", L.requests}, {"failed", L.failed},
                    {"output_tokens", L.tokens}, {"wall_s", L.wall_s}, {"output_tokens_per_s", L.tps},
                    {"ttft_p50_s", L.ttft_p50}, {"ttft_p99_s", L.ttft_p99}, {"tpot_p50_s", L.tpot_p50},
                    {"tpot_p99_s", L.tpot_p99}});
    j["levels"] = lv;
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("dsv3 serve: %s, prompts of %lld tokens, %lld output tokens each (ignore_eos), %s batch, "
              "%s activations, speculative %s, %s KV cache\n",
              o.model.empty() ? o.url.c_str() : o.model.c_str(), (long long)o.prompt_tokens,
              (long long)o.max_tokens, o.batch_mode.c_str(), o.activations.c_str(),
              o.speculative.c_str(), o.kv_cache.c_str());
  std::printf("%11s %8s %6s %12s %12s %12s %12s %12s %14s\n", "concurrency", "requests", "failed",
              "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "tok/s/stream");
  for (const Level& L : rows)
    std::printf("%11lld %8lld %6lld %12.2f %12.1f %12.1f %12.2f %12.2f %14.2f\n", (long long)L.concurrency,
                (long long)L.requests, (long long)L.failed, L.tps, L.ttft_p50 * 1e3, L.ttft_p99 * 1e3,
                L.tpot_p50 * 1e3, L.tpot_p99 * 1e3, L.tpot_p50 > 0 ? 1.0 / L.tpot_p50 : 0.0);
  if (decode_tps > 0 && single_tps > 0)
    std::printf("single stream through the server: %.2f tokens/s (1 / TPOT p50) = %.1f%% of dsv3 bench "
                "decode at context %lld (%.2f tokens/s)\n",
                single_tps, 100.0 * single_tps / decode_tps, (long long)decode_ctx, decode_tps);
}

}  // namespace

void add_serve(CLI::App& bench) {
  auto o = std::make_shared<ServeBenchOpts>();
  CLI::App* s = bench.add_subcommand("serve", "Throughput and TTFT / TPOT of dsv3 serve at several concurrencies");
  s->add_option("--model", o->model, "Model directory: start `dsv3 serve` on it (a child on a free loopback port)");
  s->add_option("--url", o->url, "A running server instead, e.g. http://127.0.0.1:8080");
  s->add_option("--concurrency", o->concurrency, "Client threads per level (default 1,4,16,32)");
  s->add_option("--prompt-tokens", o->prompt_tokens, "Prompt length in tokens (random ids; default 128)");
  s->add_option("--max-tokens", o->max_tokens, "Output tokens per request (ignore_eos; default 128)");
  s->add_option("--requests-per-level", o->requests, "Requests per level (default: the concurrency)");
  s->add_option("--threads", o->threads, "Compute threads of the server and bench decode (default: all cores)");
  s->add_option("--batch-mode", o->batch_mode, "The server's --batch-mode: invariant (default) | fast");
  s->add_option("--activations", o->activations, "The server's --activations: f32 (default) | bf16");
  s->add_option("--speculative", o->speculative, "The server's --speculative: auto (default) | mtp | off");
  s->add_option("--kv-cache", o->kv_cache, "The server's --kv-cache: bf16 (default) | fp8 | f32");
  s->add_flag("--no-decode", o->no_decode, "Skip the dsv3 bench decode comparison");
  s->add_option("--format", o->format, "table (default) | json");
  s->callback([o] { run_serve_bench(*o); });
}

}  // namespace dsv3::bench
