// `dsv3 serve`: the OpenAI-compatible HTTP server (serve/http_server.h) over the batching
// engine (serve/engine.h). The socket is bound first, so /health answers 503 "loading" while
// the model loads; SIGTERM / SIGINT stop admitting, drain the running requests (up to
// --drain-timeout), close the listener and exit 0.
#include <CLI/CLI.hpp>
#include <pthread.h>
#include <unistd.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "commands.h"
#include "cli/model_args.h"
#include "core/check.h"
#include "core/clock.h"
#include "core/parallel.h"
#include "model/config.h"
#include "model/model.h"
#include "parallel/comm.h"
#include "serve/ep_step.h"
#include "serve/rebalance.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/openai_api.h"
#include "serve/router.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {
namespace {

constexpr int64_t kDefaultDraft = 1;  // the engine drafts one token per step (one MTP module)

struct ServeArgs {
  std::string model, host = "127.0.0.1", served_name, api_key, api_key_file, cors;
  std::string batch_mode = "invariant", speculative = "auto", activations = "f32",
              kv_cache = "bf16", role = "mixed", weights = "huge";
  double transfer_timeout = 30;
  int fault_corrupt_transfers = 0, transfer_port = 0;
  std::string expert_load_out, expert_load_in;
  int port = 8080, threads = 0, ep = 1;
  int64_t draft = 0, max_body_mb = 8;
  double drain_timeout = 30;
  bool no_prefix_cache = false, no_request_log = false;
  serve::EngineOptions engine;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

std::string read_api_key(const ServeArgs& a) {
  DSV3_CHECK(a.api_key.empty() || a.api_key_file.empty(), "give one of --api-key and --api-key-file");
  std::string key = a.api_key;
  if (!a.api_key_file.empty()) {
    std::ifstream f(a.api_key_file);
    DSV3_CHECK(f.good(), "--api-key-file: cannot read '", a.api_key_file, "'");
    std::getline(f, key);
    while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t')) key.pop_back();
    DSV3_CHECK(!key.empty(), "--api-key-file: '", a.api_key_file, "' holds no key on its first line");
  }
  return key;
}

// SIGINT / SIGTERM are blocked in every thread and taken by one thread with sigwait, so a
// signal never interrupts a kernel or a handler halfway; the main thread then drains.
struct Signals {
  sigset_t set;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::atomic<bool> ready{false};

  Signals() {
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread starts: they inherit it
  }
  void start_waiter() {
    std::thread([this] {
      for (int n = 0;; ++n) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (!ready.load() || n > 0) {  // nothing to drain yet, or a second signal: go now
          std::fprintf(stderr, "dsv3 serve: %s, exiting\n",
                       ready.load() ? "second signal" : "interrupted while loading");
          std::_Exit(ready.load() ? 1 : 0);
        }
        std::fprintf(stderr, "dsv3 serve: %s: draining\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
        {
          std::lock_guard<std::mutex> lk(mu);
          stop = true;
        }
        cv.notify_all();
      }
    }).detach();
  }
  void wait() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return stop; });
  }
};

std::string url(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  return str_cat("http://", v6 ? "[" : "", host, v6 ? "]" : "", ":", port);
}

// Expert-parallel serving (`mpirun -np P dsv3 serve --ep P`; serve/ep_step.h): the layout is
// checked on every rank from the same inputs before any work, so a bad one is refused by all
// of them with the same message (dist::CollectiveError: each prints, exits 1).
std::string bytes_text(int64_t b) {
  char buf[64];
  if (b >= int64_t(1) << 30) std::snprintf(buf, sizeof buf, "%.2f GB", double(b) * 1e-9);
  else std::snprintf(buf, sizeof buf, "%.2f MB", double(b) * 1e-6);
  return buf;
}

// One line per rank: its experts and the weight bytes it holds, beside one process's.
void log_ep_share(const Model& m, const dist::Comm& world, bool placed, double seconds) {
  const int64_t held = m.held_weight_bytes(), all = held + m.unbound_expert_bytes();
  const std::string experts =
      placed ? str_cat(m.held_experts(), " routed experts over the MoE layers (the start placement)")
             : str_cat("routed experts [", m.first_expert(), ", ", m.last_expert(), ") of each MoE layer");
  std::fprintf(stderr, "dsv3 serve: rank %d/%d: %s: %s of weights held (one process: %s), resident in %.1f s\n",
               world.rank(), world.size(), experts.c_str(), bytes_text(held).c_str(), bytes_text(all).c_str(),
               seconds);
  std::fflush(stderr);
}

