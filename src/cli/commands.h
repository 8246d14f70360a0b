// Registration functions, one per subcommand file. A subcommand's callback may throw
// dsv3::Error; main() prints it as "dsv3: error: ..." and exits 1.
#pragma once

namespace CLI { class App; }

namespace dsv3::cli {

void register_bench(CLI::App& app);  // bench/bench_cli.cpp
void register_tokenize(CLI::App& app);  // cmd_tokenize.cpp: tokenize, detokenize, tokenizer
void register_inspect(CLI::App& app);  // cmd_inspect.cpp
void register_convert(CLI::App& app);  // cmd_convert.cpp
void register_init(CLI::App& app);     // cmd_init.cpp
void register_score(CLI::App& app);    // cmd_score.cpp
void register_data(CLI::App& app);     // cmd_data.cpp: data prepare, data info
void register_train(CLI::App& app);    // cmd_train.cpp
void register_generate(CLI::App& app); // cmd_generate.cpp: generate, chat
void register_serve(CLI::App& app);    // cmd_serve.cpp
void register_router(CLI::App& app);   // cmd_serve.cpp
void register_pipeline_sim(CLI::App& app);  // cmd_pipeline_sim.cpp
void register_eval(CLI::App& app);     // cmd_eval.cpp: eval ppl, eval niah
void register_eplb(CLI::App& app);     // cmd_eplb.cpp

}  // namespace dsv3::cli
