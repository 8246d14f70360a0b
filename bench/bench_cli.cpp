// `dsv3 bench ...`: one subcommand per benchmark, each defined in its own bench_*.cpp.
#include <CLI/CLI.hpp>

#include "benches.h"
#include "commands.h"

namespace dsv3::cli {

void register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Measure kernels and models (see docs/PERF.md)");
  bench->require_subcommand(1);
  dsv3::bench::add_gemm(*bench);
  dsv3::bench::add_ops(*bench);
  dsv3::bench::add_tokenize(*bench);
  dsv3::bench::add_gemv(*bench);
  dsv3::bench::add_membw(*bench);
  dsv3::bench::add_load(*bench);
  dsv3::bench::add_model(*bench);
  dsv3::bench::add_absorb(*bench);
  dsv3::bench::add_latent(*bench);
  dsv3::bench::add_train(*bench);
  dsv3::bench::add_stage(*bench);
  dsv3::bench::add_spec(*bench);
  dsv3::bench::add_serve(*bench);
}

}  // namespace dsv3::cli
