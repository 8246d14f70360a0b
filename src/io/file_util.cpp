// Whole-file text I/O (file_util.h).
#include "io/file_util.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace dsv3 {

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DSV3_CHECK(f.good(), path, ": cannot open (", std::strerror(errno), ")");
  std::ostringstream ss;
  ss << f.rdbuf();
  DSV3_CHECK(!f.bad(), path, ": read failed");
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  DSV3_CHECK(f != nullptr, tmp, ": cannot create (", std::strerror(errno), ")");
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() &&
                  std::fflush(f) == 0 && ::fdatasync(::fileno(f)) == 0;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    DSV3_FAIL(path, ": write failed (", std::strerror(err), ")");
  }
}

}  // namespace dsv3
