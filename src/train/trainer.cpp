#include "train/trainer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/clock.h"
#include "core/parallel.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "io/checkpoint.h"
#include "io/file_util.h"
#include "io/model_writer.h"
#include "io/safetensors.h"
#include "eval/held_out.h"
#include "parallel/comm.h"
#include "parallel/layout.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/train_weights.h"
#include "train/train_model.h"
#include "train/train_step.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

volatile std::sig_atomic_t g_signal = 0;
extern "C" void dsv3_on_signal(int s) { g_signal = s; }

std::string step_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%06lld", (long long)step);
  return b;
}

std::string fmt_duration(double s) {
  char b[32];
  if (s < 0 || !std::isfinite(s)) return "?";
  if (s < 60) std::snprintf(b, sizeof b, "%.0fs", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, int(s) / 60 % 60);
  return b;
}


// The process groups of a run (parallel/layout.h). One process: one-rank groups.
struct Dist {
  Layout lay;
  dist::Comm* world = nullptr;
  dist::Comm dp, ep;
  dist::Comm zero, pipe;  // pp > 1: the ZeRO group (every rank) and this dp rank's pipeline
  bool lead() const { return lay.rank == 0; }
  const dist::Comm& zero_group() const { return lay.pp > 1 ? zero : dp; }
};

struct State {
  const TrainConfig& cfg;
  const ParamSet& ps;
  TrainWeights& params;  // whole when saved (TrainStep::gather_params)
  TrainStep& ts;
  const Dist& d;
  std::string init_dir;  // --init's checkpoint (recorded in trainer_state.json), or ""
};

// Every weight finite, decided by the lead rank (which holds the whole arena after
// gather_params(…, true)) for all.
bool weights_finite(const State& st) {
  int32_t ok = 1;
  if (st.d.lead()) {
    const float* v = st.params.data();
    for (int64_t i = 0; i < st.params.size() && ok; ++i) ok = std::isfinite(v[i]) ? 1 : 0;
  }
  st.d.world->bcast(&ok, 1, 0);
  return ok != 0;
}

// The AdamW moments of the whole arena (the ZeRO shards in rank order) streamed into the lead
// rank's checkpoint writer: the other ranks send their shards in pieces of piece_bytes()
// (send_moment_shards), and the lead takes them as the writer asks for the bytes (one sender's
// messages with one tag arrive in order), holding one piece at a time instead of whole moments.
// Piece size: 64 MiB; DSV3_CHECKPOINT_PIECE_BYTES (the same on every rank) sets another, so
// tests stream many pieces through a tiny model.
int64_t piece_bytes() {
  static const int64_t b = [] {
    const char* e = std::getenv("DSV3_CHECKPOINT_PIECE_BYTES");
    if (e == nullptr || *e == 0) return int64_t(64) << 20;
    char* end = nullptr;
    const long long v = std::strtoll(e, &end, 10);
    DSV3_CHECK(end != nullptr && *end == 0 && v > 0 && v <= (int64_t(1) << 30),
               "DSV3_CHECKPOINT_PIECE_BYTES must be a byte count in [1, 2^30], got '", e, "'");
    return int64_t(v);
  }();
  return b;
}
constexpr int kMomentTag[2] = {7001, 7002};

void send_moment_shards(const dist::Comm& zg, AdamW& adam, int64_t piece) {
  std::vector<dist::Request> reqs;
  for (int which = 0; which < 2; ++which) {
    const TensorView v = adam.moment(which);
    const int64_t bytes = v.numel() * int64_t(dtype_size(v.dtype));
    for (int64_t at = 0; at < bytes; at += piece)
      reqs.push_back(zg.isend(static_cast<const char*>(v.data) + at, std::min(piece, bytes - at), 0,
                              kMomentTag[which]));
  }
  for (dist::Request& r : reqs) r.wait();
}

class MomentStream {
 public:
  MomentStream(const dist::Comm& zg, const std::vector<int64_t>& counts, const TensorView& mine, int which,
               int64_t piece)
      : zg_(zg), counts_(counts), mine_(mine), es_(dtype_size(mine.dtype)), tag_(kMomentTag[which]), piece_size_(piece) {}
  // Bytes [off, off + len) of the whole moment into dst; offsets only increase.
  void fill(void* dst, uint64_t off, size_t len) {
    char* out = static_cast<char*>(dst);
    while (len > 0) {
      while (off >= start_ + bytes(q_)) {  // the shard holding off (empty shards skipped)
        start_ += bytes(q_);
        ++q_;
        piece_at_ = piece_len_ = 0;
        DSV3_ASSERT(q_ < int(counts_.size()));
      }
      const uint64_t within = off - start_;
      size_t n = 0;
      if (q_ == zg_.rank()) {
        n = size_t(std::min<uint64_t>(len, bytes(q_) - within));
        std::memcpy(out, static_cast<const char*>(mine_.data) + within, n);
      } else {
        while (within >= piece_at_ + piece_len_) {  // the next piece of shard q_
          piece_at_ += piece_len_;
          piece_len_ = uint64_t(std::min<int64_t>(piece_size_, int64_t(bytes(q_) - piece_at_)));
          piece_.resize(size_t(piece_len_));
          zg_.recv(piece_.data(), int64_t(piece_len_), q_, tag_);
        }
        n = size_t(std::min<uint64_t>(len, piece_at_ + piece_len_ - within));
        std::memcpy(out, piece_.data() + (within - piece_at_), n);
      }
      out += n;
      off += n;
      len -= n;
    }
  }

