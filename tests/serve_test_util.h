// Test helpers for the serving engine (serve/engine.h): a stream read to its end.
#pragma once
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "serve/engine.h"

namespace dsv3::testing {

struct Outcome {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::string finish;
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  bool error = false;
};

// Reads a stream to its Finish or Error event (bounded: 60 s, then a test failure).
inline Outcome collect(serve::Stream& s) {
  Outcome o;
  const auto t_end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  serve::Event e;
  while (std::chrono::steady_clock::now() < t_end) {
    if (!s.next(&e, 1.0)) continue;
    if (e.kind == serve::Event::Kind::Token) {
      o.ids.push_back(e.id);
      o.logprobs.push_back(e.logprob);
    } else {
      o.error = e.kind == serve::Event::Kind::Error;
      o.finish = e.finish_reason;
      o.prompt_tokens = e.prompt_tokens;
      o.cached_tokens = e.cached_tokens;
      o.completion_tokens = e.completion_tokens;
      return o;
    }
  }
  ADD_FAILURE() << "stream did not finish";
  return o;
}

}  // namespace dsv3::testing
