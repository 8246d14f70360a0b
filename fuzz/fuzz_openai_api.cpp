// libFuzzer target: a client's request body through everything `dsv3 serve` does with it
// before the engine (serve/openai_api.h): parse_body, the endpoint's request parser, the chat
// template and the tokenizer, engine_requests; /tokenize and /detokenize. The first byte picks
// the endpoint, the rest is the body. The HTTP layer answers ApiError with its status and
// dsv3::Error / nlohmann::json::exception with 400; anything else thrown would be a 500, so it
// is a crash here, as is an ApiError outside 4xx, a request that breaks the parser's promises
// (n in [1, kMaxChoices], top_logprobs ≤ kMaxTopLogprobs, max_tokens ≥ 0 and filling the
// context when not given),
// a hang or a sanitizer report.
// The tokenizer: the directory in DSV3_FUZZ_TOKENIZER (tokenizer.json + tokenizer_config.json),
// which scripts/fuzz.sh unpacks from tests/data/tokenizer (the real DeepSeek-V3 one).
// Build and run: FUZZ_TARGET=openai_api scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "serve/openai_api.h"
#include "tokenizer/tokenizer.h"

namespace {

constexpr int64_t kContext = 4096;

const dsv3::tok::Tokenizer& tokenizer() {
  static const std::unique_ptr<dsv3::tok::Tokenizer> t = [] {
    const char* dir = std::getenv("DSV3_FUZZ_TOKENIZER");
    if (!dir) {
      std::fprintf(stderr, "fuzz_openai_api: set DSV3_FUZZ_TOKENIZER to a tokenizer directory\n");
      std::abort();
    }
    return dsv3::tok::Tokenizer::from_path(dir);
  }();
  return *t;
}

void check_params(const dsv3::serve::GenParams& p) {
  if (p.n < 1 || p.n > dsv3::serve::kMaxChoices) std::abort();
  if (p.top_logprobs < -1 || p.top_logprobs > dsv3::serve::kMaxTopLogprobs) std::abort();
}

// What generate() does with a parsed request's prompt.
void to_engine(const dsv3::serve::GenParams& p, const std::vector<int32_t>& ids) {
  const std::vector<dsv3::serve::Request> reqs = dsv3::serve::engine_requests(p, ids, kContext, "fuzz");
  if (int64_t(reqs.size()) != p.n) std::abort();
  // Without max_tokens a request may run to the end of the context; a given one is the
  // engine's to check against it (submit throws dsv3::Error).
  for (const dsv3::serve::Request& r : reqs)
    if (r.max_tokens < 0 || (p.max_tokens < 0 && int64_t(ids.size()) + r.max_tokens != kContext)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3::serve;
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  const dsv3::tok::Tokenizer& t = tokenizer();
  try {
    const json b = parse_body(body);
    switch (data[0] % 4) {
      case 0: {
        const ChatRequest c = parse_chat_request(b);
        check_params(c.params);
        to_engine(c.params, chat_prompt_ids(t, c.messages));
        break;
      }
      case 1: {
        const CompletionRequest c = parse_completion_request(b);
        check_params(c.params);
        if (c.prompts.empty() || int64_t(c.prompts.size()) * c.params.n > kMaxChoices) std::abort();
        for (const Prompt& p : c.prompts) to_engine(c.params, completion_prompt_ids(p.is_text ? &t : nullptr, p));
        break;
      }
      case 2: (void)dump(tokenize_json(t, b, kContext)); break;
      default: (void)dump(detokenize_json(t, b)); break;
    }
  } catch (const ApiError& e) {
    if (e.status < 400 || e.status > 499) std::abort();
  } catch (const dsv3::Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