 private:
  uint64_t bytes(int q) const { return uint64_t(counts_[size_t(q)]) * es_; }
  const dist::Comm& zg_;
  const std::vector<int64_t>& counts_;
  TensorView mine_;
  uint64_t es_;
  int tag_;
  int64_t piece_size_;
  int q_ = 0;
  uint64_t start_ = 0, piece_at_ = 0, piece_len_ = 0;
  std::vector<char> piece_;
};

void save_checkpoint(const State& st, const data::LoaderState& ls, int64_t step, double tokens,
                     const std::string& out) {
  const dist::Comm& zg = st.d.zero_group();
  AdamW& adam = st.ts.adam();
  // Rank 0's piece size for every rank (the environment can differ between machines).
  int64_t piece = piece_bytes();
  if (zg.size() > 1) zg.bcast(&piece, 1, 0);
  if (!st.d.lead()) {
    if (zg.size() > 1) send_moment_shards(zg, adam, piece);
    return;
  }
  const std::string name = step_name(step);
  const fs::path tmp = fs::path(out) / (".tmp-" + name);
  fs::remove_all(tmp);
  fs::create_directories(tmp / "trainer");
  ModelWriteOptions wo;
  wo.format = parse_checkpoint_format(st.cfg.checkpoint_format);
  wo.with_mtp = st.ps.with_mtp();
  write_model_checkpoint(st.cfg.model, tmp.string(),
                         [&](const WeightSpec& s) {
                           const ParamInfo* p = st.ps.find(s.name);
                           DSV3_ASSERT(p != nullptr);
                           return st.ps.view(st.params.data(), *p);
                         },
                         wo);
  for (const std::string& f : data::tokenizer_files(st.cfg.tokenizer))
    fs::copy_file(f, tmp / fs::path(f).filename(), fs::copy_options::overwrite_existing);
  SafetensorsWriter w((tmp / "trainer" / "state.safetensors").string());
  const int64_t n = st.ps.numel();
  const float* params = st.params.data();
  w.add_chunked("params", DType::F32, {n}, [params](void* dst, uint64_t off, size_t len) {
    std::memcpy(dst, reinterpret_cast<const char*>(params) + off, len);
  });
  std::vector<std::unique_ptr<MomentStream>> ms;
  for (int which = 0; which < 2; ++which) {
    const TensorView mine = adam.moment(which);
    if (zg.size() == 1) {
      w.add(which == 0 ? "adam_m" : "adam_v", mine);
      continue;
    }
    ms.push_back(std::make_unique<MomentStream>(zg, st.ts.shard_sizes(), mine, which, piece));
    MomentStream* m = ms.back().get();
    w.add_chunked(which == 0 ? "adam_m" : "adam_v", mine.dtype, {n},
                  [m](void* dst, uint64_t off, size_t len) { m->fill(dst, off, len); });
  }
  w.finish();
  json j;
  j["step"] = step;
  j["adam_t"] = st.ts.adam().step_count();
  j["tokens"] = tokens;
  j["loader"] = json::parse(ls.to_json());
  j["config"] = st.cfg.text;
  if (!st.init_dir.empty()) j["init"] = st.init_dir;
  j["layout"] = {{"dp", st.d.lay.dp}, {"ep", st.d.lay.ep}, {"pp", st.d.lay.pp},
                 {"micro_batches", st.d.lay.micro_batches}};
  if (st.d.lay.pp > 1) j["layout"]["schedule"] = st.d.lay.schedule;
  write_file_atomic((tmp / "trainer" / "trainer_state.json").string(), j.dump(1));
  const fs::path final_dir = fs::path(out) / name;
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  write_file_atomic((fs::path(out) / "latest").string(), name + "\n");
  // Keep the newest keep_checkpoints.
  std::vector<std::string> all;
  for (const auto& e : fs::directory_iterator(out))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0)
      all.push_back(e.path().filename().string());
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + size_t(st.cfg.keep_checkpoints) < all.size(); ++i)
    if (all[i] != name) fs::remove_all(fs::path(out) / all[i]);
}