// Redundant experts: the placement every rank applies before reading its experts' pages
// (serve/rebalance.h start_placement; checked in check_ep_layout). Returns how it was made.
serve::PlacementReport place_at_start(Model& m, const ServeArgs& a) {
  serve::PlacementReport r;
  const std::vector<ExpertPlacement> pl =
      serve::start_placement(m.config(), a.ep, a.engine.redundant_experts, a.expert_load_in, &r);
  if (!pl.empty()) m.set_expert_placement(pl);
  return r;
}

void check_ep_layout(const ServeArgs& a, SpecMode spec, const dist::Comm& world) {
  auto refuse = [](auto&&... parts) { throw dist::CollectiveError(str_cat(parts...)); };
  if (a.ep < 1) refuse("--ep must be >= 1, got ", a.ep);
  if (a.ep != world.size()) {
    if (world.size() == 1)
      refuse("--ep ", a.ep, " needs ", a.ep, " processes: launch with mpirun -np ", a.ep,
             " dsv3 serve --ep ", a.ep, " ...", dist::mpi_built() ? "" : " (this dsv3 was built without MPI)");
    refuse("--ep ", a.ep, " must equal the number of processes (mpirun -np ", world.size(),
           "): run mpirun -np N dsv3 serve --ep N");
  }
  const serve::EngineOptions& e = a.engine;
  if (a.ep == 1 && (e.redundant_experts != 0 || e.rebalance_every != 0 || !a.expert_load_in.empty()))
    refuse("--redundant-experts, --rebalance-every and --expert-load place experts over the ranks of "
           "expert-parallel serving: run mpirun -np N dsv3 serve --ep N (N > 1)");
  if (a.ep == 1) return;
  const ModelConfig c = load_model_config((std::filesystem::path(a.model) / "config.json").string());
  if (e.redundant_experts < 0) refuse("--redundant-experts must be >= 0, got ", e.redundant_experts);
  if (e.rebalance_every < 0) refuse("--rebalance-every must be >= 0, got ", e.rebalance_every);
  if ((c.n_routed_experts + e.redundant_experts) % a.ep != 0)
    refuse("--redundant-experts ", e.redundant_experts, ": the ", c.n_routed_experts, " routed experts plus ",
           e.redundant_experts, " copies must divide evenly over the ", a.ep, " ranks (every rank holds the same "
           "number of expert slots)");
  try {  // the start placement is computed on every rank from the same inputs: so is its refusal
    serve::start_placement(c, a.ep, e.redundant_experts, a.expert_load_in, nullptr);
  } catch (const Error& ex) {
    refuse(a.expert_load_in.empty() ? "" : "--expert-load: ", ex.what());
  }
  if (c.n_routed_experts <= 0 || c.num_hidden_layers <= c.first_k_dense_replace)
    refuse("--ep ", a.ep, ": the model in '", a.model, "' has no MoE layer to split");
  if (c.n_routed_experts % a.ep != 0)
    refuse("--ep ", a.ep, ": n_routed_experts (", c.n_routed_experts, ") must be divisible by --ep "
           "(each rank holds an equal block of every MoE layer's routed experts)");
  if (a.role != "mixed")
    refuse("--role ", a.role, " is not supported with --ep ", a.ep, " (a transferred cache would "
           "reach rank 0's pool only); run disaggregated instances without --ep");
  if (spec == SpecMode::Mtp)
    refuse("--speculative mtp is not supported with --ep ", a.ep, " (the MTP drafts run outside "
           "the broadcast step); use --speculative off (auto decodes plainly under --ep)");
  if (!dist::thread_serialized())
    refuse("--ep ", a.ep, ": this MPI library does not provide MPI_THREAD_SERIALIZED, which the "
           "server's engine thread needs to call MPI");
}

