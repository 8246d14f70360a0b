// The socket of the client a cpp-httplib handler is answering, and whether that client has
// gone (serve/http_server.cpp, serve/router.cpp). httplib 0.11 gives a handler no way to see
// that its client hung up, and a generation the client no longer wants holds a batch slot.
// The connection's socket is found once per request by its address pair (unique while the
// connection is open, and the handler runs while it is), then polled for the peer's FIN.
#pragma once

namespace httplib { struct Request; }

namespace dsv3::serve {

// The connection's file descriptor, or -1 when not found.
int connection_fd(const httplib::Request& req);
// The peer closed its side (or the socket failed); false for fd < 0. A pipelined next
// request is not a close.
bool peer_gone(int fd);

}  // namespace dsv3::serve