std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// The checkpoint `latest` names, or "" when there is none.
std::string latest_name(const std::string& out) {
  const fs::path latest = fs::path(out) / "latest";
  return fs::exists(latest) ? trim(read_text_file(latest.string())) : std::string();
}

// One trainer per output directory: an exclusive flock on OUT/.lock, held while the run
// lives (the kernel drops it when the process ends, however it ends). A second `dsv3 train`
// on the same OUT would interleave checkpoints and metrics, and its start-up would delete
// the first one's half-written checkpoint; it stops with a message instead.
class OutDirLock {
 public:
  explicit OutDirLock(const std::string& out) {
    const std::string path = (fs::path(out) / ".lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    DSV3_CHECK(fd_ >= 0, out, ": cannot create ", path, " (", std::strerror(errno), ")");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      DSV3_FAIL(out, " is in use by another dsv3 train (", path,
                " is locked); wait for it, stop it, or choose another --out");
    }
  }
  ~OutDirLock() { ::close(fd_); }
  OutDirLock(const OutDirLock&) = delete;
  OutDirLock& operator=(const OutDirLock&) = delete;

 private:
  int fd_ = -1;
};

// A crash while writing a checkpoint leaves OUT/.tmp-step-NNNNNN behind (never `latest`):
// remove such leftovers so they cannot accumulate.
void remove_partial_checkpoints(const std::string& out) {
  std::vector<fs::path> tmp;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().filename().string().rfind(".tmp-step-", 0) == 0) tmp.push_back(e.path());
  for (const fs::path& p : tmp) fs::remove_all(p);
}

// On resume, metrics.jsonl keeps only the lines up to the checkpoint's step: a run stopped
// by a crash may have logged steps after its last checkpoint, and they are about to be
// trained (and logged) again.
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  const std::string text = read_text_file(path.string());
  std::string kept;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    const json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
        j["step"].get<int64_t>() <= step)
      kept += line + "\n";
  }
  if (kept != text) write_file_atomic(path.string(), kept);
}

// Canonical form of what must match between a checkpoint and the run resuming it.
std::string resume_key(const TrainConfig& c) {
  json j;
  j["model"] = json::parse(model_config_to_json(c.model));
  j["batch"] = c.batch;
  j["seq_len"] = c.seq_len;
  j["mtp"] = c.mtp;
  return j.dump();
}

// What differs between a checkpoint's config and this run's (for the resume error).
std::string resume_mismatch(const TrainConfig& saved, const TrainConfig& now) {
  std::string d;
  auto add = [&](const std::string& what) { d += (d.empty() ? "" : ", ") + what; };
  if (model_config_to_json(saved.model) != model_config_to_json(now.model)) add("the model config");
  if (saved.batch != now.batch)
    add("batch (" + std::to_string(saved.batch) + " there, " + std::to_string(now.batch) + " here)");
  if (saved.seq_len != now.seq_len)
    add("seq_len (" + std::to_string(saved.seq_len) + " there, " + std::to_string(now.seq_len) + " here)");
  if (saved.mtp != now.mtp) add("the MTP setting");
  return d.empty() ? "the settings" : d;
}

// The master weights (and, when adam is given, the AdamW moments) of a trainer checkpoint
// DIR/trainer/state.safetensors. The file holds the whole arena and whole moments whatever the
// layout that wrote it, and every rank reads it: each takes its shard (resharding is just a
// different [lo, hi)). Shared by --resume (weights and moments) and --init (weights only).
void load_trainer_state(const fs::path& dir, TrainWeights& params, AdamW* adam) {
  SafetensorsFile f((dir / "trainer" / "state.safetensors").string());
  const SafetensorsEntry* pe = f.find("params");
  DSV3_CHECK(pe != nullptr, f.path(), ": no tensor 'params'");
  const TensorView pv = f.view(*pe);
  DSV3_CHECK(pv.dtype == DType::F32 && pv.numel() == params.size(), f.path(),
             ": tensor 'params' does not match this model (", pv.numel(), " values, expected ",
             params.size(), ")");
  std::memcpy(params.mutable_data(), pv.data, size_t(params.size()) * sizeof(float));
  if (!adam) return;
  for (int which = 0; which < 2; ++which) {
    const char* nm = which == 0 ? "adam_m" : "adam_v";
    const SafetensorsEntry* e = f.find(nm);
    DSV3_CHECK(e != nullptr, f.path(), ": no tensor '", nm, "'");
    adam->load_moment(which, f.view(*e), f.path());
  }
}