// Ranks ≥ 1 of an expert-parallel server: the model (this rank's experts only), then every
// step rank 0 broadcasts until its stop message. No HTTP, no tokenizer.
void run_ep_follower(const ServeArgs& a, const ModelOptions& mo, const dist::Comm& world) {
  Model model(a.model, mo);
  const bool placed = place_at_start(model, a).slots > 0;
  const double t0 = now_s();
  model.make_resident(Model::Residency::Mapped);  // EP rebinds experts from the mapping
  log_ep_share(model, world, placed, now_s() - t0);
  const int64_t steps = serve::ep_follow(model, world);
  std::fprintf(stderr, "dsv3 serve: rank %d/%d: stopped after %lld steps\n", world.rank(),
               world.size(), (long long)steps);
}

void run_serve(ServeArgs& a) {
  DSV3_CHECK(a.batch_mode == "invariant" || a.batch_mode == "fast", "--batch-mode: expected "
             "'invariant' or 'fast', got '", a.batch_mode, "'");
  const SpecMode spec = parse_spec_mode(a.speculative);
  DSV3_CHECK(a.draft >= 0 && a.draft <= 16, "--draft must be in [1, 16], got ", a.draft);
  DSV3_CHECK(a.draft == 0 || spec != SpecMode::Off, "--draft needs --speculative mtp or auto");
  DSV3_CHECK(a.port >= 0 && a.port <= 65535, "--port must be in [0, 65535], got ", a.port);
  DSV3_CHECK(a.drain_timeout >= 0, "--drain-timeout must be >= 0, got ", a.drain_timeout);
  DSV3_CHECK(a.max_body_mb >= 1, "--max-body-mb must be >= 1, got ", a.max_body_mb);
  DSV3_CHECK(a.role == "mixed" || a.role == "prefill" || a.role == "decode",
             "--role: expected 'mixed', 'prefill' or 'decode', got '", a.role, "'");
  DSV3_CHECK(a.transfer_timeout > 0, "--transfer-timeout must be > 0, got ", a.transfer_timeout);
  DSV3_CHECK(a.fault_corrupt_transfers >= 0, "--fault-corrupt-transfers must be >= 0");
  DSV3_CHECK(std::filesystem::exists(std::filesystem::path(a.model) / "config.json"), "--model: '",
             a.model, "' has no config.json (not a model directory)");
  if (a.threads > 0) set_num_threads(a.threads);
  // Never freed: its sigwait thread lives until the process exits. Made before MPI starts its
  // own threads, so that they inherit the blocked SIGINT/SIGTERM too (else a signal to rank 0
  // lands in one of them and kills the process instead of draining it).
  Signals& signals = *new Signals;
  // Under mpirun this initialises MPI (MPI_THREAD_SERIALIZED).
  const dist::Comm& world = dist::Comm::world();
  check_ep_layout(a, spec, world);
  const bool ep = a.ep > 1;
  SpecMode spec_run = spec;
  if (ep && spec == SpecMode::Auto) {
    spec_run = SpecMode::Off;
    if (world.rank() == 0)
      std::fprintf(stderr, "dsv3 serve: --ep %d: speculative decoding is off (auto decodes plainly "
                   "under expert parallelism)\n", a.ep);
  }
  if (ep && world.rank() != 0) {
    ModelOptions mo;
    mo.with_mtp = false;
    mo.bf16_activations = cli::parse_activations(a.activations);
    mo.kv_cache = CacheDtype(cli::parse_kv_cache(a.kv_cache));
    mo.ep = &world;
    return run_ep_follower(a, mo, world);
  }

  serve::HttpOptions ho;
  ho.host = a.host;
  ho.port = a.port;
  ho.served_model_name = a.served_name;
  if (ho.served_model_name.empty()) {
    const std::filesystem::path p = std::filesystem::path(a.model).lexically_normal();
    ho.served_model_name = p.has_filename() ? p.filename().string() : p.parent_path().filename().string();
    if (ho.served_model_name.empty() || ho.served_model_name == ".") ho.served_model_name = "dsv3";
  }
  ho.api_key = read_api_key(a);
  ho.cors_origins = split_list(a.cors);
  ho.max_body_bytes = size_t(a.max_body_mb) << 20;
  ho.role = a.role;
  ho.transfer_timeout_s = a.transfer_timeout;
  ho.fault_corrupt_transfers = a.fault_corrupt_transfers;
  DSV3_CHECK(a.transfer_port >= 0 && a.transfer_port <= 65535, "--transfer-port must be in [0, 65535]");
  ho.transfer_port = a.transfer_port;
  // One handler thread per connection served at once: every running and queued stream, and
  // room for health checks, with 64 concurrent streaming clients at the least.
  ho.threads = int(std::max<int64_t>(64, a.engine.max_running * 2 + 8));

  serve::EngineOptions eo = a.engine;
  eo.prefix_cache = !a.no_prefix_cache;
  eo.batch_invariant = a.batch_mode == "invariant";
  eo.log_requests = !a.no_request_log;

  // Declared before the server so they are destroyed after it (its handlers use them).
  std::unique_ptr<Model> model;
  std::unique_ptr<tok::Tokenizer> tokenizer;
  std::unique_ptr<serve::Engine> engine;
  serve::HttpServer http(ho);
  const int port = http.bind();
  const std::string where = url(a.host, port);
  std::fprintf(stderr, "dsv3 serve: listening on %s\n", where.c_str());
  std::fflush(stderr);
  http.start();
  signals.start_waiter();

  ModelOptions mo;
  mo.with_mtp = spec_run != SpecMode::Off;
  if (ep) mo.ep = &world;
  mo.bf16_activations = cli::parse_activations(a.activations);
  mo.kv_cache = CacheDtype(cli::parse_kv_cache(a.kv_cache));
  const bool huge_pages = cli::parse_weights_memory(a.weights);
  model = std::make_unique<Model>(a.model, mo);
  // auto on a model without MTP modules decodes plainly (/metrics and the log say so).
  DSV3_CHECK(spec != SpecMode::Mtp || model->n_mtp() >= 1, "--speculative mtp: the model in '",
             a.model, "' has no MTP module (num_nextn_predict_layers = 0)");
  eo.speculative_mode = spec_run;
  if (spec_run != SpecMode::Off) eo.speculative_draft = a.draft > 0 ? a.draft : kDefaultDraft;
  if (ep) eo.ep = &world;
  if (ep) {
    eo.start_placement = place_at_start(*model, a);
    if (eo.start_placement.slots > 0) serve::log_placement("at start", eo.start_placement);
  }
  {
    // Weights resident before /health says ready: the first requests would otherwise pay a
    // page fault per 4 KiB of every expert they touch first.
    const double t0 = now_s();
    if (ep) {
      model->make_resident(Model::Residency::Mapped);  // EP rebinds experts from the mapping
      if (huge_pages && world.rank() == 0)
        std::fprintf(stderr, "dsv3 serve: weights stay mapped under --ep (each rank rebinds its "
                     "experts from the checkpoint's mapping); --weights huge applies to "
                     "one-process serving\n");
      log_ep_share(*model, world, eo.start_placement.slots > 0, now_s() - t0);
    } else {
      cli::make_weights_resident(*model, huge_pages, "dsv3 serve");
    }
  }
  if (std::filesystem::exists(std::filesystem::path(a.model) / "tokenizer.json"))
    tokenizer = tok::Tokenizer::from_path(a.model);
  else
    std::fprintf(stderr, "dsv3 serve: '%s' has no tokenizer.json: only token-id prompts on "
                 "/v1/completions\n", a.model.c_str());
  engine = std::make_unique<serve::Engine>(*model, tokenizer.get(), eo);
  http.set_ready(engine.get(), tokenizer.get());
  signals.ready.store(true);
  const char* spec_note = spec_run == SpecMode::Auto && model->n_mtp() == 0 ? " (no MTP module: plain)" : "";
  const std::string ep_note = ep ? str_cat(", expert-parallel over ", a.ep, " ranks, rank 0 pid ", ::getpid()) : "";
  std::fprintf(stderr, "dsv3 serve: ready on %s (model '%s', context %lld, %lld running, "
               "speculative %s%s, role %s%s, chat page at %s/)\n", where.c_str(),
               ho.served_model_name.c_str(), (long long)engine->context(), (long long)eo.max_running,
               spec_mode_name(spec_run), spec_note, a.role.c_str(), ep_note.c_str(), where.c_str());
  std::fflush(stderr);

  signals.wait();
  engine->stop_admitting();
  const bool clean = engine->drain(a.drain_timeout);
  if (!clean) std::fprintf(stderr, "dsv3 serve: drain timeout: cancelled what was left\n");
  if (!a.expert_load_out.empty()) {
    const std::string tmp = a.expert_load_out + ".tmp";
    {
      std::ofstream f(tmp);
      f << serve::dump(serve::expert_load_json(engine->metrics())) << "\n";
      if (!f.good()) std::fprintf(stderr, "dsv3 serve: cannot write %s\n", tmp.c_str());
    }
    std::filesystem::rename(tmp, a.expert_load_out);
    std::fprintf(stderr, "dsv3 serve: expert load written to %s (dsv3 eplb --load reads it)\n",
                 a.expert_load_out.c_str());
  }
  http.shutdown();
  std::fprintf(stderr, "dsv3 serve: stopped\n");
}

