// dsv3 convert --in DIR --out DIR --to bf16|fp8 [--shard-gb G]: FP8 (128x128 blocks) <->
// BF16 for the linear weights of a Hugging Face DeepSeek checkpoint (io/convert.h).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "io/convert.h"

namespace dsv3::cli {

namespace {

struct ConvertCliOpts {
  std::string in, out, to;
  double shard_gb = 4.0;
};

void run_convert(const ConvertCliOpts& o) {
  ConvertOptions co;
  co.to = o.to;
  co.max_shard_bytes = uint64_t(o.shard_gb * double(1ull << 30));
  const auto t0 = std::chrono::steady_clock::now();
  co.progress = [t0](size_t i, size_t n, const std::string& file) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "[%zu/%zu] writing %s (%.1f s)\n", i + 1, n, file.c_str(), s);
  };
  const ConvertStats st = convert_checkpoint(o.in, o.out, co);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("converted %s -> %s (%s): %lld tensors (%lld quantised, %lld dequantised, %lld to BF16, %lld copied), "
              "%.3f GB -> %.3f GB in %zu shard(s), %.1f s\n",
              o.in.c_str(), o.out.c_str(), o.to.c_str(), (long long)st.tensors, (long long)st.quantised,
              (long long)st.dequantised, (long long)st.narrowed, (long long)st.copied, double(st.bytes_in) * 1e-9,
              double(st.bytes_out) * 1e-9, st.shards, s);
}

}  // namespace

void register_convert(CLI::App& app) {
  auto o = std::make_shared<ConvertCliOpts>();
  CLI::App* s = app.add_subcommand("convert", "Convert a DeepSeek checkpoint between FP8 (128x128) and BF16");
  s->add_option("--in", o->in, "input model directory")->required();
  s->add_option("--out", o->out, "output model directory (new or empty)")->required();
  s->add_option("--to", o->to, "bf16 | fp8")->required();
  s->add_option("--shard-gb", o->shard_gb, "maximum output shard size in GiB")->capture_default_str();
  s->callback([o] { run_convert(*o); });
}

}  // namespace dsv3::cli