// Context extension (--init, report §4.3) may change only the position handling of the model:
// rope_scaling (YaRN) and max_position_embeddings. The first other key of config.json whose
// value differs, as "'key' (A there, B here)", or "" when the architectures agree.
std::string architecture_mismatch(const ModelConfig& saved, const ModelConfig& now) {
  json a = json::parse(model_config_to_json(saved)), b = json::parse(model_config_to_json(now));
  for (json* j : {&a, &b}) {
    j->erase("rope_scaling");
    j->erase("max_position_embeddings");
  }
  for (auto it = b.begin(); it != b.end(); ++it)
    if (!a.contains(it.key()) || a[it.key()] != it.value())
      return "'" + it.key() + "' (" + (a.contains(it.key()) ? a[it.key()].dump() : "absent") + " there, " +
             it.value().dump() + " here)";
  for (auto it = a.begin(); it != a.end(); ++it)
    if (!b.contains(it.key())) return "'" + it.key() + "' (" + it.value().dump() + " there, absent here)";
  return "";
}

// --init DIR must be a trainer checkpoint (dsv3 train's step-NNNNNN) whose architecture is this
// config's; checked before OUT is touched. Its master weights are then read by
// load_trainer_state (every rank, as --resume); optimizer, step and data position stay fresh.
void check_init_checkpoint(const std::string& init, const TrainRunOptions& o, const TrainConfig& cfg) {
  const fs::path dir(init);
  DSV3_CHECK(fs::is_directory(dir), "--init: ", init, " is not a directory (give a checkpoint written by "
             "dsv3 train, e.g. runs/tiny/step-000300)");
  const fs::path state = dir / "trainer" / "trainer_state.json";
  DSV3_CHECK(fs::is_regular_file(state) && fs::is_regular_file(dir / "trainer" / "state.safetensors"),
             "--init: ", init, " is not a trainer checkpoint (no trainer/trainer_state.json and "
             "trainer/state.safetensors; --init needs the F32 master weights dsv3 train writes)");
  const json j = json::parse(read_text_file(state.string()), nullptr, false);
  DSV3_CHECK(j.is_object() && j.contains("config") && j["config"].is_string(), state.string(),
             ": not a trainer state (no 'config' text)");
  const TrainConfig saved = parse_train_config(j["config"].get<std::string>(), state.string(),
                                               fs::path(o.config_path).parent_path().string());
  const std::string diff = architecture_mismatch(saved.model, cfg.model);
  DSV3_CHECK(diff.empty(), "--init: the model of ", init, " differs from ", o.config_path, "'s in ", diff,
             "; context extension may change only rope_scaling and max_position_embeddings");
  DSV3_CHECK(saved.mtp == cfg.mtp, "--init: ", init, " was trained ", saved.mtp ? "with" : "without",
             " the MTP modules and ", o.config_path, " has 'mtp.enabled' ", cfg.mtp ? "true" : "false",
             "; set it to ", saved.mtp ? "true" : "false");
}

}  // namespace

