// safetensors reader/writer: bit-identical round trips and every malformed-file rule, each
// error asserted to name the file and the offending tensor/key.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "io/safetensors.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("dsv3_st_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// A file image: u64 LE length, header, data.
std::string image(const std::string& header, size_t data_bytes, uint64_t claimed_len = ~0ull) {
  const uint64_t n = claimed_len == ~0ull ? header.size() : claimed_len;
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(n >> (8 * i)));
  return s + header + std::string(data_bytes, '\x5a');
}

// Opens bytes as a file and returns the error message ("" when it opened).
std::string open_error(const std::string& bytes, std::string* path_out = nullptr) {
  static int counter = 0;
  const std::string dir = temp_dir("bad");
  const std::string path = dir + "/bad" + std::to_string(counter++) + ".safetensors";
  spit(path, bytes);
  if (path_out) *path_out = path;
  try {
    SafetensorsFile f(path);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "message must name the file: " << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(bytes, ...)                                                 \
  do {                                                                               \
    const std::string msg = open_error(bytes);                                       \
    ASSERT_FALSE(msg.empty()) << "accepted a malformed file";                        \
    for (const char* part : {__VA_ARGS__})                                           \
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg; \
  } while (0)

TEST(Safetensors, RoundTripBitIdentical) {
  const std::string dir = temp_dir("rt");
  std::mt19937 rng(7);
  struct T { std::string name; DType dt; std::vector<int64_t> shape; std::vector<uint8_t> bytes; };
  std::vector<T> ts = {
      {"a.f32", DType::F32, {3, 5}, {}},      {"b.bf16", DType::BF16, {7}, {}},
      {"c.fp8", DType::F8_E4M3, {2, 3, 4}, {}}, {"d.i64", DType::I64, {2}, {}},
      {"e.empty", DType::F16, {0, 4}, {}},    {"f.scalar", DType::U8, {}, {}},
      {"g.bool", DType::BOOL, {3}, {}},       {"h.f64", DType::F64, {1, 1, 1, 1, 1, 2}, {}},
  };
  SafetensorsWriter w(dir + "/x.safetensors");
  for (T& t : ts) {
    uint64_t n = SafetensorsWriter::tensor_bytes(t.dt, t.shape);
    t.bytes.resize(n);
    for (auto& b : t.bytes) b = uint8_t(rng());
    std::vector<int64_t> shape = t.shape;
    w.add(t.name, t.dt, shape, [&t](void* d, size_t n) { std::memcpy(d, t.bytes.data(), n); });
  }
  w.set_metadata("format", "pt");
  w.set_metadata("note", "ünïcode ✓");
  w.finish();
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "temp file left behind";

  SafetensorsFile f(dir + "/x.safetensors");
  EXPECT_EQ(f.header().header_len % 8, 0u) << "header padded to a multiple of 8";
  EXPECT_EQ(f.header().metadata.at("note"), "ünïcode ✓");
  EXPECT_EQ(f.header().tensors.size(), ts.size());
  for (const T& t : ts) {
    const SafetensorsEntry* e = f.find(t.name);
    ASSERT_NE(e, nullptr) << t.name;
    EXPECT_EQ(e->dtype, t.dt);
    ASSERT_EQ(e->ndim, int(t.shape.size()));
    for (int d = 0; d < e->ndim; ++d) EXPECT_EQ(e->shape[d], t.shape[size_t(d)]);
    EXPECT_EQ(e->begin % dtype_size(t.dt), 0u) << t.name << " is not aligned to its element size";
    const TensorView v = f.view(*e);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % dtype_size(t.dt), 0u);
    ASSERT_EQ(v.nbytes(), t.bytes.size());
    if (!t.bytes.empty()) {
      EXPECT_EQ(std::memcmp(v.data, t.bytes.data(), t.bytes.size()), 0) << t.name;
    }
  }
  EXPECT_EQ(f.find("missing"), nullptr);

  // Writing the read views again gives the same file, byte for byte.
  SafetensorsWriter w2(dir + "/y.safetensors");
  for (const SafetensorsEntry& e : f.header().tensors) w2.add(e.name, f.view(e));
  w2.set_metadata("format", "pt");
  w2.set_metadata("note", "ünïcode ✓");
  w2.finish();
  EXPECT_EQ(slurp(dir + "/x.safetensors"), slurp(dir + "/y.safetensors"));
}

// A chunked tensor larger than one chunk: its fill sees consecutive pieces of whole elements
// (increasing offsets, none larger than kChunkBytes), and the file holds the same bytes as a
// whole-tensor add of the same data.
TEST(Safetensors, ChunkedTensorsStreamInIncreasingPieces) {
  const std::string dir = temp_dir("chunked");
  const int64_t n = int64_t(SafetensorsWriter::kChunkBytes / 4) * 2 + 7;  // F32: 2 chunks and 7 floats
  std::vector<float> data(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) data[size_t(i)] = float(i) * 0.5f - 3.0f;
  std::vector<std::pair<uint64_t, size_t>> calls;
  SafetensorsWriter w(dir + "/c.safetensors");
  w.add_chunked("big", DType::F32, {n}, [&](void* dst, uint64_t off, size_t len) {
    calls.push_back({off, len});
    std::memcpy(dst, reinterpret_cast<const char*>(data.data()) + off, len);
  });
  w.add("small", TensorView(data.data(), DType::F32, {5}));
  w.finish();
  ASSERT_EQ(calls.size(), 3u);
  uint64_t at = 0;
  for (const auto& [off, len] : calls) {
    EXPECT_EQ(off, at);
    EXPECT_LE(len, SafetensorsWriter::kChunkBytes);
    EXPECT_EQ(len % 4, 0u);
    at += len;
  }
  EXPECT_EQ(at, uint64_t(n) * 4);
  SafetensorsWriter w2(dir + "/w.safetensors");
  w2.add("big", TensorView(data.data(), DType::F32, {n}));
  w2.add("small", TensorView(data.data(), DType::F32, {5}));
  w2.finish();
  EXPECT_TRUE(slurp(dir + "/c.safetensors") == slurp(dir + "/w.safetensors"));
}

TEST(Safetensors, EmptyFileOfTensorsIsValid) {
  EXPECT_EQ(open_error(image("{}      ", 0)), "");
  EXPECT_EQ(open_error(image(R"({"__metadata__":{"a":"b"}})", 0)), "");
}

TEST(Safetensors, RejectsShortAndTruncatedFiles) {
  EXPECT_ERROR_HAS(std::string("\x01\x02\x03", 3), "too short");
  // Header length past the end of the file.
  EXPECT_ERROR_HAS(image("{}", 0, 1000), "header length 1000", "past the end");
  // Header length over 100 MB (checked before anything is read).
  EXPECT_ERROR_HAS(image("{}", 0, 200'000'000), "200000000", "100 MB");
  // A valid file with its last byte cut: the last tensor is named.
  const std::string good =
      image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_EQ(open_error(good), "");
  EXPECT_ERROR_HAS(good.substr(0, good.size() - 1), "'w'", "truncated");
  EXPECT_ERROR_HAS(good + "x", "1 bytes after the last tensor");
}

TEST(Safetensors, RejectsBadJson) {
  EXPECT_ERROR_HAS(image(R"({"w": )", 0), "not valid JSON");
  EXPECT_ERROR_HAS(image("[1, 2]", 0), "must be a JSON object", "array");
  EXPECT_ERROR_HAS(image("{\"w\xff\":1}", 0), "UTF-8");
  EXPECT_ERROR_HAS(image("{\"\xc0\xaf\":1}", 0), "UTF-8");  // overlong '/'
  EXPECT_ERROR_HAS(image("{\"\xed\xa0\x80\":1}", 0), "UTF-8");  // a surrogate
  EXPECT_ERROR_HAS(image(std::string(100, '[') + std::string(100, ']'), 0), "nests deeper");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                   "'w' twice");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})", 4),
                   "'dtype' twice");
  EXPECT_ERROR_HAS(image(R"({"__metadata__":{"a":1}})", 0), "__metadata__", "'a'", "string");
  EXPECT_ERROR_HAS(image(R"({"__metadata__":[1]})", 0), "__metadata__");
}

