// Shared by the tokenizer tests: the real DeepSeek-V3 tokenizer (committed gzip-compressed,
// see tests/data/tokenizer/ORIGIN.md) and the JSONL test vectors. Tests run from the
// source root (ctest WORKING_DIRECTORY).
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace dsv3::tok::testing {

inline const char* kDataDir = "tests/data/tokenizer/";

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// gzip is part of every Debian system (Essential: yes), so the test needs no zlib.
inline std::string gunzip(const std::string& path) {
  std::string out;
  FILE* p = popen(("gzip -dc '" + path + "'").c_str(), "r");
  if (!p) return out;
  char buf[1 << 16];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  return out;
}

// The real tokenizer, loaded once per test binary.
inline const Tokenizer& deepseek_v3() {
  static const std::unique_ptr<Tokenizer> t = [] {
    const std::string json = gunzip(std::string(kDataDir) + "deepseek_v3_tokenizer.json.gz");
    if (json.empty()) {
      ADD_FAILURE() << "could not decompress " << kDataDir << "deepseek_v3_tokenizer.json.gz";
      std::abort();
    }
    return Tokenizer::from_json(json,
                                read_text(std::string(kDataDir) + "deepseek_v3_tokenizer_config.json"),
                                "deepseek_v3_tokenizer.json");
  }();
  return *t;
}

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline std::vector<int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

}  // namespace dsv3::tok::testing
