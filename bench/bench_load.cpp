// dsv3 bench load [--size-gb G] [--dir DIR] [--format bf16|fp8] [--reps N] [--keep] [--json]
// Generates a random checkpoint of at least G GiB in the real Hugging Face layout
// (Moonlight-16B-A3B shapes, SPEC §7, with as many layers as the size needs), then times
// opening it — mmap of every shard + header validation + the weight map (load_weights) —
// against reading every byte of it, with the page cache warm and after evicting the files
// from it (posix_fadvise DONTNEED: a cold read from disk).
#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "bench_util.h"
#include "core/clock.h"
#include "core/check.h"
#include "core/parallel.h"
#include "io/checkpoint.h"
#include "io/random_checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv3::bench {

namespace {

namespace fs = std::filesystem;

struct LoadOpts {
  double size_gb = 2.0;
  std::string dir = "/tmp/dsv3_bench_load";
  std::string format = "bf16";
  int reps = 3;
  int shards = 0;  // 0: about 1 GiB each
  bool keep = false;
  bool reuse = false;
  bool json = false;
};

ModelConfig bench_config(int64_t layers) {
  // Moonlight-16B-A3B (configs/moonlight-16b-a3b.json) with `layers` layers.
  ModelConfig c;
  c.architectures = {"DeepseekV3ForCausalLM"};
  c.model_type = "deepseek_v3";
  c.vocab_size = 163840;
  c.hidden_size = 2048;
  c.intermediate_size = 11264;
  c.moe_intermediate_size = 1408;
  c.num_hidden_layers = layers;
  c.num_nextn_predict_layers = 0;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 16;
  c.n_shared_experts = 2;
  c.n_routed_experts = 64;
  c.routed_scaling_factor = 2.446;
  c.kv_lora_rank = 512;
  c.q_lora_rank = 0;
  c.n_group = 1;
  c.topk_group = 1;
  c.num_experts_per_tok = 6;
  c.first_k_dense_replace = 1;
  c.norm_topk_prob = true;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 50000;
  return c;
}

// Sums every 8-byte word of every tensor (so every page is faulted in and every byte read).
uint64_t read_all(const Checkpoint& ck) {
  uint64_t sum = 0;
  for (const auto& s : ck.shards()) {
    const uint8_t* p = s->data();
    const int64_t words = int64_t(s->header().data_size / 8);
    std::atomic<uint64_t> total{0};
    parallel_region(default_threads(), [&](Team& t) {
      int64_t b, e;
      split_range(words, t.size(), t.tid(), &b, &e);
      uint64_t part = 0;
      for (int64_t i = b; i < e; ++i) {
        uint64_t w;
        std::memcpy(&w, p + 8 * i, 8);
        part += w;
      }
      total.fetch_add(part, std::memory_order_relaxed);
    });
    sum += total.load();
  }
  return sum;
}

// Drops the shards from the page cache; call with no mapping open (mapped pages stay).
void evict(const std::vector<std::string>& paths) {
  for (const std::string& p : paths) {
    const int fd = ::open(p.c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);  // dirty pages cannot be evicted; write them back first
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

void run_load(const LoadOpts& o) {
  DSV3_CHECK(o.size_gb > 0 && o.size_gb < 64, "--size-gb must be in (0, 64), got ", o.size_gb);
  DSV3_CHECK(o.reps >= 1, "--reps must be >= 1");
  const CheckpointFormat fmt = parse_checkpoint_format(o.format);
  const uint64_t want = uint64_t(o.size_gb * double(1ull << 30));
  int64_t layers = 1;
  auto bytes_of = [&](int64_t l) {
    uint64_t b = 0;
    for (const WeightSpec& s : expected_weights(bench_config(l), false))
      b += uint64_t(s.numel()) * (fmt == CheckpointFormat::FP8 && s.kind == WeightKind::Linear ? 1
                                  : fmt == CheckpointFormat::F32 ? 4 : 2);
    return b;
  };
  while (bytes_of(layers) < want) ++layers;
  const ModelConfig cfg = bench_config(layers);
  RandomCheckpointOptions ro;
  ro.format = fmt;
  ro.with_mtp = false;
  ro.shards = o.shards > 0 ? o.shards : int(std::max<uint64_t>(1, bytes_of(layers) >> 30));
  std::error_code ec;
  double t0 = now_s(), gen_s = 0;
  uint64_t bytes = 0;
  if (o.reuse && Checkpoint::has_weights(o.dir)) {
    bytes = Checkpoint(o.dir).total_bytes();
  } else {
    fs::remove_all(o.dir, ec);
    std::fprintf(stderr, "generating %s checkpoint: Moonlight shapes, %lld layers, %d shards in %s ...\n",
                 o.format.c_str(), (long long)layers, ro.shards, o.dir.c_str());
    bytes = write_random_checkpoint(cfg, o.dir, ro);
    gen_s = now_s() - t0;
  }

  std::vector<double> open_s, warm_s, cold_open_s, cold_read_s;
  uint64_t sum = 0;
  size_t tensors = 0;
  std::vector<std::string> paths;
  {
    const Checkpoint ck(o.dir);
    for (const auto& s : ck.shards()) paths.push_back(s->path());
  }
  // Opening is cheap: time it on its own, many times, with the page cache warm.
  for (int r = 0; r < std::max(20, o.reps); ++r) {
    t0 = now_s();
    Checkpoint ck(o.dir);
    const ModelWeights mw = load_weights(cfg, ck, {false});
    open_s.push_back(now_s() - t0);
    tensors = ck.num_tensors();
  }
  for (int r = 0; r < o.reps; ++r) {
    // Warm: files in the page cache (just written / read before).
    {
      const Checkpoint ck(o.dir);
      const double t1 = now_s();
      sum += read_all(ck);
      warm_s.push_back(now_s() - t1);
    }
    evict(paths);
    // Cold: evicted from the page cache, read back from disk.
    t0 = now_s();
    Checkpoint ck(o.dir);
    const ModelWeights mw = load_weights(cfg, ck, {false});
    cold_open_s.push_back(now_s() - t0);
    const double t1 = now_s();
    sum += read_all(ck);
    cold_read_s.push_back(now_s() - t1);
  }
  const double gb = double(bytes) * 1e-9;
  const double o_ms = median(open_s) * 1e3, co_ms = median(cold_open_s) * 1e3;
  const double w_s = median(warm_s), c_s = median(cold_read_s);
  if (o.json) {
    std::printf("{\"bench\":\"load\",\"format\":\"%s\",\"bytes\":%llu,\"tensors\":%zu,\"shards\":%d,"
                "\"threads\":%d,\"generate_s\":%.2f,\"open_warm_ms\":%.3f,\"open_cold_ms\":%.3f,"
                "\"read_warm_s\":%.3f,\"read_cold_s\":%.3f,\"reps\":%d,\"checksum\":%llu}\n",
                o.format.c_str(), (unsigned long long)bytes, tensors, ro.shards, resolve_threads(0),
                gen_s, o_ms, co_ms, w_s, c_s, o.reps, (unsigned long long)sum);
  } else {
    std::printf("checkpoint: %.2f GB %s, %zu tensors, %d shards (generated in %.1f s)\n", gb,
                o.format.c_str(), tensors, ro.shards, gen_s);
    std::printf("open (mmap + headers + weight map): warm %.2f ms (median of %zu), cold %.2f ms (median of %d)\n",
                o_ms, open_s.size(), co_ms, o.reps);
    std::printf("read every byte:                    warm %.3f s (%.1f GB/s), cold %.3f s (%.2f GB/s)\n",
                w_s, gb / w_s, c_s, gb / c_s);
    std::printf("open is %.0fx faster than a warm full read, %.0fx than a cold one\n",
                w_s * 1e3 / o_ms, c_s * 1e3 / co_ms);
  }
  if (!o.keep) fs::remove_all(o.dir, ec);
}

}  // namespace

void add_load(CLI::App& bench) {
  auto o = std::make_shared<LoadOpts>();
  CLI::App* s = bench.add_subcommand("load", "Checkpoint open (mmap + parse + weight map) vs full read");
  s->add_option("--size-gb", o->size_gb, "checkpoint size to generate, GiB")->capture_default_str();
  s->add_option("--dir", o->dir, "where to write it (removed first)")->capture_default_str();
  s->add_option("--format", o->format, "bf16 | fp8 | f32")->capture_default_str();
  s->add_option("--shards", o->shards, "shards (0: about 1 GiB each)")->capture_default_str();
  s->add_option("--reps", o->reps, "repetitions (median reported)")->capture_default_str();
  s->add_flag("--keep", o->keep, "keep the checkpoint afterwards");
  s->add_flag("--reuse", o->reuse, "reuse a checkpoint left in --dir by --keep (same options)");
  s->add_flag("--json", o->json, "print one JSON object");
  s->callback([o] { run_load(*o); });
}

}  // namespace dsv3::bench
