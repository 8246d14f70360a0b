// dsv3: the command line. Each subcommand registers itself from its own file (cmd_*.cpp)
// through the functions declared in commands.h.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/check.h"
#include "core/cpu.h"

int main(int argc, char** argv) {
  CLI::App app{"dsv3 — DeepSeek-V3 in C++: train, run and serve DeepSeek-V3-architecture models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("dsv3 ") + DSV3_VERSION + " (" +
                                        dsv3::isa_name(dsv3::best_isa()) + " kernels)");
  dsv3::cli::register_bench(app);
  dsv3::cli::register_tokenize(app);
  dsv3::cli::register_inspect(app);
  dsv3::cli::register_convert(app);
  dsv3::cli::register_init(app);
  dsv3::cli::register_score(app);
  dsv3::cli::register_data(app);
  dsv3::cli::register_train(app);
  dsv3::cli::register_generate(app);
  dsv3::cli::register_serve(app);
  dsv3::cli::register_pipeline_sim(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv3::Error& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
