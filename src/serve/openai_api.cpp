#include "serve/openai_api.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/check.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace dsv3::serve {

ApiError::ApiError(int status_, const std::string& message, std::string param_, std::string code_,
                   std::string type_)
    : std::runtime_error(message),
      status(status_),
      type(type_.empty() ? error_type_for_status(status_) : std::move(type_)),
      param(std::move(param_)),
      code(std::move(code_)) {}

const char* error_type_for_status(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

json error_body(const ApiError& e) {
  const auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"error",
           {{"message", e.what()}, {"type", e.type}, {"param", or_null(e.param)}, {"code", or_null(e.code)}}}};
}

json parse_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

// ---- request parameters -----------------------------------------------------------------

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, param);
}

// The field, or nullptr when absent or null (clients send null for "not set").
const json* field(const json& b, const char* key) {
  const auto it = b.find(key);
  return it == b.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& b, const char* key, bool def) {
  const json* v = field(b, key);
  if (!v) return def;
  if (!v->is_boolean()) bad(key, str_cat(key, ": expected a boolean, got ", v->type_name()));
  return v->get<bool>();
}

double get_number(const json& b, const char* key, double def, double lo, double hi,
                  bool lo_open = false) {
  const json* v = field(b, key);
  if (!v) return def;
  if (!v->is_number()) bad(key, str_cat(key, ": expected a number, got ", v->type_name()));
  const double x = v->get<double>();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
    bad(key, str_cat(key, ": must be in ", lo_open ? "(" : "[", lo, ", ", hi, "], got ", x));
  return x;
}

// An integer (a float with an integral value is accepted: 16.0 from some clients).
int64_t get_int(const json& b, const char* key, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(b, key);
  if (!v) return def;
  int64_t x = 0;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    x = u > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(u);
  } else if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else if (v->is_number_float() && std::nearbyint(v->get<double>()) == v->get<double>() &&
             std::fabs(v->get<double>()) < 9e18) {
    x = int64_t(v->get<double>());
  } else {
    bad(key, str_cat(key, ": expected an integer, got ", v->is_number() ? "a fraction" : v->type_name()));
  }
  if (x < lo || x > hi) bad(key, str_cat(key, ": must be in [", lo, ", ", hi, "], got ", x));
  return x;
}

void refuse_if(bool cond, const char* key, const char* what) {
  if (cond) bad(key, str_cat(key, ": ", what, " is not supported by this server"));
}

GenParams parse_common(const json& b) {
  GenParams p;
  if (const json* m = field(b, "model")) {
    if (!m->is_string()) bad("model", str_cat("model: expected a string, got ", m->type_name()));
    p.model = m->get<std::string>();
  }
  p.stream = get_bool(b, "stream", false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "stream_options: expected an object");
    p.include_usage = get_bool(*so, "include_usage", false);
  }
  p.n = get_int(b, "n", 1, 1, kMaxChoices);
  p.max_tokens = get_int(b, "max_tokens", -1, 0, INT64_MAX);
  p.max_tokens = get_int(b, "max_completion_tokens", p.max_tokens, 0, INT64_MAX);
  p.sampling.temperature = float(get_number(b, "temperature", 1.0, 0, 2));
  p.sampling.top_p = float(get_number(b, "top_p", 1.0, 0, 1, /*lo_open=*/true));
  p.sampling.top_k = get_int(b, "top_k", 0, -1, INT64_MAX);  // -1 = off (vLLM's spelling)
  if (p.sampling.top_k < 0) p.sampling.top_k = 0;
  if (const json* s = field(b, "seed")) {
    if (!s->is_number_integer()) bad("seed", str_cat("seed: expected an integer, got ", s->type_name()));
    p.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>() : uint64_t(s->get<int64_t>());
    p.seed_given = true;
  }
  p.presence_penalty = float(get_number(b, "presence_penalty", 0, -2, 2));
  p.frequency_penalty = float(get_number(b, "frequency_penalty", 0, -2, 2));
  if (const json* s = field(b, "stop")) {
    if (s->is_string()) {
      p.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const json& x : *s) {
        if (!x.is_string()) bad("stop", "stop: expected a string or an array of strings");
        p.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", str_cat("stop: expected a string or an array of strings, got ", s->type_name()));
    }
    // An empty stop string would match before any text; OpenAI ignores it, so do we.
    std::erase(p.stop, std::string());
  }
  p.ignore_eos = get_bool(b, "ignore_eos", false);
  if (const json* lb = field(b, "logit_bias"))
    refuse_if(!lb->is_object() || !lb->empty(), "logit_bias", "a non-empty logit_bias");
  return p;
}