struct RouterArgs {
  std::string prefill, decode, api_key_file;
  serve::RouterOptions o;
};

void run_router(RouterArgs& a) {
  serve::RouterOptions o = a.o;
  o.prefill = split_list(a.prefill);
  o.decode = split_list(a.decode);
  DSV3_CHECK(o.port >= 0 && o.port <= 65535, "--port must be in [0, 65535], got ", o.port);
  if (!a.api_key_file.empty()) {
    ServeArgs k;
    k.api_key_file = a.api_key_file;
    o.api_key = read_api_key(k);
  }
  Signals& signals = *new Signals;  // never freed: its sigwait thread lives until exit
  serve::Router router(o);
  const int port = router.bind();
  signals.start_waiter();
  router.start();
  signals.ready.store(true);
  std::fprintf(stderr, "dsv3 router: listening on %s (prefill %s; decode %s; timeout %.0f s)\n",
               url(o.host, port).c_str(), a.prefill.c_str(), a.decode.c_str(), o.timeout_s);
  std::fflush(stderr);
  signals.wait();
  router.shutdown();
  std::fprintf(stderr, "dsv3 router: stopped\n");
}

}  // namespace

void register_router(CLI::App& app) {
  auto a = std::make_shared<RouterArgs>();
  CLI::App* c = app.add_subcommand(
      "router", "OpenAI-compatible front of a disaggregated deployment: prompts prefilled on "
      "`dsv3 serve --role prefill` instances, decoded on `--role decode` instances");
  c->add_option("--prefill", a->prefill, "Prefill instances, comma-separated base URLs (http://host:port)")
      ->required();
  c->add_option("--decode", a->decode, "Decode instances, comma-separated base URLs")->required();
  c->add_option("--host", a->o.host, "Address to listen on (default 127.0.0.1)");
  c->add_option("--port", a->o.port, "Port (default 8000; 0 = any free port, printed on stderr)");
  c->add_option("--timeout", a->o.timeout_s,
                "Seconds an instance may stay silent before the request fails (default 60)");
  c->add_option("--connect-timeout", a->o.connect_timeout_s, "Seconds to connect to an instance (default 3)");
  c->add_option("--health-interval", a->o.health_interval_s,
                "Seconds between /health polls of every instance (default 1)");
  c->add_option("--api-key", a->o.api_key, "Require \"Authorization: Bearer KEY\" (forwarded to the instances)");
  c->add_option("--api-key-file", a->api_key_file, "Read the API key from the first line of this file");
  c->callback([a] { run_router(*a); });
}