int run_training(const TrainRunOptions& o) {
  piece_bytes();  // a bad DSV3_CHECKPOINT_PIECE_BYTES is refused now, not at the first checkpoint
  DSV3_CHECK(!o.config_path.empty() && !o.data_dir.empty() && !o.out_dir.empty(),
             "dsv3 train needs --config, --data and --out");
  DSV3_CHECK(!(o.resume && !o.init_dir.empty()), "dsv3 train: --init and --resume exclude each other: --init "
             "starts a new run from a checkpoint's weights, --resume continues the run in --out");
  TrainConfig cfg = load_train_config(o.config_path);
  ParallelConfig& pc = cfg.parallel;
  if (o.dp > 0) pc.dp = o.dp, pc.dp_given = true;
  if (o.ep > 0) pc.ep = o.ep;
  if (o.pp > 0) pc.pp = o.pp;
  if (o.micro_batches > 0) pc.micro_batches = o.micro_batches;
  if (o.max_nodes >= 0) pc.max_nodes = o.max_nodes;
  if (o.ranks_per_node >= 0) pc.ranks_per_node = o.ranks_per_node;
  if (o.zero_bucket_mb >= 0) {
    DSV3_CHECK(o.zero_bucket_mb >= 1e-3 && o.zero_bucket_mb <= 1e6, "--zero-bucket-mb must be in [0.001, 1e6], got ",
               o.zero_bucket_mb);
    pc.zero_bucket_mb = o.zero_bucket_mb;
  }
  if (o.overlap_micro_batches >= 0) pc.overlap_micro_batches = o.overlap_micro_batches != 0;
  if (!o.schedule.empty()) pc.schedule = o.schedule;
  // Several copies of a build without MPI would each train alone and race for OUT.
  DSV3_CHECK(!dist::launched_by_mpi() || dist::mpi_built(), "started by mpirun, but this dsv3 was built "
             "without MPI (install libopenmpi-dev and openmpi-bin, then rebuild)");
  // Under mpirun without a dp of its own, the ranks of each stage are data-parallel ranks.
  if (!pc.dp_given && dist::launched_by_mpi()) pc.dp = std::max<int64_t>(1, dist::Comm::world().size() / pc.pp);
  if (!o.init_dir.empty()) check_init_checkpoint(o.init_dir, o, cfg);
  Dist d;
  d.world = &dist::Comm::world();
  try {
    d.lay = make_layout(pc, cfg.model, cfg.batch, d.world->size(), d.world->rank());
  } catch (const Error& e) {
    throw dist::CollectiveError(e.what());  // every rank refuses it, before any work
  }
  d.dp = d.world->split(d.lay.stage, d.lay.dp_rank);
  d.ep = d.dp.split(d.lay.dp_rank / d.lay.ep, d.lay.ep_rank);
  if (d.lay.pp > 1) {
    d.zero = d.world->split(0, d.lay.rank);
    d.pipe = d.world->split(d.lay.dp_rank, d.lay.stage);
  }
  const bool lead = d.lead();
  // Ranks on one machine share its cores (OMPI_COMM_WORLD_LOCAL_SIZE: ranks on this node).
  int threads = o.threads;
  if (threads <= 0 && d.lay.world > 1) {
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    const int n_local = local ? std::max(1, std::atoi(local)) : 1;
    threads = std::max(1, default_threads() / n_local);
  }
  if (threads > 0) set_num_threads(threads);
  const int64_t steps = o.steps > 0 ? o.steps : cfg.steps;
  // The tokenizer: --tokenizer, else the config's, else the copy `data prepare` kept in
  // DATA/tokenizer/. It must be the one the data was prepared with (its hash in meta.json).
  const fs::path data_tok = fs::path(o.data_dir) / data::kDataTokenizerDir / "tokenizer.json";
  std::string tok_source = "the config's \"tokenizer\"";
  if (!o.tokenizer.empty()) cfg.tokenizer = o.tokenizer, tok_source = "--tokenizer";
  if (cfg.tokenizer.empty() && fs::exists(data_tok)) cfg.tokenizer = data_tok.string(), tok_source = "";
  std::string data_hash;
  {
    const data::DataSet probe = data::DataSet::open(o.data_dir);
    data_hash = probe.meta().tokenizer_hash;
  }
  if (!cfg.tokenizer.empty() && !tok_source.empty()) {
    const std::string h = data::tokenizer_hash(data::tokenizer_files(cfg.tokenizer).front());
    DSV3_CHECK(h == data_hash, o.data_dir, " was prepared with another tokenizer than ", tok_source, " ",
               cfg.tokenizer, " (hash ", h, "): the data's is ",
               fs::exists(data_tok) ? data_tok.string() : std::string("not kept in DATA/tokenizer/"), " (hash ",
               data_hash, "). Train with the data's tokenizer (leave \"tokenizer\" out of the config), or "
               "prepare the data again with `dsv3 data prepare --tokenizer ", cfg.tokenizer, "`");
  }
  const data::DataSet ds = data::DataSet::open(o.data_dir, data_hash);
  DSV3_CHECK(ds.meta().vocab_size <= cfg.model.vocab_size, o.data_dir, ": the data's vocabulary (",
             ds.meta().vocab_size, ") is larger than the model's vocab_size (", cfg.model.vocab_size, ")");
  DSV3_CHECK(ds.meta().n_tokens > 0, o.data_dir, ": the data set holds no tokens");
  // OUT belongs to rank 0: it alone locks, checks and writes it (on several machines the
  // other ranks may not even see it; --resume reads the checkpoint on every rank, so it must
  // be on a shared file system there).
  std::unique_ptr<OutDirLock> lock;
  if (lead) {
    fs::create_directories(o.out_dir);
    lock = std::make_unique<OutDirLock>(o.out_dir);
    // A fresh run would overwrite metrics.jsonl and, checkpoint by checkpoint, the old run.
    DSV3_CHECK(o.resume || latest_name(o.out_dir).empty(), o.out_dir, " already holds a training run (latest: ",
               latest_name(o.out_dir), "); continue it with --resume, or choose another --out");
    remove_partial_checkpoints(o.out_dir);
  }
  d.world->barrier();  // the others start once OUT is checked (rank 0 ends the job if not)

  ParamSet ps(cfg.model, cfg.mtp);
  TrainStep ts(cfg, ps, d.lay, d.zero_group(), d.ep, threads, d.lay.pp > 1 ? &d.pipe : nullptr);
  // The BF16 copy only where the master is sharded: elsewhere it would cost 2 bytes per
  // parameter and more memory traffic than rounding each weight at its GEMM (docs/PERF.md).
  TrainWeights params(ps, ts.sharded_master());
  AdamW& adam = ts.adam();
  data::LoaderOptions lo_opt;
  lo_opt.seq_len = cfg.seq_len;
  lo_opt.batch = cfg.batch;
  lo_opt.seed = cfg.seed;
  lo_opt.fim_rate = cfg.fim_rate;
  data::Loader loader(ds, lo_opt);  // every rank draws the global batch and takes its rows
  int64_t start = 0;
  double tokens = 0;
  std::string init_from = o.init_dir;  // kept through --resume of an extension run
  if (o.resume) {
    const std::string name = latest_name(o.out_dir);
    DSV3_CHECK(!name.empty(), "--resume: ", o.out_dir, " has no checkpoint (no 'latest' file)");
    const fs::path dir = fs::path(o.out_dir) / name;
    DSV3_CHECK(fs::is_regular_file(dir / "trainer" / "trainer_state.json"), "--resume: ", o.out_dir,
               "/latest names '", name, "', which is not a trainer checkpoint (no ", name,
               "/trainer/trainer_state.json)");
    const json j = json::parse(read_text_file((dir / "trainer" / "trainer_state.json").string()));
    const TrainConfig saved = parse_train_config(j.at("config").get<std::string>(),
                                                 (dir / "trainer").string(),
                                                 fs::path(o.config_path).parent_path().string());
    DSV3_CHECK(resume_key(saved) == resume_key(cfg), "--resume: ", dir.string(), " does not match ",
               o.config_path, " in ", resume_mismatch(saved, cfg),
               "; start a new --out or restore the original config");
    load_trainer_state(dir, params, &adam);
    adam.set_step_count(j.at("adam_t").get<int64_t>());
    start = j.at("step").get<int64_t>();
    tokens = j.value("tokens", 0.0);
    init_from = j.value("init", std::string());
    loader.restore(data::LoaderState::from_json(j.at("loader").dump()));
    if (lead) {
      truncate_metrics(fs::path(o.out_dir) / "metrics.jsonl", start);
      std::fprintf(stderr, "resumed from %s at step %lld\n", dir.string().c_str(), (long long)start);
    }
  } else if (!o.init_dir.empty()) {
    load_trainer_state(o.init_dir, params, nullptr);
    if (lead)
      std::fprintf(stderr, "initialised from %s (weights; optimizer, step and data position fresh; seq_len "
                   "%lld, rope_scaling %s)\n", o.init_dir.c_str(), (long long)cfg.seq_len,
                   cfg.model.rope_scaling.type.empty() ? "none" : cfg.model.rope_scaling.type.c_str());
  } else {
    ps.init(params.mutable_data(), cfg.seed);
  }
  if (lead && d.lay.world > 1)
    std::fprintf(stderr, "dsv3 train: %d ranks, dp %d × pp %d%s%s, ep %d, %d micro-batch%s of %lld sequences per "
                 "rank, ZeRO-1 shards of %lld parameters%s, %d threads per rank\n", d.lay.world, d.lay.dp,
                 d.lay.pp, d.lay.pp > 1 ? " " : "", d.lay.pp > 1 ? d.lay.schedule.c_str() : "", d.lay.ep,
                 d.lay.micro_batches, d.lay.micro_batches == 1 ? "" : "es",
                 (long long)d.lay.micro_batch, (long long)(ts.hi() - ts.lo()),
                 ts.sharded_master() ? " (master weights sharded, a whole BF16 copy per rank)" : "",
                 resolve_threads(threads));

  const State st{cfg, ps, params, ts, d, init_from};

  // Validation: fixed windows of the held-out split, cut from its packed stream (the
  // training loader's packing) and evaluated every eval_every steps and at the end.
  std::vector<int32_t> val_batches;  // [n_val_batches, batch, T + 1]
  int64_t eval_every = cfg.eval_every;
  {
    const bool has_val = fs::is_directory(fs::path(o.data_dir) / "val");
    DSV3_CHECK(eval_every <= 0 || has_val, o.data_dir, " has no val/ split, but eval_every is ", eval_every,
               ": prepare the data with `dsv3 data prepare --val-fraction F`, or set eval_every to 0");
    if (eval_every < 0) eval_every = has_val ? std::max<int64_t>(1, steps / 20) : 0;
    if (eval_every > 0) {
      const eval::HeldOut val = eval::open_held_out(o.data_dir, data_hash);
      const int64_t row = cfg.seq_len + 1, nb = (cfg.eval_windows + cfg.batch - 1) / cfg.batch;
      const std::vector<int32_t> stream = eval::packed_stream(val.set, nb * cfg.batch * row);
      DSV3_CHECK(int64_t(stream.size()) >= row, o.data_dir, "/val holds ", stream.size(),
                 " tokens, fewer than one window of seq_len + 1 = ", row);
      // A split shorter than the windows asked for is reused from its start (said once).
      val_batches.resize(size_t(nb * cfg.batch * row));
      for (size_t i = 0; i < val_batches.size(); ++i) val_batches[i] = stream[i % stream.size()];
      if (lead)
        std::fprintf(stderr, "dsv3 train: validation every %lld steps on %lld windows of %lld tokens from %s%s\n",
                     (long long)eval_every, (long long)(nb * cfg.batch), (long long)row, val.describe().c_str(),
                     int64_t(stream.size()) < int64_t(val_batches.size()) ? " (fewer tokens: repeated)" : "");
    }
  }
  auto validate = [&]() {
    const int64_t per_batch = cfg.batch * (cfg.seq_len + 1), nb = int64_t(val_batches.size()) / per_batch;
    StepLosses v;
    for (int64_t b = 0; b < nb; ++b) {
      const StepLosses L = ts.evaluate(val_batches.data() + b * per_batch, params);
      v.main += L.main / double(nb);
      if (v.mtp.empty()) v.mtp.assign(L.mtp.size(), 0.0);
      for (size_t k = 0; k < L.mtp.size(); ++k) v.mtp[k] += L.mtp[k] / double(nb);
    }
    return v;
  };
  double last_val = std::nan("");

  std::signal(SIGINT, dsv3_on_signal);
  std::signal(SIGTERM, dsv3_on_signal);
  // mpirun turns SIGINT/SIGTERM into SIGTERM then SIGKILL a second later, too soon for a
  // checkpoint; it forwards SIGUSR1 to every rank as is: `kill -USR1 <mpirun pid>` stops a
  // distributed run with a checkpoint (docs/distributed.md).
  std::signal(SIGUSR1, dsv3_on_signal);
  FILE* metrics = nullptr;
  if (lead) {
    metrics = std::fopen((fs::path(o.out_dir) / "metrics.jsonl").c_str(), o.resume ? "a" : "w");
    DSV3_CHECK(metrics != nullptr, o.out_dir, ": cannot write metrics.jsonl");
  }
  const bool quiet = o.quiet || !lead;
  const bool tty = isatty(2);
  std::vector<int32_t> batch;
  double ema_tps = 0, t_start = now_s();
  const double tok_per_step = double(cfg.batch * cfg.seq_len);
  int exit_code = 0;
  int64_t step = start;
  std::string stopped;
  int64_t bad_params_at = -1;  // the step after which the weights were found non-finite
  for (; step < steps; ++step) {
    const double t0 = now_s();
    const dist::Traffic traffic0 = dist::traffic();
    loader.next(batch);
    const StepResult r = ts.compute(batch.data(), params, step);
    const StepLosses& L = r.losses;
    const double gnorm = r.grad_norm;
    if (!r.finite) {
      // Steps are numbered from 1 here, as in metrics.jsonl and the checkpoint names.
      const std::string good = lead ? latest_name(o.out_dir) : "";
      if (lead)
        std::fprintf(stderr, "%sdsv3 train: the loss is %s at step %lld (loss %g, grad norm %g); "
                     "stopping. The last good checkpoint is %s\n", tty ? "\n" : "",
                     std::isfinite(L.total) ? "finite but the gradient is not" : "not finite",
                     (long long)(step + 1), L.total, gnorm,
                     good.empty() ? "(none written yet)" : (fs::path(o.out_dir) / good).string().c_str());
      exit_code = 3;
      break;
    }
    const double lr = cfg.lr.at(step);
    const std::vector<double> maxvio = ts.apply(params, r, step);
    const int64_t step_bytes = dist::traffic().bytes_sent - traffic0.bytes_sent;  // not validation's
    tokens += tok_per_step;
    const double dt = now_s() - t0;
    const double tps = tok_per_step / dt;
    ema_tps = ema_tps == 0 ? tps : 0.9 * ema_tps + 0.1 * tps;
    const bool eval_due = eval_every > 0 && ((step + 1) % eval_every == 0 || step + 1 == steps);
    StepLosses val;
    if (eval_due) {
      val = validate();  // every rank (collective)
      last_val = val.main;
    }
    if (metrics && ((step + 1) % cfg.log_every == 0 || step + 1 == steps || eval_due)) {
      json m;
      if (eval_due) {
        m["val_loss"] = val.main;
        m["val_mtp_loss"] = val.mtp;
      }
      m["step"] = step + 1;
      m["loss"] = L.total;
      m["main_loss"] = L.main;
      m["mtp_loss"] = L.mtp;
      m["balance_loss"] = L.balance;
      m["lr"] = lr;
      m["grad_norm"] = gnorm;
      m["tokens"] = tokens;
      m["tokens_per_s"] = tps;
      m["maxvio"] = maxvio;
      m["moe_layers"] = L.moe_layer;
      m["load"] = L.load;
      m["time_s"] = now_s() - t_start;
      if (d.lay.world > 1) {
        m["ranks"] = d.lay.world;
        m["comm_bytes"] = step_bytes;  // rank 0's, this step
        m["comm_bytes_predicted"] = r.comm_bytes_predicted;
      }
      std::fprintf(metrics, "%s\n", m.dump().c_str());
      std::fflush(metrics);
    }
    if (!quiet) {
      const double eta = double(steps - step - 1) * tok_per_step / std::max(ema_tps, 1e-9);
      const int width = 20, done = int(double(width) * double(step + 1) / double(steps));
      std::string bar(size_t(done), '#');
      bar.resize(size_t(width), '.');
      char line[256];
      char vbuf[32] = "";
      if (!std::isnan(last_val)) std::snprintf(vbuf, sizeof vbuf, " val %.4f", last_val);
      std::snprintf(line, sizeof line, "step %lld/%lld [%s] loss %.4f%s mtp %s bal %.2e | %.0f tok/s | ETA %s",
                    (long long)(step + 1), (long long)steps, bar.c_str(), L.main, vbuf,
                    L.mtp.empty() ? "-" : std::to_string(L.mtp[0]).substr(0, 6).c_str(), L.balance,
                    ema_tps, fmt_duration(eta).c_str());
      if (tty) std::fprintf(stderr, "\r%s\033[K", line);
      else if ((step + 1) % std::max<int64_t>(1, steps / 20) == 0 || step + 1 == steps)
        std::fprintf(stderr, "%s\n", line);
    }
    const bool ckpt_due = cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0;
    // A signal reaches the ranks at different instants: they agree (one flag reduced over the
    // job) so that all stop after the same step.
    int32_t sig = int32_t(g_signal);
    d.world->allreduce_max(&sig, 1);
    if (sig) {
      stopped = sig == SIGINT ? "SIGINT" : sig == SIGUSR1 ? "SIGUSR1" : "SIGTERM";
      exit_code = 128 + sig;
      ++step;
      break;
    }
    if (ckpt_due && step + 1 < steps) {
      ts.gather_params(params, true);  // rank 0's arena whole again (pipeline stages, sharded master)
      if (!weights_finite(st)) {
        bad_params_at = step + 1;
        exit_code = 3;
        break;
      }
      save_checkpoint(st, loader.state(), step + 1, tokens, o.out_dir);
    }
  }
  if (metrics) std::fclose(metrics);
  if (tty && !quiet) std::fprintf(stderr, "\n");
  ts.gather_params(params, true);
  if (exit_code != 3 && !weights_finite(st)) {
    bad_params_at = step;
    exit_code = 3;
  }
  if (bad_params_at >= 0 && lead) {
    const std::string good = latest_name(o.out_dir);
    std::fprintf(stderr, "dsv3 train: the weights are not finite after step %lld; not saving them. The "
                 "last good checkpoint is %s\n", (long long)bad_params_at,
                 good.empty() ? "(none written yet)" : (fs::path(o.out_dir) / good).string().c_str());
  }
  if (exit_code == 3) return exit_code;
  save_checkpoint(st, loader.state(), step, tokens, o.out_dir);
  const std::string where = (fs::path(o.out_dir) / step_name(step)).string();
  // Each rank's peak resident memory (what a layout costs per process).
  std::vector<double> rss(size_t(d.lay.world), 0.0);
  {
    struct rusage ru {};
    if (getrusage(RUSAGE_SELF, &ru) == 0) rss[size_t(d.lay.rank)] = double(ru.ru_maxrss) / 1024.0;  // KiB -> MiB
    d.world->allgather(rss.data(), std::vector<int64_t>(size_t(d.lay.world), 1));
  }
  if (!lead) return exit_code;
  if (d.lay.world > 1) {
    std::string per;
    for (double r : rss) per += (per.empty() ? "" : " ") + std::to_string(int64_t(std::lround(r)));
    std::fprintf(stderr, "dsv3 train: peak resident memory per rank (MiB): %s\n", per.c_str());
  }
  if (!stopped.empty())
    std::fprintf(stderr, "dsv3 train: %s received; saved %s (resume with --resume)\n", stopped.c_str(),
                 where.c_str());
  else
    std::fprintf(stderr, "dsv3 train: %lld steps done; checkpoint %s\n", (long long)step, where.c_str());
  return exit_code;
}

}  // namespace dsv3
