#include "model_args.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "core/check.h"
#include "core/clock.h"
#include "model/mla.h"
#include "model/model.h"

namespace dsv3::cli {

std::vector<int32_t> parse_id_list(const std::string& s, const std::string& flag) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    const size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
    item = a == std::string::npos ? "" : item.substr(a, b - a + 1);
    if (item.empty() && j == s.size() && ids.empty() && s.find_first_not_of(" \t") == std::string::npos) break;
    DSV3_CHECK(!item.empty(), flag, ": empty entry at position ", ids.size(), " in '", s, "'");
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    DSV3_CHECK(end && *end == '\0' && errno == 0, flag, ": '", item, "' is not an integer token id");
    DSV3_CHECK(v >= 0 && v <= INT32_MAX, flag, ": token id ", item, " is out of range");
    ids.push_back(int32_t(v));
    i = j + 1;
  }
  DSV3_CHECK(!ids.empty(), flag, ": no token ids given (empty prompt)");
  return ids;
}

int parse_attn_form(const std::string& s) {
  if (s == "auto") return int(AttnForm::Auto);
  if (s == "naive") return int(AttnForm::Naive);
  if (s == "absorbed") return int(AttnForm::Absorbed);
  DSV3_FAIL("--attn: expected naive, absorbed or auto, got '", s, "'");
}

bool parse_activations(const std::string& s) {
  if (s == "f32") return false;
  if (s == "bf16") return true;
  DSV3_FAIL("--activations: expected f32 or bf16, got '", s, "'");
}

bool parse_weights_memory(const std::string& s) {
  if (s == "huge") return true;
  if (s == "mapped") return false;
  DSV3_FAIL("--weights: expected huge or mapped, got '", s, "'");
}

void make_weights_resident(Model& m, bool huge, const char* who, bool quiet) {
  const double t0 = now_s();
  std::string why;
  const uint64_t bytes = m.make_resident(huge ? Model::Residency::HugePages : Model::Residency::Mapped, &why);
  const bool on_huge = m.residency() == Model::Residency::HugePages;
  if (quiet && why.empty() && now_s() - t0 < 1.0) return;
  std::fprintf(stderr, "%s: %.2f GB of weights %s in %.2f s%s%s%s\n", who, double(bytes) * 1e-9,
               on_huge ? "copied onto huge pages" : "resident (mapped checkpoint)", now_s() - t0,
               why.empty() ? "" : " (", why.c_str(), why.empty() ? "" : ")");
}

int parse_kv_cache(const std::string& s) {
  CacheDtype d;
  DSV3_CHECK(parse_cache_dtype(s, &d), "--kv-cache: expected bf16, fp8 or f32, got '", s, "'");
  return int(d);
}

std::vector<int> parse_kv_cache_list(const std::string& s) {
  std::vector<int> out;
  for (size_t i = 0; i <= s.size();) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    out.push_back(parse_kv_cache(s.substr(i, j - i)));
    i = j + 1;
  }
  return out;
}

}  // namespace dsv3::cli