void register_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* c = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, a chat page at /)");
  serve::EngineOptions& e = a->engine;
  c->add_option("--model", a->model, "Model directory (config.json + safetensors [+ tokenizer.json])")
      ->required();
  c->add_option("--host", a->host, "Address to listen on (default 127.0.0.1)");
  c->add_option("--port", a->port, "Port (default 8080; 0 = any free port, printed on stderr)");
  c->add_option("--served-model-name", a->served_name,
                "The model's name in the API (default: the model directory's name)");
  c->add_option("--max-running", e.max_running, "Sequences decoded together (default 16)");
  c->add_option("--max-queue", e.max_queue, "Waiting requests before HTTP 429 (default 256)");
  c->add_option("--kv-cache-mb", e.kv_cache_mb,
                "Latent-cache pool in MiB (default: --max-running full contexts)");
  c->add_option("--context", e.context,
                "Positions per sequence, prompt + completion (default min(max_position_embeddings, 4096))");
  c->add_option("--prefill-chunk", e.prefill_chunk, "Prompt tokens forwarded per step (default 256)");
  c->add_flag("--no-prefix-cache", a->no_prefix_cache, "Do not share cached prompt prefixes");
  c->add_option("--batch-mode", a->batch_mode,
                "invariant (default: each sequence's logits as if alone) | fast (one GEMM per batch)");
  c->add_option("--api-key", a->api_key, "Require \"Authorization: Bearer KEY\" (not on / and /health)");
  c->add_option("--api-key-file", a->api_key_file, "Read the API key from the first line of this file");
  c->add_option("--cors-origins", a->cors, "Comma-separated origins allowed by CORS, or *");
  c->add_option("--speculative", a->speculative,
                "MTP speculative decoding: auto (default: draft only while it measurably pays at "
                "the step's batch size; plain without MTP modules), mtp (draft every step), off "
                "(never; 'none' = off)");
  c->add_option("--draft", a->draft,
                "Tokens drafted per step with --speculative mtp or auto (the server supports 1, the default)");
  c->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  c->add_option("--activations", a->activations, cli::kActivationsHelp);
  c->add_option("--kv-cache", a->kv_cache, cli::kKvCacheHelp);
  c->add_option("--weights", a->weights, cli::kWeightsHelp);
  c->add_option("--drain-timeout", a->drain_timeout,
                "Seconds SIGTERM/SIGINT waits for running requests before cancelling them (default 30)");
  c->add_option("--max-body-mb", a->max_body_mb, "Largest request body in MiB; larger: HTTP 413 (default 8)");
  c->add_option("--ep", a->ep,
                "Expert parallelism: under mpirun -np N, --ep N splits every MoE layer's routed "
                "experts over the N ranks (rank 0 serves HTTP; docs/serve.md). Default 1");
  c->add_flag("--no-request-log", a->no_request_log, "No line on stderr per finished request");
  c->add_option("--role", a->role,
                "Disaggregated serving (behind `dsv3 router`): prefill (prefills prompts and ships "
                "their latent cache to a decode instance) | decode (decodes from shipped prefills) | "
                "mixed (default: neither). Every role also answers ordinary requests");
  c->add_option("--transfer-timeout", a->transfer_timeout,
                "Seconds a KV transfer may stall: the prefill's push, the decode's receive (default 30)");
  c->add_option("--expert-load-out", a->expert_load_out,
                "On shutdown, write the routed-expert load since start ({\"weight\": [[per expert] per "
                "MoE layer]}, what `dsv3 eplb --load` reads; live: GET /v1/expert_load)");
  c->add_option("--redundant-experts", e.redundant_experts,
                "With --ep: R extra expert slots per MoE layer holding copies of hot experts, placed "
                "by EPLB from the counted load (at start from --expert-load, else uniform; again on "
                "POST /admin/rebalance and every --rebalance-every steps). (E + R) must divide by --ep. Default 0");
  c->add_option("--rebalance-every", e.rebalance_every,
                "With --ep: re-place the experts (EPLB) every N engine steps from the load counted "
                "since the last placement (default 0: only on POST /admin/rebalance)");
  c->add_option("--expert-load", a->expert_load_in,
                "With --ep: the load file to place experts by at start (what --expert-load-out and "
                "GET /v1/expert_load write)");
  c->add_option("--transfer-port", a->transfer_port,
                "--role decode: port of the KV transfer listener on --host (default 0: any free "
                "port; prefill instances ask GET /v1/disagg/info)");
  c->add_option("--fault-corrupt-transfers", a->fault_corrupt_transfers,
                "Testing only: damage the first N KV transfers this prefill instance sends")
      ->group("");
  c->callback([a] { run_serve(*a); });
}

}  // namespace dsv3::cli
