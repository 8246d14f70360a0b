// Whole-file text I/O for the small JSON files of a model directory.
#pragma once
#include <string>

namespace dsv3 {

// The file's bytes; throws dsv3::Error naming the path when it cannot be read.
std::string read_text_file(const std::string& path);
// Writes text to path atomically: a temp file, fdatasync, rename.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace dsv3