TEST(Safetensors, RejectsBadEntries) {
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", 4),
                   "'w'", "unknown dtype 'F12'");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                   "'w'", "[3]", "needs 12 bytes", "span 8");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
                   "'w'", "non-negative integer");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
                   "'w'", "shape[0]");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],)"
                         R"("data_offsets":[0,4]}})", 4),
                   "'w'", "overflows");
  // Zero elements, but the other dimensions multiply past int64: still rejected, so that
  // no later numel() can overflow.
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[4611686018427387904,0,4611686018427387904],)"
                         R"("data_offsets":[0,0]}})", 0),
                   "'w'", "overflows");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4),
                   "'w'", "begin > end");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[1]}})", 0), "'w'", "data_offsets");
  EXPECT_ERROR_HAS(image(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4), "'w'", "dtype");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4),
                   "'w'", "unexpected key 'x'");
  EXPECT_ERROR_HAS(image(R"({"w":[1]})", 0), "'w'", "expected an object");
  EXPECT_ERROR_HAS(image(R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1],"data_offsets":[0,4]}})", 4),
                   "'w'", "rank 7");
}

TEST(Safetensors, RejectsBadLayout) {
  // Overlap: b starts inside a.
  EXPECT_ERROR_HAS(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                   "'b'", "overlap");
  // Hole between a and b.
  EXPECT_ERROR_HAS(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", 20),
                   "'b'", "hole");
  // Data not starting at 0.
  EXPECT_ERROR_HAS(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                   "'a'", "hole");
  // Offsets past the end of the file.
  EXPECT_ERROR_HAS(image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
                   "'a'", "holds 8 bytes");
  // Two tensors sharing the same bytes.
  EXPECT_ERROR_HAS(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
                   "overlap");
  // Zero-size tensors may sit anywhere in the sequence.
  EXPECT_EQ(open_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})", 8)), "");
}

