// The OpenAI wire format of `dsv3 serve` (serve/openai_api.h) without a server: request
// parsing and validation (types, ranges, the forms of stop / prompt / messages), the engine
// requests made from them, response and chunk shapes, logprobs layouts, usage, error
// bodies, SSE framing and the Prometheus text. The end-to-end tests drive the real server
// with the official openai client.
#include <gtest/gtest.h>

#include <limits>

#include "serve/openai_api.h"
#include "tokenizer/tokenizer.h"

using namespace dsv3;
using namespace dsv3::serve;

namespace {

// The status and param of the ApiError `f` throws (status 0 when it does not throw).
template <class F>
std::pair<int, std::string> error_of(F f) {
  try {
    f();
  } catch (const ApiError& e) {
    return {e.status, e.param};
  }
  return {0, ""};
}

json chat_body(json extra = json::object()) {
  json b = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  b.update(extra);
  return b;
}

std::pair<int, std::string> chat_error(json extra) {
  return error_of([&] { parse_chat_request(chat_body(std::move(extra))); });
}

std::pair<int, std::string> completion_error(json body) {
  return error_of([&] { parse_completion_request(body); });
}

// Token i's bytes are "<i>", except 7 = half of "é" (an invalid UTF-8 string alone).
std::string fake_bytes(int32_t id) { return id == 7 ? std::string("\xC3") : "<" + std::to_string(id) + ">"; }

Event token(int32_t id, std::string text, float lp = -0.5f, std::vector<TokenLogprob> top = {}) {
  Event e;
  e.kind = Event::Kind::Token;
  e.id = id;
  e.text = std::move(text);
  e.logprob = lp;
  e.top = std::move(top);
  return e;
}

Event finish(std::string reason, std::string text = "", int64_t completion = 0, int64_t cached = 0) {
  Event e;
  e.kind = Event::Kind::Finish;
  e.finish_reason = std::move(reason);
  e.text = std::move(text);
  e.completion_tokens = completion;
  e.cached_tokens = cached;
  return e;
}

}  // namespace

TEST(OpenAiApi, BodyMustBeAJsonObject) {
  EXPECT_EQ(error_of([] { parse_body("{\"a\": "); }).first, 400);
  EXPECT_EQ(error_of([] { parse_body("[1, 2]"); }).first, 400);
  EXPECT_EQ(error_of([] { parse_body(""); }).first, 400);
  EXPECT_EQ(parse_body("{\"a\": 1}")["a"], 1);
}

TEST(OpenAiApi, ChatDefaultsAndUnknownFieldsIgnored) {
  const ChatRequest r = parse_chat_request(chat_body({{"user", "abc"}, {"metadata", {{"x", 1}}}}));
  EXPECT_EQ(r.params.model, "m");
  EXPECT_EQ(r.params.n, 1);
  EXPECT_FALSE(r.params.stream);
  EXPECT_EQ(r.params.max_tokens, -1);
  EXPECT_FLOAT_EQ(r.params.sampling.temperature, 1.0f);  // OpenAI's default
  EXPECT_EQ(r.params.top_logprobs, -1);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(*r.messages[0].content, "hi");
}

TEST(OpenAiApi, NullMeansNotGiven) {
  const ChatRequest r = parse_chat_request(
      chat_body({{"temperature", nullptr}, {"stop", nullptr}, {"max_tokens", nullptr}, {"seed", nullptr}}));
  EXPECT_FLOAT_EQ(r.params.sampling.temperature, 1.0f);
  EXPECT_TRUE(r.params.stop.empty());
  EXPECT_EQ(r.params.max_tokens, -1);
  EXPECT_FALSE(r.params.seed_given);
}