// "Text" content parts joined; a string stays as it is.
json message_content(const json& c, const std::string& where) {
  if (!c.is_array()) return c;
  std::string text;
  for (size_t k = 0; k < c.size(); ++k) {
    const json& part = c[k];
    const std::string pw = str_cat(where, ".content[", k, "]");
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      bad("messages", pw + ": expected an object {\"type\": \"text\", \"text\": ...}");
    if (part["type"] != "text")
      bad("messages", str_cat(pw, ": content parts of type '", part["type"].get<std::string>(),
                              "' are not supported (only 'text')"));
    if (!part.contains("text") || !part["text"].is_string()) bad("messages", pw + ".text: expected a string");
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

ChatRequest parse_chat_request(const json& b) {
  ChatRequest r;
  r.params = parse_common(b);
  const json* logprobs = field(b, "logprobs");
  if (logprobs && !logprobs->is_boolean())
    bad("logprobs", str_cat("logprobs: expected a boolean, got ", logprobs->type_name()));
  const bool want = logprobs && logprobs->get<bool>();
  const int64_t top = get_int(b, "top_logprobs", -1, 0, kMaxTopLogprobs);
  if (top >= 0 && !want) bad("top_logprobs", "top_logprobs: needs \"logprobs\": true");
  r.params.top_logprobs = want ? int(std::max<int64_t>(top, 0)) : -1;
  if (const json* t = field(b, "tools")) refuse_if(!t->is_array() || !t->empty(), "tools", "tool calling");
  if (const json* f = field(b, "response_format")) {
    const json* type = f->is_object() ? field(*f, "type") : nullptr;
    refuse_if(!f->is_object() || (type && *type != "text"), "response_format",
              "a response_format other than {\"type\": \"text\"}");
  }

  const json* msgs = field(b, "messages");
  if (!msgs) bad("messages", "messages: required");
  if (!msgs->is_array()) bad("messages", str_cat("messages: expected an array, got ", msgs->type_name()));
  if (msgs->empty()) bad("messages", "messages: must hold at least one message");
  json norm = json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const std::string where = str_cat("messages[", i, "]");
    const json& m = (*msgs)[i];
    if (!m.is_object()) bad("messages", where + ": expected an object");
    json copy = m;
    if (copy.contains("role") && copy["role"].is_string()) {
      const std::string role = copy["role"].get<std::string>();
      if (role == "developer") copy["role"] = "system";  // OpenAI's newer name for it
      else if (role != "system" && role != "user" && role != "assistant" && role != "tool")
        bad("messages", str_cat(where, ".role: '", role,
                                "' is not one of system, developer, user, assistant, tool"));
    }
    if (copy.contains("content")) copy["content"] = message_content(copy["content"], where);
    norm.push_back(std::move(copy));
  }
  try {
    r.messages = tok::parse_chat_messages(norm);
  } catch (const Error& e) {
    bad("messages", e.what());
  }
  return r;
}

CompletionRequest parse_completion_request(const json& b) {
  CompletionRequest r;
  r.params = parse_common(b);
  const int64_t lp = get_int(b, "logprobs", -1, 0, kMaxTopLogprobs);
  r.params.top_logprobs = int(lp);
  refuse_if(get_bool(b, "echo", false), "echo", "echo");
  if (const json* s = field(b, "suffix")) refuse_if(!s->is_string() || !s->get<std::string>().empty(), "suffix", "suffix");
  const int64_t best_of = get_int(b, "best_of", r.params.n, 1, kMaxChoices);
  refuse_if(best_of != r.params.n, "best_of", "best_of other than n");

  const json* pr = field(b, "prompt");
  if (!pr) bad("prompt", "prompt: required");
  const auto id_list = [](const json& a, const std::string& where) {
    if (a.empty()) bad("prompt", where + ": empty token list");
    std::vector<int32_t> ids;
    for (const json& x : a) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)
        bad("prompt", where + ": token ids must be non-negative integers");
      ids.push_back(int32_t(x.get<int64_t>()));
    }
    return ids;
  };
  if (pr->is_string()) {
    r.prompts.push_back({true, pr->get<std::string>(), {}});
  } else if (pr->is_array() && !pr->empty()) {
    if ((*pr)[0].is_number()) {
      r.prompts.push_back({false, "", id_list(*pr, "prompt")});
    } else {
      for (size_t i = 0; i < pr->size(); ++i) {
        const json& x = (*pr)[i];
        if (x.is_string()) r.prompts.push_back({true, x.get<std::string>(), {}});
        else if (x.is_array()) r.prompts.push_back({false, "", id_list(x, str_cat("prompt[", i, "]"))});
        else bad("prompt", str_cat("prompt[", i, "]: expected a string or an array of token ids"));
      }
    }
  } else {
    bad("prompt", "prompt: expected a string, an array of token ids, or an array of those");
  }
  if (int64_t(r.prompts.size()) * r.params.n > kMaxChoices)
    bad("n", str_cat("n × prompts must be at most ", kMaxChoices, ", got ",
                     int64_t(r.prompts.size()) * r.params.n));
  return r;
}

