// dsv3: the command line. Each subcommand registers itself from its own file (cmd_*.cpp)
// through the functions declared in commands.h.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/check.h"
#include "core/cpu.h"
#include "parallel/comm.h"

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
  dsv3::cli::register_router(app);
  dsv3::cli::register_pipeline_sim(app);
  dsv3::cli::register_eval(app);
  dsv3::cli::register_eplb(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv3::dist::CollectiveError& e) {
    if (dsv3::dist::active())
      std::fprintf(stderr, "dsv3: error: [rank %d] %s\n", dsv3::dist::Comm::world().rank(), e.what());
    else
      std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    dsv3::dist::finalize();
    return 1;
  } catch (const std::exception& e) {
    // Under mpirun an error on one rank must end every rank (the others may be waiting in a
    // collective): fatal() aborts the job. Alone: the message and exit 1.
    if (dsv3::dist::active()) dsv3::dist::fatal(e.what(), 1);
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  }
  dsv3::dist::finalize();
  return 0;
}
