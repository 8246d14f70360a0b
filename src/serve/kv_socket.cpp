#include "serve/kv_socket.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/check.h"
#include "core/clock.h"

namespace dsv3::serve {
namespace {

constexpr char kFrameMagic[8] = {'D', 'S', 'V', '3', 'K', 'V', 'P', '1'};

// Every byte of buf, or false (peer closed, error, silent past the socket's timeout, or past
// `deadline` on the steady clock: a peer trickling bytes cannot hold a reader forever).
bool read_all(int fd, char* buf, size_t n, double deadline = 0) {
  while (n > 0) {
    if (deadline > 0 && now_s() > deadline) return false;
    const ssize_t r = ::recv(fd, buf, n, 0);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    buf += r;
    n -= size_t(r);
  }
  return true;
}

bool write_all(int fd, const char* buf, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, buf, n, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return false;
    }
    buf += w;
    n -= size_t(w);
  }
  return true;
}

void set_timeouts(int fd, double s) {
  timeval tv{};
  tv.tv_sec = time_t(s);
  tv.tv_usec = suseconds_t((s - double(tv.tv_sec)) * 1e6);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void put_u32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = char((v >> (8 * i)) & 0xff);
}
uint32_t get_u32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(uint8_t(p[i])) << (8 * i);
  return v;
}

// "[::1]" → "::1"; other hosts as given.
std::string bare_host(const std::string& h) {
  return h.size() >= 2 && h.front() == '[' && h.back() == ']' ? h.substr(1, h.size() - 2) : h;
}

addrinfo* resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string h = bare_host(host);
  if (getaddrinfo(h.empty() ? nullptr : h.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return nullptr;
  return res;
}

}  // namespace

TransferListener::TransferListener(const std::string& host, int port, int64_t max_bytes, double timeout_s,
                                   Handler h)
    : max_bytes_(max_bytes), timeout_s_(timeout_s), handler_(std::move(h)) {
  addrinfo* ai = resolve(host, port, true);
  DSV3_CHECK(ai, "transfer listener: cannot resolve '", host, "'");
  for (addrinfo* a = ai; a && fd_ < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 16) == 0) {
      fd_ = fd;
    } else {
      ::close(fd);
    }
  }
  freeaddrinfo(ai);
  DSV3_CHECK(fd_ >= 0, "transfer listener: cannot bind to ", host, ":", port, " (", std::strerror(errno), ")");
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                   : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  // One worker thread per connection, at most kMaxConnections at once: a slow or silent
  // sender holds only its own worker, and only until its deadline.
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      {
        // At capacity, the next connections wait in the listen backlog (their senders'
        // timeouts run) until a worker is free.
        std::lock_guard<std::mutex> lk(mu_);
        std::erase_if(workers_, [](Worker& w) {
          if (!w.done->load()) return false;
          w.t.join();
          return true;
        });
        if (workers_.size() >= kMaxConnections) {
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
          continue;
        }
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // EMFILE and the like
        continue;
      }
      set_timeouts(c, timeout_s_);
      std::lock_guard<std::mutex> lk(mu_);
      auto done = std::make_shared<std::atomic<bool>>(false);
      open_.insert(c);
      workers_.push_back({std::thread([this, c, done] {
                            try {
                              serve_one(c);
                            } catch (const std::exception& e) {  // a handler bug: this connection only
                              std::fprintf(stderr, "dsv3 serve: transfer listener: %s\n", e.what());
                            }
                            {
                              std::lock_guard<std::mutex> l(mu_);
                              open_.erase(c);
                            }
                            ::close(c);
                            done->store(true);
                          }),
                          done});
    }
  });
}

TransferListener::~TransferListener() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  std::vector<Worker> ws;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (int c : open_) ::shutdown(c, SHUT_RDWR);  // wake the workers' reads
    ws.swap(workers_);
  }
  for (Worker& w : ws) w.t.join();
  if (fd_ >= 0) ::close(fd_);
}

