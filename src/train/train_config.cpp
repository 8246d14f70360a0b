#include "train/train_config.h"

#include <filesystem>
#include <set>

#include "core/check.h"
#include "io/file_util.h"
#include "io/json_strict.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Reader {
  const json& j;
  std::string where, prefix;
  std::set<std::string> seen;

  bool has(const char* k) { seen.insert(k); return j.contains(k) && !j[k].is_null(); }
  std::string key(const char* k) const { return prefix + k; }
  int64_t i64(const char* k, int64_t def, int64_t lo, int64_t hi) {
    if (!has(k)) return def;
    DSV3_CHECK(j[k].is_number_integer(), where, ": '", key(k), "' must be an integer");
    const int64_t v = j[k].get<int64_t>();
    DSV3_CHECK(v >= lo && v <= hi, where, ": '", key(k), "' = ", v, " must be in [", lo, ", ", hi, "]");
    return v;
  }
  double f64(const char* k, double def, double lo, double hi) {
    if (!has(k)) return def;
    DSV3_CHECK(j[k].is_number(), where, ": '", key(k), "' must be a number");
    const double v = j[k].get<double>();
    DSV3_CHECK(v >= lo && v <= hi, where, ": '", key(k), "' = ", v, " must be in [", lo, ", ", hi, "]");
    return v;
  }
  bool boolean(const char* k, bool def) {
    if (!has(k)) return def;
    DSV3_CHECK(j[k].is_boolean(), where, ": '", key(k), "' must be true or false");
    return j[k].get<bool>();
  }
  std::string str(const char* k, const std::string& def) {
    if (!has(k)) return def;
    DSV3_CHECK(j[k].is_string(), where, ": '", key(k), "' must be a string");
    return j[k].get<std::string>();
  }
  void no_unknown() {
    for (auto it = j.begin(); it != j.end(); ++it)
      DSV3_CHECK(seen.count(it.key()), where, ": unknown key '", prefix + it.key(), "'");
  }
};

std::string resolve(const std::string& p, const std::string& base) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(base) / p).string();
}

}  // namespace

