// Whole-file I/O: text for the small JSON files of a model directory, read-only mappings
// for the big binary ones (safetensors shards, data sets).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dsv3 {

// The file's bytes; throws dsv3::Error naming the path when it cannot be read.
std::string read_text_file(const std::string& path);
// Writes text to path atomically: a temp file, fdatasync, rename.
void write_file_atomic(const std::string& path, const std::string& text);
// Maps a whole regular file read-only (MAP_PRIVATE) and sets *size; nullptr for an empty
// file. Throws dsv3::Error naming the path when it cannot be opened, is not a regular
// file, or cannot be mapped. Release with munmap(ptr, *size).
const uint8_t* map_file_readonly(const std::string& path, size_t* size);

}  // namespace dsv3