TEST(OpenAiApi, WrongTypesAndRangesNameTheParam) {
  using P = std::pair<int, std::string>;
  EXPECT_EQ(chat_error({{"temperature", "hot"}}), P(400, "temperature"));
  EXPECT_EQ(chat_error({{"temperature", true}}), P(400, "temperature"));
  EXPECT_EQ(chat_error({{"temperature", 2.5}}), P(400, "temperature"));
  EXPECT_EQ(chat_error({{"temperature", -0.1}}), P(400, "temperature"));
  EXPECT_EQ(chat_error({{"top_p", 0}}), P(400, "top_p"));
  EXPECT_EQ(chat_error({{"top_p", 1.5}}), P(400, "top_p"));
  EXPECT_EQ(chat_error({{"top_k", -2}}), P(400, "top_k"));
  EXPECT_EQ(chat_error({{"n", 0}}), P(400, "n"));
  EXPECT_EQ(chat_error({{"n", 2.5}}), P(400, "n"));
  EXPECT_EQ(chat_error({{"n", 1000}}), P(400, "n"));
  EXPECT_EQ(chat_error({{"max_tokens", -1}}), P(400, "max_tokens"));
  EXPECT_EQ(chat_error({{"max_tokens", "16"}}), P(400, "max_tokens"));
  EXPECT_EQ(chat_error({{"max_completion_tokens", -5}}), P(400, "max_completion_tokens"));
  EXPECT_EQ(chat_error({{"stream", "yes"}}), P(400, "stream"));
  EXPECT_EQ(chat_error({{"stream_options", 1}}), P(400, "stream_options"));
  EXPECT_EQ(chat_error({{"stream_options", {{"include_usage", "y"}}}}), P(400, "include_usage"));
  EXPECT_EQ(chat_error({{"seed", 1.5}}), P(400, "seed"));
  EXPECT_EQ(chat_error({{"presence_penalty", 3}}), P(400, "presence_penalty"));
  EXPECT_EQ(chat_error({{"frequency_penalty", -2.5}}), P(400, "frequency_penalty"));
  EXPECT_EQ(chat_error({{"model", 5}}), P(400, "model"));
  EXPECT_EQ(chat_error({{"logit_bias", {{"5", 10}}}}), P(400, "logit_bias"));
  EXPECT_EQ(chat_error({{"tools", {{{"type", "function"}}}}}), P(400, "tools"));
  EXPECT_EQ(chat_error({{"response_format", {{"type", 5}}}}), P(400, "response_format"));
  // Accepted edges.
  EXPECT_EQ(chat_error({{"temperature", 0}, {"top_p", 1}, {"n", 128}, {"max_tokens", 0},
                        {"presence_penalty", -2}, {"frequency_penalty", 2}, {"top_k", -1},
                        {"logit_bias", json::object()}, {"max_tokens", 16.0}}).first, 0);
}

TEST(OpenAiApi, SamplingFieldsReachTheParams) {
  const ChatRequest r = parse_chat_request(chat_body(
      {{"temperature", 0.5}, {"top_p", 0.9}, {"top_k", 40}, {"seed", -1}, {"n", 3},
       {"max_tokens", 10}, {"max_completion_tokens", 20}, {"presence_penalty", 0.5},
       {"frequency_penalty", -0.5}, {"stream", true}, {"stream_options", {{"include_usage", true}}}}));
  EXPECT_FLOAT_EQ(r.params.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.params.sampling.top_p, 0.9f);
  EXPECT_EQ(r.params.sampling.top_k, 40);
  EXPECT_TRUE(r.params.seed_given);
  EXPECT_EQ(r.params.sampling.seed, ~uint64_t(0));  // -1 as OpenAI's int64 seed
  EXPECT_EQ(r.params.n, 3);
  EXPECT_EQ(r.params.max_tokens, 20);  // max_completion_tokens wins
  EXPECT_FLOAT_EQ(r.params.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.params.frequency_penalty, -0.5f);
  EXPECT_TRUE(r.params.stream);
  EXPECT_TRUE(r.params.include_usage);
}

TEST(OpenAiApi, StopAsStringOrList) {
  EXPECT_EQ(parse_chat_request(chat_body({{"stop", "\n"}})).params.stop, std::vector<std::string>{"\n"});
  const auto many = parse_chat_request(chat_body({{"stop", {"a", "", "b", "c", "d", "e"}}})).params.stop;
  EXPECT_EQ(many, (std::vector<std::string>{"a", "b", "c", "d", "e"}));  // "" dropped, > 4 fine
  EXPECT_EQ(chat_error({{"stop", 5}}).second, "stop");
  EXPECT_EQ(chat_error({{"stop", {"a", 5}}}).second, "stop");
}

