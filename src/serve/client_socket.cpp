#include "serve/client_socket.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>
#include <string>

#include "core/check.h"

namespace dsv3::serve {
namespace {

std::string numeric_host(const sockaddr_storage& a, socklen_t len, int* port) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "";
  *port = std::atoi(serv);
  return host;
}

}  // namespace

int connection_fd(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* ent = readdir(d)) {
    const int fd = std::atoi(ent->d_name);
    if (fd <= 2 || fd == dirfd(d)) continue;
    sockaddr_storage peer{}, self{};
    socklen_t pl = sizeof peer, sl = sizeof self;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&self), &sl) != 0) continue;
    int pport = -1, sport = -1;
    const std::string paddr = numeric_host(peer, pl, &pport);
    numeric_host(self, sl, &sport);
    if (pport == req.remote_port && paddr == req.remote_addr &&
        (req.local_port <= 0 || sport == req.local_port)) {
      found = fd;
      break;
    }
  }
  closedir(d);
  return found;
}

// The peer closed its side (or the socket failed). A pipelined next request is not a close.
bool peer_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

void configure_server(httplib::Server& svr, size_t threads, size_t max_body_bytes) {
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr.set_payload_max_length(max_body_bytes);
  svr.set_tcp_nodelay(true);
  svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
}

int bind_server(httplib::Server& svr, const std::string& host, int port, const char* who) {
  if (port == 0) {
    port = svr.bind_to_any_port(host);
    DSV3_CHECK(port > 0, who, ": cannot bind to ", host, " (any port)");
  } else {
    DSV3_CHECK(svr.bind_to_port(host, port), who, ": cannot bind to ", host, ":", port,
               " (in use, or not an address of this machine)");
  }
  return port;
}

}  // namespace dsv3::serve
