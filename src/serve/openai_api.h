// The OpenAI wire format of `dsv3 serve`, as free functions the HTTP layer calls and the tests
// drive without a server: request JSON → checked parameters → engine Requests; engine Events
// → response objects and stream chunks; errors → {"error": {...}}; metrics → Prometheus text.
//
// References: the OpenAI API reference for /v1/chat/completions and /v1/completions (field
// names, object names, the streamed chunk shapes, logprobs layouts), vLLM's OpenAI server
// (prompt forms of /v1/completions, /tokenize, /detokenize, stream_options.include_usage).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "serve/engine.h"
#include "tokenizer/chat.h"

namespace dsv3::tok { class Tokenizer; }

namespace dsv3::serve {

using json = nlohmann::json;

// An error answered as {"error": {"message", "type", "param", "code"}} with `status`.
// type defaults from the status (400 invalid_request_error, 401 authentication_error, ...).
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "",
           std::string type = "");
  int status;
  std::string type, param, code;  // "" → null in the JSON (type never empty)
};
json error_body(const ApiError& e);
// The error type OpenAI uses for an HTTP status.
const char* error_type_for_status(int status);

// The request body as a JSON object; ApiError 400 for malformed JSON or a non-object.
json parse_body(const std::string& body);

// Parameters both endpoints share, checked (ApiError 400 naming the param otherwise).
struct GenParams {
  std::string model;             // "" when not given
  int64_t n = 1;                 // choices per prompt, [1, kMaxChoices]
  bool stream = false;
  bool include_usage = false;    // stream_options.include_usage
  int64_t max_tokens = -1;       // -1: not given (the rest of the context)
  SamplingParams sampling;
  bool seed_given = false;
  float presence_penalty = 0, frequency_penalty = 0;
  std::vector<std::string> stop;
  int top_logprobs = -1;         // -1: no logprobs; else the engine's 0..kMaxTopLogprobs
  bool ignore_eos = false;       // vLLM's extension
};
constexpr int64_t kMaxChoices = 128;      // n, and n × prompts for /v1/completions
constexpr int kMaxTopLogprobs = 20;

struct ChatRequest {
  GenParams params;
  std::vector<tok::ChatMessage> messages;  // content parts joined; "developer" → "system"
};

// One prompt of /v1/completions: text, or token ids as given.
struct Prompt {
  bool is_text = true;
  std::string text;
  std::vector<int32_t> ids;
};
struct CompletionRequest {
  GenParams params;
  std::vector<Prompt> prompts;  // ≥ 1
};

ChatRequest parse_chat_request(const json& body);
CompletionRequest parse_completion_request(const json& body);

// Prompt token ids. Chat: the model's chat template (as `dsv3 chat`), with the generation
// prompt, tokenized without added special tokens (the template holds BOS). Completions:
// text tokenized with the post-processor's special tokens (BOS, as `dsv3 generate`); ids as
// given (the engine checks their range).
std::vector<int32_t> chat_prompt_ids(const tok::Tokenizer& t, const std::vector<tok::ChatMessage>& m,
                                     bool add_generation_prompt = true);
std::vector<int32_t> completion_prompt_ids(const tok::Tokenizer* t, const Prompt& p);

// The engine requests of one prompt: n of them; with a seed, choice i gets seed + i.
// max_tokens not given → context − prompt length (the engine rejects a prompt that fills it).
std::vector<Request> engine_requests(const GenParams& p, const std::vector<int32_t>& prompt,
                                     int64_t context, const std::string& tag);

// ---- responses --------------------------------------------------------------------------

enum class Endpoint { Chat, Completion };

struct ResponseMeta {
  Endpoint kind = Endpoint::Chat;
  std::string id;       // chatcmpl-… / cmpl-…
  int64_t created = 0;  // unix seconds
  std::string model;
};
// A fresh id with the endpoint's prefix and 24 random hex digits.
std::string new_response_id(Endpoint kind);

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};
json usage_json(const Usage& u);

// A token's raw bytes (the tokenizer's token_bytes); logprob entries show them lossily as
// UTF-8 text and exactly as a byte list.
using TokenBytes = std::function<std::string(int32_t)>;

// One choice: its engine events in, its chunks (streamed) or its final object out.
class ChoiceBuilder {
 public:
  ChoiceBuilder(Endpoint kind, int64_t index, bool logprobs, TokenBytes token_bytes);

  // Streamed: the chunk choices this event makes, in order — nothing for a Token event with
  // neither text nor logprobs; for Finish the held-back text (if any), then the one choice
  // with the finish_reason. Also accumulates for final_choice(). Error events are the
  // caller's (it answers them); passing one is an internal error.
  std::vector<json> on_event(const Event& e);
  // The first chat delta, {"role": "assistant", "content": ""}.
  json role_choice() const;

  bool finished() const { return !finish_reason_.empty(); }
  json final_choice() const;  // non-streamed: message / text, logprobs, finish_reason
  int64_t completion_tokens() const { return completion_tokens_; }
  int64_t cached_tokens() const { return cached_tokens_; }

 private:
  json logprobs_json(const std::vector<const Event*>& tokens, int64_t offset0) const;
  json choice(json payload, json logprobs, const std::string& finish) const;

  Endpoint kind_;
  int64_t index_;
  bool logprobs_;
  TokenBytes token_bytes_;
  std::string text_, finish_reason_;
  std::vector<Event> tokens_;   // Token events, kept for the non-streamed logprobs
  int64_t offset_ = 0;          // completions' text_offset: bytes of the tokens so far
  int64_t completion_tokens_ = 0, cached_tokens_ = 0;
};

// A complete (non-streamed) response object: chat.completion / text_completion.
json response_json(const ResponseMeta& m, const std::vector<json>& choices, const Usage& u);
// One stream chunk holding `choices`; with include_usage it carries "usage": null.
json chunk_json(const ResponseMeta& m, std::vector<json> choices, bool include_usage);
// The last chunk with include_usage: "choices": [] and the usage.
json usage_chunk_json(const ResponseMeta& m, const Usage& u);
// "data: <json>\n\n" (invalid UTF-8 replaced, never a throw); sse_done() is "data: [DONE]\n\n".
std::string sse_event(const json& j);
const std::string& sse_done();
// JSON text for a response body (invalid UTF-8 replaced).
std::string dump(const json& j);

// GET /v1/models: {"object": "list", "data": [model_json]}.
json model_json(const std::string& name, int64_t created, int64_t context);

// POST /tokenize and /detokenize bodies → response objects (ApiError 400 on bad input).
json tokenize_json(const tok::Tokenizer& t, const json& body, int64_t context);
json detokenize_json(const tok::Tokenizer& t, const json& body);

// GET /metrics: Prometheus text exposition format 0.0.4 (metrics_text.cpp).
std::string metrics_text(const EngineMetrics& m);
// GET /v1/expert_load and `dsv3 serve --expert-load-out`: {"weight": [[assignments per
// expert] per MoE layer that routed any], "layers": [their indices], "assignments": [each
// layer's total]} — `dsv3 eplb --load` reads "weight" (metrics_text.cpp).
json expert_load_json(const EngineMetrics& m);

}  // namespace dsv3::serve