TEST(OpenAiApi, Messages) {
  using P = std::pair<int, std::string>;
  EXPECT_EQ(error_of([] { parse_chat_request(json{{"model", "m"}}); }), P(400, "messages"));
  EXPECT_EQ(chat_error({{"messages", json::array()}}), P(400, "messages"));
  EXPECT_EQ(chat_error({{"messages", "hi"}}), P(400, "messages"));
  EXPECT_EQ(chat_error({{"messages", {1}}}), P(400, "messages"));
  EXPECT_EQ(chat_error({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}), P(400, "messages"));
  EXPECT_EQ(chat_error({{"messages", {{{"role", "user"}}}}}), P(400, "messages"));
  EXPECT_EQ(chat_error({{"messages", {{{"role", "user"}, {"content", 5}}}}}), P(400, "messages"));
  const json image = {{"type", "image_url"}, {"image_url", {{"url", "x"}}}};
  EXPECT_EQ(chat_error({{"messages", {{{"role", "user"}, {"content", {image}}}}}}), P(400, "messages"));

  const json parts = {{{"type", "text"}, {"text", "Hello, "}}, {{"type", "text"}, {"text", "world"}}};
  const ChatRequest r = parse_chat_request(chat_body(
      {{"messages", {{{"role", "developer"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", parts}}}}}));
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(*r.messages[1].content, "Hello, world");
}

TEST(OpenAiApi, Logprobs) {
  using P = std::pair<int, std::string>;
  EXPECT_EQ(parse_chat_request(chat_body({{"logprobs", true}})).params.top_logprobs, 0);
  EXPECT_EQ(parse_chat_request(chat_body({{"logprobs", true}, {"top_logprobs", 5}})).params.top_logprobs, 5);
  EXPECT_EQ(parse_chat_request(chat_body({{"logprobs", false}})).params.top_logprobs, -1);
  EXPECT_EQ(chat_error({{"top_logprobs", 2}}), P(400, "top_logprobs"));
  EXPECT_EQ(chat_error({{"logprobs", true}, {"top_logprobs", 21}}), P(400, "top_logprobs"));
  EXPECT_EQ(chat_error({{"logprobs", 3}}), P(400, "logprobs"));

  const json c = {{"prompt", "x"}};
  EXPECT_EQ(parse_completion_request(c).params.top_logprobs, -1);
  EXPECT_EQ(parse_completion_request({{"prompt", "x"}, {"logprobs", 3}}).params.top_logprobs, 3);
  EXPECT_EQ(parse_completion_request({{"prompt", "x"}, {"logprobs", 0}}).params.top_logprobs, 0);
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"logprobs", true}}), P(400, "logprobs"));
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"logprobs", 21}}), P(400, "logprobs"));
}

TEST(OpenAiApi, CompletionPromptForms) {
  using P = std::pair<int, std::string>;
  auto r = parse_completion_request({{"prompt", "abc"}});
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_TRUE(r.prompts[0].is_text);
  EXPECT_EQ(r.prompts[0].text, "abc");
  r = parse_completion_request({{"prompt", {5, 6, 7}}});
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_FALSE(r.prompts[0].is_text);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{5, 6, 7}));
  r = parse_completion_request({{"prompt", {"abc"}}});
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "abc");
  r = parse_completion_request({{"prompt", {{1, 2}}}});
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{1, 2}));
  r = parse_completion_request({{"prompt", {"a", "b"}}, {"n", 2}});
  EXPECT_EQ(r.prompts.size(), 2u);

  EXPECT_EQ(completion_error(json::object()), P(400, "prompt"));
  EXPECT_EQ(completion_error({{"prompt", json::array()}}), P(400, "prompt"));
  EXPECT_EQ(completion_error({{"prompt", 5}}), P(400, "prompt"));
  EXPECT_EQ(completion_error({{"prompt", {1.5}}}), P(400, "prompt"));
  EXPECT_EQ(completion_error({{"prompt", {-1}}}), P(400, "prompt"));
  EXPECT_EQ(completion_error({{"prompt", {json::array()}}}), P(400, "prompt"));
  EXPECT_EQ(completion_error({{"prompt", {"a", 5}}}), P(400, "prompt"));
  EXPECT_EQ(completion_error({{"prompt", {"a", "b"}}, {"n", 100}}), P(400, "n"));
  EXPECT_EQ(completion_error({{"prompt", "a"}, {"echo", true}}), P(400, "echo"));
  EXPECT_EQ(completion_error({{"prompt", "a"}, {"best_of", 3}}), P(400, "best_of"));
  EXPECT_EQ(completion_error({{"prompt", "a"}, {"suffix", "z"}}), P(400, "suffix"));
}