void TransferListener::serve_one(int fd) {
  auto reply = [&](int status, const std::string& msg) {
    char h[8];
    put_u32(h, uint32_t(status));
    put_u32(h + 4, uint32_t(msg.size()));
    write_all(fd, h, 8) && write_all(fd, msg.data(), msg.size());
  };
  // A refusal before the body is read: the reply, then the sender's remaining bytes read and
  // dropped (up to 64 MiB or a second), so that closing does not reset the connection (an RST
  // can destroy the reply before the sender reads it).
  auto refuse = [&](int status, const std::string& msg) {
    reply(status, msg);
    ::shutdown(fd, SHUT_WR);
    set_timeouts(fd, std::min(1.0, timeout_s_));
    static thread_local char sink[1 << 16];
    for (size_t dropped = 0; dropped < (size_t(64) << 20);) {
      const ssize_t r = ::recv(fd, sink, sizeof sink, 0);
      if (r <= 0) break;
      dropped += size_t(r);
    }
  };
  // Deadlines: the header within 5 s (a sender writes it on connecting); the body within
  // timeout_s plus a second per 16 MB (a sender below that rate is dropped).
  const double t0 = now_s();
  char head[16];
  if (!read_all(fd, head, 16, t0 + std::min(5.0, timeout_s_))) return;
  if (std::memcmp(head, kFrameMagic, 8) != 0) return refuse(400, "not a dsv3 KV transfer frame");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(head[8 + i])) << (8 * i);
  if (n > uint64_t(max_bytes_))
    return refuse(413, str_cat("a transfer of ", n, " bytes is over this instance's limit of ", max_bytes_));
  const double deadline = now_s() + timeout_s_ + double(n) / 16e6;
  // The buffer grows as bytes arrive: a header alone never makes it allocate n.
  ByteBuffer bytes = buffers_.get();
  for (size_t got = 0; got < n;) {
    const size_t piece = std::min<size_t>(size_t(n) - got, size_t(64) << 20);
    bytes->resize(got + piece);
    if (!read_all(fd, bytes->data() + got, piece, deadline)) return;  // gone, stalled or too slow
    got += piece;
  }
  auto [status, msg] = handler_(std::move(bytes));
  reply(status, msg);
}

TransferReply send_transfer(const std::string& host, int port, std::string_view bytes, double timeout_s) {
  TransferReply r;
  addrinfo* ai = resolve(host, port, false);
  if (!ai) {
    r.message = str_cat("cannot resolve '", host, "'");
    return r;
  }
  int fd = -1;
  std::string why = "no address";
  for (addrinfo* a = ai; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    set_timeouts(fd, timeout_s);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      why = std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(ai);
  if (fd < 0) {
    r.message = str_cat("cannot connect to ", host, ":", port, " (", why, ")");
    return r;
  }
  char head[16];
  std::memcpy(head, kFrameMagic, 8);
  for (int i = 0; i < 8; ++i) head[8 + i] = char((uint64_t(bytes.size()) >> (8 * i)) & 0xff);
  char rh[8];
  // A receiver that refuses early answers before reading everything: when the write breaks
  // off, its reply may still be waiting to be read.
  const bool sent = write_all(fd, head, 16) && write_all(fd, bytes.data(), bytes.size());
  if (!sent) ::shutdown(fd, SHUT_WR);
  if (!read_all(fd, rh, 8)) {
    r.message = str_cat("the transfer to ", host, ":", port, " broke off (", std::strerror(errno), ")");
    ::close(fd);
    return r;
  }
  r.status = int(get_u32(rh));
  std::string msg(std::min<uint32_t>(get_u32(rh + 4), 1u << 16), '\0');
  read_all(fd, msg.data(), msg.size());
  ::close(fd);
  r.delivered = true;
  r.message = std::move(msg);
  return r;
}

}  // namespace dsv3::serve