std::vector<int32_t> chat_prompt_ids(const tok::Tokenizer& t, const std::vector<tok::ChatMessage>& m,
                                     bool add_generation_prompt) {
  const std::string bos = t.bos_token().empty() ? "<｜begin▁of▁sentence｜>" : t.bos_token();
  return t.encode(tok::render_chat_deepseek_v3(m, add_generation_prompt, bos), false);
}

std::vector<int32_t> completion_prompt_ids(const tok::Tokenizer* t, const Prompt& p) {
  if (!p.is_text) return p.ids;
  if (!t) bad("prompt", "prompt: this model has no tokenizer.json; send token ids instead of text");
  return t->encode(p.text, true);
}

std::vector<Request> engine_requests(const GenParams& p, const std::vector<int32_t>& prompt,
                                     int64_t context, const std::string& tag) {
  const int64_t len = int64_t(prompt.size());
  if (p.max_tokens < 0 && len >= context)
    bad("", str_cat("the prompt has ", len, " tokens; this model's context is ", context,
                    " tokens (prompt + max_tokens must fit)"));
  std::vector<Request> out;
  std::random_device rd;  // unseeded requests differ from each other, as OpenAI's do
  for (int64_t i = 0; i < p.n; ++i) {
    Request r;
    r.prompt = prompt;
    r.max_tokens = p.max_tokens >= 0 ? p.max_tokens : context - len;
    r.sampling = p.sampling;
    r.sampling.seed = p.seed_given ? p.sampling.seed + uint64_t(i) : (uint64_t(rd()) << 32 | rd());
    r.seeded = p.seed_given;
    r.presence_penalty = p.presence_penalty;
    r.frequency_penalty = p.frequency_penalty;
    r.stop = p.stop;
    r.top_logprobs = p.top_logprobs;
    r.ignore_eos = p.ignore_eos;
    r.tag = p.n > 1 ? str_cat(tag, "/", i) : tag;
    out.push_back(std::move(r));
  }
  return out;
}

// ---- responses --------------------------------------------------------------------------

std::string new_response_id(Endpoint kind) {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = kind == Endpoint::Chat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 24; ++i) id += hex[gen() & 15];
  return id;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {

// JSON has no infinities; OpenAI reports an impossible token as -9999.
double finite_logprob(float x) { return std::isfinite(x) ? double(x) : -9999.0; }

json byte_list(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(int(c));
  return a;
}

}  // namespace

ChoiceBuilder::ChoiceBuilder(Endpoint kind, int64_t index, bool logprobs, TokenBytes token_bytes)
    : kind_(kind), index_(index), logprobs_(logprobs), token_bytes_(std::move(token_bytes)) {}

json ChoiceBuilder::choice(json payload, json logprobs, const std::string& finish) const {
  json c = {{"index", index_}};
  c[kind_ == Endpoint::Chat ? "delta" : "text"] = std::move(payload);
  c["logprobs"] = std::move(logprobs);
  c["finish_reason"] = finish.empty() ? json(nullptr) : json(finish);
  return c;
}

json ChoiceBuilder::role_choice() const {
  return choice({{"role", "assistant"}, {"content", ""}}, nullptr, "");
}