TEST(OpenAiApi, EngineRequestsSeedsAndDefaults) {
  GenParams p;
  p.n = 3;
  p.sampling.seed = 7;
  p.seed_given = true;
  p.stop = {"x"};
  p.top_logprobs = 2;
  const std::vector<int32_t> prompt = {1, 2, 3, 4};
  const auto reqs = engine_requests(p, prompt, 100, "cmpl-x");
  ASSERT_EQ(reqs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(reqs[i].sampling.seed, 7u + uint64_t(i));
    EXPECT_EQ(reqs[i].max_tokens, 96);  // the rest of the context
    EXPECT_EQ(reqs[i].prompt, prompt);
    EXPECT_EQ(reqs[i].stop, p.stop);
    EXPECT_EQ(reqs[i].top_logprobs, 2);
    EXPECT_TRUE(reqs[i].seeded);  // the client's seed: speculative auto keeps its tokens
  }
  p.seed_given = false;
  EXPECT_FALSE(engine_requests(p, prompt, 100, "t")[0].seeded);
  p.seed_given = true;
  p.max_tokens = 5;
  EXPECT_EQ(engine_requests(p, prompt, 100, "t")[0].max_tokens, 5);
  p.max_tokens = -1;
  EXPECT_EQ(error_of([&] { engine_requests(p, prompt, 4, "t"); }).first, 400);  // prompt fills it
}

TEST(OpenAiApi, ChatStreamChoices) {
  ChoiceBuilder b(Endpoint::Chat, 1, false, fake_bytes);
  const json role = b.role_choice();
  EXPECT_EQ(role["index"], 1);
  EXPECT_EQ(role["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(role["finish_reason"].is_null());

  auto c = b.on_event(token(3, "Hel"));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["delta"], json({{"content", "Hel"}}));
  EXPECT_TRUE(c[0]["logprobs"].is_null());
  EXPECT_TRUE(c[0]["finish_reason"].is_null());
  EXPECT_TRUE(b.on_event(token(4, "")).empty());  // nothing to show yet: no chunk
  c = b.on_event(finish("stop", "lo"));
  ASSERT_EQ(c.size(), 2u);  // the held-back text, then the one finish chunk
  EXPECT_EQ(c[0]["delta"], json({{"content", "lo"}}));
  EXPECT_TRUE(c[0]["finish_reason"].is_null());
  EXPECT_EQ(c[1]["delta"], json::object());
  EXPECT_EQ(c[1]["finish_reason"], "stop");
  EXPECT_TRUE(b.finished());
  EXPECT_EQ(b.completion_tokens(), 2);

  const json f = b.final_choice();
  EXPECT_EQ(f["message"], json({{"role", "assistant"}, {"content", "Hello"}}));
  EXPECT_EQ(f["finish_reason"], "stop");
  EXPECT_TRUE(f["logprobs"].is_null());
}

TEST(OpenAiApi, ChatLogprobsShape) {
  ChoiceBuilder b(Endpoint::Chat, 0, true, fake_bytes);
  auto c = b.on_event(token(7, "", -0.25f, {{7, -0.25f}, {9, -1.5f}}));
  ASSERT_EQ(c.size(), 1u);  // no text, but logprobs: still a chunk
  const json& entry = c[0]["logprobs"]["content"][0];
  EXPECT_EQ(entry["logprob"], -0.25);
  EXPECT_EQ(entry["bytes"], json({0xC3}));
  EXPECT_EQ(entry["token"], "\xEF\xBF\xBD");  // U+FFFD for the half character
  ASSERT_EQ(entry["top_logprobs"].size(), 2u);
  EXPECT_EQ(entry["top_logprobs"][1], json({{"token", "<9>"}, {"logprob", -1.5}, {"bytes", {60, 57, 62}}}));
  b.on_event(token(5, "é", -std::numeric_limits<float>::infinity()));
  b.on_event(finish("length"));
  const json f = b.final_choice();
  ASSERT_EQ(f["logprobs"]["content"].size(), 2u);
  EXPECT_EQ(f["logprobs"]["content"][1]["logprob"], -9999.0);  // JSON has no -inf
  EXPECT_EQ(f["finish_reason"], "length");
}

TEST(OpenAiApi, CompletionChoicesAndLogprobs) {
  ChoiceBuilder b(Endpoint::Completion, 0, true, fake_bytes);
  auto c = b.on_event(token(12, "ab", -0.5f, {{12, -0.5f}, {3, -2.0f}}));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["text"], "ab");
  EXPECT_EQ(c[0]["logprobs"]["tokens"], json({"<12>"}));
  EXPECT_EQ(c[0]["logprobs"]["token_logprobs"], json({-0.5}));
  EXPECT_EQ(c[0]["logprobs"]["top_logprobs"], json::parse(R"([{"<12>": -0.5, "<3>": -2.0}])"));
  EXPECT_EQ(c[0]["logprobs"]["text_offset"], json({0}));
  c = b.on_event(token(4, "c", -1.0f));
  EXPECT_EQ(c[0]["logprobs"]["text_offset"], json({4}));  // after "<12>"'s 4 bytes
  c = b.on_event(finish("length", "", 2, 0));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["text"], "");
  EXPECT_EQ(c[0]["finish_reason"], "length");
  const json f = b.final_choice();
  EXPECT_EQ(f["text"], "abc");
  EXPECT_EQ(f["logprobs"]["tokens"], json({"<12>", "<4>"}));
  EXPECT_EQ(f["logprobs"]["text_offset"], json({0, 4}));
  EXPECT_EQ(f["logprobs"]["top_logprobs"].size(), 2u);
}

