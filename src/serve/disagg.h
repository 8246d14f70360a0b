// Prefill/decode disaggregation, the instance side (docs/serve.md "Deployment"; the router is
// serve/router.h). A request's life:
//   1. the router POSTs {"endpoint", "request": the client's body, "transfer_id",
//      "decode_url"} to a prefill instance's /v1/disagg/prefill;
//   2. the prefill instance prefills each prompt (Request::export_kv), encodes the rows and
//      last logits (serve/kv_transfer.h) and sends them to the decode instance's transfer
//      port (GET /v1/disagg/info names it; serve/kv_socket.h; POST /v1/disagg/kv takes the
//      same bytes over HTTP, slower); a transfer refused as damaged (422) is sent once more,
//      then given up;
//   3. the prefill instance answers the router (sizes, times); the router POSTs the client's
//      body to the decode instance's /v1/chat/completions or /v1/completions with the header
//      X-Dsv3-Transfer-Id, and the decode instance serves it from the transferred prefill
//      (Request::import_kv), streaming as usual.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "serve/kv_transfer.h"

namespace dsv3::serve {

class Engine;

constexpr const char* kTransferIdHeader = "X-Dsv3-Transfer-Id";

// Decode side: transfers received and not yet claimed by their generation request. An
// unclaimed one (its router gave up) is dropped after ttl_s; the store refuses a transfer
// that would take it past max_bytes.
class PendingTransfers {
 public:
  PendingTransfers(double ttl_s, int64_t max_bytes) : ttl_s_(ttl_s), max_bytes_(max_bytes) {}
  // 0 when stored; else the HTTP status and *why: 409 when a transfer with this id is
  // already waiting, 503 when the store is full.
  int put(std::shared_ptr<const KvTransfer> t, int64_t bytes, std::string* why);
  // The transfer with this id, removed from the store; nullptr when none (never came, taken,
  // or expired).
  std::shared_ptr<const KvTransfer> take(const std::string& id);

 private:
  struct Entry {
    std::shared_ptr<const KvTransfer> t;
    double at = 0;
    int64_t bytes = 0;
  };
  void expire(double now);
  double ttl_s_;
  int64_t max_bytes_, bytes_ = 0;
  std::mutex mu_;
  std::map<std::string, Entry> m_;
};

struct PrefillPush {
  double timeout_s = 30;                     // the push's connect/read/write timeouts
  std::atomic<int>* corrupt = nullptr;       // testing: damage this many pushes (one byte)
};

// Prefill side, steps 2 and 3 above for the prompts of one request: prefill on `eng`,
// push to decode_url. `alive` is polled while waiting (false: the caller's client left).
// Returns the answer for the router: {"transfer_id", "bytes", "prompt_tokens": [...],
// "prefill_s", "transfer_s", "attempts"}. Throws ApiError: 400 for what the engine refuses,
// 502 when the decode instance cannot be reached or refuses the transfer, 503 when the
// engine is full or closing.
nlohmann::json prefill_and_push(Engine& eng, const std::vector<std::vector<int32_t>>& prompts,
                                const std::string& transfer_id, const std::string& decode_url,
                                const PrefillPush& o, const std::function<bool()>& alive);

}  // namespace dsv3::serve
