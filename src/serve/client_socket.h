// The socket of the client a cpp-httplib handler is answering, and whether that client has
// gone (serve/http_server.cpp, serve/router.cpp). httplib 0.11 gives a handler no way to see
// that its client hung up, and a generation the client no longer wants holds a batch slot.
// The connection's socket is found once per request by its address pair (unique while the
// connection is open, and the handler runs while it is), then polled for the peer's FIN.
#pragma once

#include <cstddef>
#include <string>

namespace httplib {
struct Request;
class Server;
}

namespace dsv3::serve {

// The connection's file descriptor, or -1 when not found.
int connection_fd(const httplib::Request& req);
// The peer closed its side (or the socket failed); false for fd < 0. A pipelined next
// request is not a close.
bool peer_gone(int fd);

// What `dsv3 serve` and `dsv3 router` set on their httplib server: `threads` handler threads,
// bodies up to max_body_bytes, TCP_NODELAY (one SSE chunk per token: no Nagle delay), and
// SO_REUSEADDR alone (httplib's default SO_REUSEPORT lets a second server bind a port in use
// and silently share its connections; SO_REUSEADDR only allows a quick restart).
void configure_server(httplib::Server& svr, size_t threads, size_t max_body_bytes);
// Binds host:port (0: any free port) and returns the port; dsv3::Error naming `who` otherwise.
int bind_server(httplib::Server& svr, const std::string& host, int port, const char* who);

}  // namespace dsv3::serve