TEST(OpenAiApi, ResponseAndChunkShapes) {
  ResponseMeta m{Endpoint::Chat, "chatcmpl-abc", 1700000000, "tiny"};
  const Usage u{10, 5, 4};
  ChoiceBuilder b(Endpoint::Chat, 0, false, fake_bytes);
  b.on_event(token(1, "hi"));
  b.on_event(finish("stop"));
  const json r = response_json(m, {b.final_choice()}, u);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["id"], "chatcmpl-abc");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["model"], "tiny");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(r["usage"], json::parse(R"({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                                        "prompt_tokens_details": {"cached_tokens": 4}})"));

  json chunk = chunk_json(m, {b.role_choice()}, true);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  ASSERT_TRUE(chunk.contains("usage"));
  EXPECT_TRUE(chunk["usage"].is_null());
  EXPECT_FALSE(chunk_json(m, {b.role_choice()}, false).contains("usage"));
  const json last = usage_chunk_json(m, u);
  EXPECT_TRUE(last["choices"].is_array() && last["choices"].empty());
  EXPECT_EQ(last["usage"]["total_tokens"], 15);

  m.kind = Endpoint::Completion;
  EXPECT_EQ(response_json(m, {}, u)["object"], "text_completion");
  EXPECT_EQ(chunk_json(m, {}, false)["object"], "text_completion");
  EXPECT_EQ(new_response_id(Endpoint::Chat).rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(new_response_id(Endpoint::Completion).rfind("cmpl-", 0), 0u);
}

TEST(OpenAiApi, SseFraming) {
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  // Invalid UTF-8 never throws: it is replaced.
  EXPECT_EQ(sse_event(json{{"t", std::string("\xC3")}}), "data: {\"t\":\"\xEF\xBF\xBD\"}\n\n");
}

TEST(OpenAiApi, ErrorBodies) {
  const json e = error_body(ApiError(400, "temperature: bad", "temperature"));
  EXPECT_EQ(e, json::parse(R"({"error": {"message": "temperature: bad", "type": "invalid_request_error",
                                         "param": "temperature", "code": null}})"));
  const json k = error_body(ApiError(401, "no key", "", "invalid_api_key"));
  EXPECT_EQ(k["error"]["type"], "authentication_error");
  EXPECT_EQ(k["error"]["code"], "invalid_api_key");
  EXPECT_TRUE(k["error"]["param"].is_null());
  EXPECT_EQ(error_body(ApiError(404, "x", "model", "model_not_found"))["error"]["type"], "invalid_request_error");
  EXPECT_EQ(error_body(ApiError(429, "x"))["error"]["type"], "rate_limit_error");
  EXPECT_EQ(error_body(ApiError(500, "x"))["error"]["type"], "server_error");
}

