// The fast path of a KV transfer (serve/disagg.h): one plain TCP connection per transfer,
// beside the decode instance's HTTP port. cpp-httplib reads a request body 4 KiB at a time
// with a poll() before each read, which held a transfer to 33–43 MB/s on loopback
// (docs/PERF.md); a plain socket moves it at memory speed.
//
// At most 8 connections are served at once (more wait in the listen backlog), each on its own
// thread with a deadline (the header
// within 5 s, the body within the timeout plus a second per 16 MB), so a silent or
// trickling peer holds one worker for a bounded time. The port is not authenticated: bind it
// to a private address (it listens on --host).
//
// Framing, one transfer per connection:
//   sender:   "DSV3KVP1" (8 bytes), u64 length (little-endian), then the transfer's bytes
//             (serve/kv_transfer.h, checksum included)
//   receiver: u32 status (HTTP semantics: 200 stored, 422 damaged, 409 foreign/duplicate,
//             400 malformed, 413 too large, 503 full), u32 message length, the message
// The decode instance advertises the port in GET /v1/disagg/info.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "serve/kv_transfer.h"

namespace dsv3::serve {

class TransferListener {
 public:
  // (status, message) for one received transfer.
  // The bytes arrive in a recycled buffer (BufferPool) the handler may keep.
  using Handler = std::function<std::pair<int, std::string>(ByteBuffer bytes)>;
  // Binds host:port (0: any free port) and serves on a background thread. Transfers larger
  // than max_bytes are refused (413) before they are read; a sender silent for timeout_s is
  // dropped. Throws dsv3::Error when the address cannot be bound.
  TransferListener(const std::string& host, int port, int64_t max_bytes, double timeout_s, Handler h);
  ~TransferListener();  // stops accepting and waits for the connection in progress
  TransferListener(const TransferListener&) = delete;
  TransferListener& operator=(const TransferListener&) = delete;
  int port() const { return port_; }

 private:
  static constexpr size_t kMaxConnections = 8;
  struct Worker {
    std::thread t;
    std::shared_ptr<std::atomic<bool>> done;
  };
  void serve_one(int fd);
  int fd_ = -1, port_ = 0;
  std::mutex mu_;                // guards workers_ and open_
  std::vector<Worker> workers_;
  std::set<int> open_;           // connections being served (shut down to stop)
  int64_t max_bytes_;
  double timeout_s_;
  Handler handler_;
  BufferPool buffers_{8};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct TransferReply {
  bool delivered = false;  // a reply came back (status and message are the receiver's)
  int status = 0;
  std::string message;     // the receiver's, or why nothing came back
};
// Sends one transfer to host:port and waits for the reply, each step bounded by timeout_s.
TransferReply send_transfer(const std::string& host, int port, std::string_view bytes, double timeout_s);

}  // namespace dsv3::serve