TEST(Safetensors, ParseIsTheSameOnAnImage) {
  // parse_safetensors is what the fuzzer drives; it must agree with the file reader.
  const std::string good = image(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}})", 8);
  const SafetensorsHeader h =
      parse_safetensors(reinterpret_cast<const uint8_t*>(good.data()), good.size(), "mem");
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].dtype, DType::BF16);
  EXPECT_EQ(h.data_size, 8u);
  EXPECT_THROW(parse_safetensors(reinterpret_cast<const uint8_t*>(good.data()), 7, "mem"), Error);
}

TEST(Safetensors, WriterRejectsBadInput) {
  const std::string dir = temp_dir("wbad");
  SafetensorsWriter w(dir + "/x.safetensors");
  w.add("a", DType::F32, {1}, [](void* d, size_t n) { std::memset(d, 0, n); });
  EXPECT_THROW(w.add("a", DType::F32, {1}, [](void*, size_t) {}), Error);
  EXPECT_THROW(w.add("__metadata__", DType::F32, {1}, [](void*, size_t) {}), Error);
  EXPECT_THROW(w.add("n", DType::F32, {-1}, [](void*, size_t) {}), Error);
  // A fill that throws leaves no file and no temp file behind.
  SafetensorsWriter w2(dir + "/y.safetensors");
  w2.add("a", DType::F32, {1}, [](void*, size_t) { DSV3_FAIL("boom"); });
  EXPECT_THROW(w2.finish(), Error);
  EXPECT_FALSE(fs::exists(dir + "/y.safetensors"));
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos);
}

class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    const std::string prefix = "dsv3_st_" + std::to_string(::getpid()) + "_";
    for (const auto& e : fs::directory_iterator(fs::temp_directory_path()))
      if (e.path().filename().string().rfind(prefix, 0) == 0) fs::remove_all(e.path());
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

}  // namespace
}  // namespace dsv3