TEST(OpenAiApi, MetricsText) {
  EngineMetrics m;
  m.running = 3;
  m.waiting = 1;
  m.generation_tokens = 42;
  m.ttft.bounds = {0.1, 1};
  m.ttft.counts = {2, 1, 1};
  m.ttft.count = 4;
  m.ttft.sum = 3.5;
  const std::string t = metrics_text(m);
  for (const char* name :
       {"dsv3_requests_running", "dsv3_requests_waiting", "dsv3_prompt_tokens_total",
        "dsv3_generation_tokens_total", "dsv3_requests_finished_total", "dsv3_time_to_first_token_seconds",
        "dsv3_time_per_output_token_seconds", "dsv3_kv_blocks_used", "dsv3_kv_blocks_total",
        "dsv3_prefix_cache_queries_total", "dsv3_prefix_cache_hits_total", "dsv3_spec_drafted_tokens_total",
        "dsv3_spec_accepted_tokens_total", "dsv3_preemptions_total"}) {
    EXPECT_NE(t.find(std::string("# HELP ") + name + " "), std::string::npos) << name;
    EXPECT_NE(t.find(std::string("# TYPE ") + name + " "), std::string::npos) << name;
  }
  EXPECT_NE(t.find("# TYPE dsv3_requests_running gauge\ndsv3_requests_running 3\n"), std::string::npos);
  EXPECT_NE(t.find("# TYPE dsv3_generation_tokens_total counter\ndsv3_generation_tokens_total 42\n"),
            std::string::npos);
  EXPECT_NE(t.find("dsv3_time_to_first_token_seconds_bucket{le=\"0.1\"} 2\n"
                   "dsv3_time_to_first_token_seconds_bucket{le=\"1\"} 3\n"
                   "dsv3_time_to_first_token_seconds_bucket{le=\"+Inf\"} 4\n"
                   "dsv3_time_to_first_token_seconds_sum 3.5\n"
                   "dsv3_time_to_first_token_seconds_count 4\n"),
            std::string::npos);
  EXPECT_NE(t.find("dsv3_time_per_output_token_seconds_bucket{le=\"+Inf\"} 0\n"), std::string::npos);
  EXPECT_EQ(t.back(), '\n');
  EXPECT_NE(t.find("dsv3_spec_mode{mode=\"off\"} 1\n"), std::string::npos);
  EXPECT_EQ(t.find("dsv3_spec_drafting"), std::string::npos);  // no policy runs

  // Speculation auto: its choice and estimates per batch-size range.
  m.spec_mode = SpecMode::Auto;
  SpecReport r1, r8;
  r1.drafting = true;
  r1.plain_step_s = 0.004;
  r1.verify_step_s = 0.005;
  r1.acceptance = 0.75;
  r8.batch_lo = 8;
  r8.batch_hi = 15;
  m.spec = {r1, r8};
  const std::string s = metrics_text(m);
  for (const char* line : {"dsv3_spec_mode{mode=\"auto\"} 1\n", "dsv3_spec_drafting{batch=\"1\"} 1\n",
                           "dsv3_spec_drafting{batch=\"8-15\"} 0\n",
                           "dsv3_spec_plain_step_seconds{batch=\"1\"} 0.004\n",
                           "dsv3_spec_verify_step_seconds{batch=\"1\"} 0.005\n",
                           "dsv3_spec_acceptance 0.75\n", "# TYPE dsv3_spec_estimated_speedup gauge\n"})
    EXPECT_NE(s.find(line), std::string::npos) << line;
}

TEST(OpenAiApi, TokenizeAndDetokenize) {
  const auto t = tok::Tokenizer::from_path("tests/data/tokenizer/trained_tokenizer.json");
  const json r = tokenize_json(*t, {{"prompt", "hello world"}, {"add_special_tokens", false}}, 512);
  EXPECT_EQ(r["count"], r["tokens"].size());
  EXPECT_EQ(r["max_model_len"], 512);
  EXPECT_EQ(r["tokens"].get<std::vector<int32_t>>(), t->encode("hello world", false));
  EXPECT_EQ(detokenize_json(*t, {{"tokens", r["tokens"]}})["prompt"], "hello world");

  // Messages: the chat template's text, starting with BOS.
  const json c = tokenize_json(*t, {{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, 512);
  ASSERT_FALSE(c["tokens"].empty());
  EXPECT_EQ(c["tokens"][0], 0);

  using P = std::pair<int, std::string>;
  EXPECT_EQ(error_of([&] { tokenize_json(*t, json::object(), 1); }), P(400, "prompt"));
  EXPECT_EQ(error_of([&] { tokenize_json(*t, {{"prompt", 5}}, 1); }), P(400, "prompt"));
  EXPECT_EQ(error_of([&] { tokenize_json(*t, {{"prompt", "a"}, {"messages", json::array()}}, 1); }).first, 400);
  EXPECT_EQ(error_of([&] { detokenize_json(*t, {{"tokens", {1, 1 << 30}}}); }), P(400, "tokens"));
  EXPECT_EQ(error_of([&] { detokenize_json(*t, {{"tokens", "abc"}}); }), P(400, "tokens"));
  EXPECT_EQ(error_of([&] { detokenize_json(*t, json::object()); }), P(400, "tokens"));
}