TrainConfig parse_train_config(const std::string& text, const std::string& where,
                               const std::string& base_dir) {
  const json j = parse_json_strict(text, where, "the training config");
  DSV3_CHECK(j.is_object(), where, ": a training config must be a JSON object");
  TrainConfig t;
  t.text = text;
  Reader r{j, where, "", {}};
  DSV3_CHECK(r.has("model"), where, ": missing 'model' (a config.json object or a path to one)");
  if (j["model"].is_string()) {
    const std::string p = resolve(j["model"].get<std::string>(), base_dir);
    t.model_json = read_text_file(p);
    t.model = parse_model_config(t.model_json, p);
  } else {
    DSV3_CHECK(j["model"].is_object(), where, ": 'model' must be an object or a path");
    t.model_json = j["model"].dump(2);
    t.model = parse_model_config(t.model_json, where + ": model");
  }
  t.tokenizer = resolve(r.str("tokenizer", ""), base_dir);
  t.precision = parse_precision(r.str("precision", "bf16").c_str());
  t.batch = r.i64("batch", t.batch, 1, 1 << 20);
  t.seq_len = r.i64("seq_len", t.seq_len, 2, 1 << 24);
  t.steps = r.i64("steps", t.steps, 1, int64_t(1) << 40);
  t.seed = uint64_t(r.i64("seed", 1, 0, INT64_MAX));
  t.grad_clip = r.f64("grad_clip", t.grad_clip, 0, 1e30);
  t.fim_rate = r.f64("fim_rate", t.fim_rate, 0, 1);
  t.log_every = r.i64("log_every", t.log_every, 1, int64_t(1) << 40);
  t.checkpoint_every = r.i64("checkpoint_every", t.checkpoint_every, 0, int64_t(1) << 40);
  t.keep_checkpoints = r.i64("keep_checkpoints", t.keep_checkpoints, 1, 1000);
  t.eval_every = r.i64("eval_every", t.eval_every, -1, int64_t(1) << 40);
  t.eval_windows = r.i64("eval_windows", t.eval_windows, 1, 1 << 20);
  t.checkpoint_format = r.str("checkpoint_format", t.checkpoint_format);
  DSV3_CHECK(t.checkpoint_format == "bf16" || t.checkpoint_format == "fp8" || t.checkpoint_format == "f32",
             where, ": 'checkpoint_format' must be bf16, fp8 or f32");
  if (r.has("optimizer")) {
    const json& o = j["optimizer"];
    DSV3_CHECK(o.is_object(), where, ": 'optimizer' must be an object");
    Reader q{o, where, "optimizer.", {}};
    t.lr.lr = q.f64("lr", t.lr.lr, 0, 10);
    t.lr.lr_min = q.f64("lr_min", t.lr.lr * 0.1, 0, 10);
    t.lr.warmup_steps = q.i64("warmup_steps", std::min<int64_t>(100, t.steps / 10), 0, int64_t(1) << 40);
    t.lr.decay_start = q.i64("decay_start", t.lr.warmup_steps, 0, int64_t(1) << 40);
    t.adam.beta1 = q.f64("beta1", t.adam.beta1, 0, 0.999999);
    t.adam.beta2 = q.f64("beta2", t.adam.beta2, 0, 0.999999);
    t.adam.eps = q.f64("eps", t.adam.eps, 1e-30, 1);
    t.adam.weight_decay = q.f64("weight_decay", t.adam.weight_decay, 0, 10);
    const std::string mom = q.str("moments", "f32");
    DSV3_CHECK(mom == "f32" || mom == "bf16", where, ": 'optimizer.moments' must be f32 or bf16, got '",
               mom, "'");
    t.adam.bf16_moments = mom == "bf16";
    q.no_unknown();
  } else {
    t.lr.warmup_steps = std::min<int64_t>(100, t.steps / 10);
    t.lr.decay_start = t.lr.warmup_steps;
  }
  t.lr.total_steps = t.steps;
  DSV3_CHECK(t.lr.lr_min <= t.lr.lr, where, ": 'optimizer.lr_min' (", t.lr.lr_min,
             ") exceeds 'optimizer.lr' (", t.lr.lr, ")");
  DSV3_CHECK(t.lr.warmup_steps <= t.steps, where, ": 'optimizer.warmup_steps' (", t.lr.warmup_steps,
             ") exceeds 'steps' (", t.steps, ")");
  if (r.has("mtp")) {
    const json& m = j["mtp"];
    DSV3_CHECK(m.is_object(), where, ": 'mtp' must be an object");
    Reader q{m, where, "mtp.", {}};
    t.mtp = q.boolean("enabled", true);
    t.mtp_lambda = q.f64("lambda", t.mtp_lambda, 0, 100);
    t.mtp_lambda_late = q.f64("lambda_late", t.mtp_lambda, 0, 100);
    t.mtp_lambda_switch_step = q.i64("lambda_switch_step", -1, -1, int64_t(1) << 40);
    q.no_unknown();
  }
  if (t.mtp && t.model.num_nextn_predict_layers == 0) t.mtp = false;
  if (r.has("balance")) {
    const json& b = j["balance"];
    DSV3_CHECK(b.is_object(), where, ": 'balance' must be an object");
    Reader q{b, where, "balance.", {}};
    t.bias_update_speed = q.f64("gamma", t.bias_update_speed, 0, 1);
    t.bias_update_stop_step = q.i64("gamma_stop_step", -1, -1, int64_t(1) << 40);
    t.balance_alpha = q.f64("alpha", t.balance_alpha, 0, 100);
    q.no_unknown();
  }
  if (r.has("parallel")) {
    const json& pj = j["parallel"];
    DSV3_CHECK(pj.is_object(), where, ": 'parallel' must be an object");
    Reader q{pj, where, "parallel.", {}};
    ParallelConfig& pc = t.parallel;
    pc.dp_given = q.has("dp");
    pc.dp = q.i64("dp", pc.dp, 1, 1 << 20);
    pc.ep = q.i64("ep", pc.ep, 1, 1 << 20);
    pc.pp = q.i64("pp", pc.pp, 1, 1 << 20);
    pc.schedule = q.str("schedule", pc.schedule);
    pc.micro_batches = q.i64("micro_batches", pc.micro_batches, 1, 1 << 20);
    pc.max_nodes = q.i64("max_nodes", pc.max_nodes, 0, 1 << 20);
    pc.ranks_per_node = q.i64("ranks_per_node", pc.ranks_per_node, 0, 1 << 20);
    pc.zero_bucket_mb = q.f64("zero_bucket_mb", pc.zero_bucket_mb, 1e-3, 1e6);
    pc.overlap_micro_batches = q.boolean("overlap_micro_batches", pc.overlap_micro_batches);
    q.no_unknown();
  }
  DSV3_CHECK(t.seq_len <= t.model.max_position_embeddings, where, ": 'seq_len' (", t.seq_len,
             ") exceeds the model's max_position_embeddings (", t.model.max_position_embeddings, ")");
  if (t.bias_update_speed > 0)
    DSV3_CHECK(t.model.has_router_bias() || t.model.n_routed_experts == 0, where,
               ": 'balance.gamma' > 0 needs topk_method noaux_tc (the router bias); the model has '",
               t.model.topk_method, "' (set balance.gamma to 0)");
  r.no_unknown();
  return t;
}

TrainConfig load_train_config(const std::string& path) {
  const std::string text = read_text_file(path);
  return parse_train_config(text, path, fs::path(path).parent_path().string());
}

}  // namespace dsv3