json ChoiceBuilder::logprobs_json(const std::vector<const Event*>& tokens, int64_t offset0) const {
  if (kind_ == Endpoint::Chat) {
    json content = json::array();
    for (const Event* e : tokens) {
      const std::string b = token_bytes_(e->id);
      json top = json::array();
      for (const TokenLogprob& t : e->top) {
        const std::string tb = token_bytes_(t.id);
        top.push_back({{"token", tok::utf8_lossy(tb)}, {"logprob", finite_logprob(t.logprob)},
                       {"bytes", byte_list(tb)}});
      }
      content.push_back({{"token", tok::utf8_lossy(b)}, {"logprob", finite_logprob(e->logprob)},
                         {"bytes", byte_list(b)}, {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  json toks = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  int64_t off = offset0;
  for (const Event* e : tokens) {
    const std::string b = token_bytes_(e->id);
    toks.push_back(tok::utf8_lossy(b));
    lps.push_back(finite_logprob(e->logprob));
    json top = json::object();
    for (const TokenLogprob& t : e->top) top[tok::utf8_lossy(token_bytes_(t.id))] = finite_logprob(t.logprob);
    tops.push_back(std::move(top));
    offs.push_back(off);
    off += int64_t(b.size());
  }
  return {{"tokens", std::move(toks)}, {"token_logprobs", std::move(lps)},
          {"top_logprobs", std::move(tops)}, {"text_offset", std::move(offs)}};
}

std::vector<json> ChoiceBuilder::on_event(const Event& e) {
  DSV3_ASSERT(e.kind != Event::Kind::Error && !finished());
  const auto payload = [&](const std::string& text) {
    return kind_ == Endpoint::Chat ? json{{"content", text}} : json(text);
  };
  std::vector<json> out;
  if (e.kind == Event::Kind::Token) {
    ++completion_tokens_;
    text_ += e.text;
    json lp = nullptr;
    if (logprobs_) {
      lp = logprobs_json({&e}, offset_);
      offset_ += int64_t(token_bytes_(e.id).size());
      tokens_.push_back(e);
    }
    if (!e.text.empty() || logprobs_) out.push_back(choice(payload(e.text), std::move(lp), ""));
    return out;
  }
  // Finish.
  text_ += e.text;
  if (e.completion_tokens > 0) completion_tokens_ = e.completion_tokens;
  cached_tokens_ = e.cached_tokens;
  finish_reason_ = e.finish_reason.empty() ? "stop" : e.finish_reason;
  if (!e.text.empty()) out.push_back(choice(payload(e.text), nullptr, ""));
  out.push_back(choice(kind_ == Endpoint::Chat ? json::object() : json(""), nullptr, finish_reason_));
  return out;
}

json ChoiceBuilder::final_choice() const {
  json lp = nullptr;
  if (logprobs_) {
    std::vector<const Event*> ev;
    for (const Event& e : tokens_) ev.push_back(&e);
    lp = logprobs_json(ev, 0);
  }
  json c = {{"index", index_}};
  if (kind_ == Endpoint::Chat) c["message"] = {{"role", "assistant"}, {"content", text_}};
  else c["text"] = text_;
  c["logprobs"] = std::move(lp);
  c["finish_reason"] = finish_reason_.empty() ? json(nullptr) : json(finish_reason_);
  return c;
}

namespace {

json envelope(const ResponseMeta& m, const char* object) {
  return {{"id", m.id}, {"object", object}, {"created", m.created}, {"model", m.model}};
}

}  // namespace

json response_json(const ResponseMeta& m, const std::vector<json>& choices, const Usage& u) {
  json j = envelope(m, m.kind == Endpoint::Chat ? "chat.completion" : "text_completion");
  j["choices"] = choices;
  j["usage"] = usage_json(u);
  return j;
}

json chunk_json(const ResponseMeta& m, std::vector<json> choices, bool include_usage) {
  json j = envelope(m, m.kind == Endpoint::Chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = std::move(choices);
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json usage_chunk_json(const ResponseMeta& m, const Usage& u) {
  json j = chunk_json(m, {}, false);
  j["choices"] = json::array();
  j["usage"] = usage_json(u);
  return j;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump(j) + "\n\n"; }

const std::string& sse_done() {
  static const std::string done = "data: [DONE]\n\n";
  return done;
}

json model_json(const std::string& name, int64_t created, int64_t context) {
  return {{"id", name}, {"object", "model"}, {"created", created}, {"owned_by", "dsv3"},
          {"max_model_len", context}};
}

json tokenize_json(const tok::Tokenizer& t, const json& b, int64_t context) {
  const json* prompt = field(b, "prompt");
  const json* msgs = field(b, "messages");
  if (!prompt == !msgs) bad("prompt", "give exactly one of \"prompt\" (a string) and \"messages\"");
  std::vector<int32_t> ids;
  if (prompt) {
    if (!prompt->is_string()) bad("prompt", str_cat("prompt: expected a string, got ", prompt->type_name()));
    ids = t.encode(prompt->get<std::string>(), get_bool(b, "add_special_tokens", true));
  } else {
    json chat = {{"messages", *msgs}};
    ids = chat_prompt_ids(t, parse_chat_request(chat).messages,
                          get_bool(b, "add_generation_prompt", true));
  }
  return {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", context}};
}

json detokenize_json(const tok::Tokenizer& t, const json& b) {
  const json* toks = field(b, "tokens");
  if (!toks) bad("tokens", "tokens: required");
  if (!toks->is_array()) bad("tokens", str_cat("tokens: expected an array of token ids, got ", toks->type_name()));
  std::vector<int32_t> ids;
  for (const json& x : *toks) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= t.vocab_size())
      bad("tokens", str_cat("tokens: expected token ids in [0, ", t.vocab_size(), ")"));
    ids.push_back(int32_t(x.get<int64_t>()));
  }
  try {
    return {{"prompt", t.decode(ids)}};
  } catch (const Error& e) {
    bad("tokens", str_cat("tokens: ", e.what()));
  }
}

}  // namespace dsv3::serve
