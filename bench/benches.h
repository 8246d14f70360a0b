#pragma once

namespace CLI { class App; }

namespace dsv3::bench {

void add_gemm(CLI::App& bench);  // bench_gemm.cpp: dsv3 bench gemm
void add_ops(CLI::App& bench);   // bench_ops.cpp: dsv3 bench ops
void add_tokenize(CLI::App& bench);  // bench_tokenizer.cpp: dsv3 bench tokenize
void add_gemv(CLI::App& bench);   // bench_gemv.cpp: dsv3 bench gemv
void add_membw(CLI::App& bench);  // bench_gemv.cpp: dsv3 bench membw
void add_load(CLI::App& bench);  // bench_load.cpp: dsv3 bench load
void add_model(CLI::App& bench);  // bench_model.cpp: dsv3 bench decode, dsv3 bench prefill
void add_absorb(CLI::App& bench);  // bench_absorb.cpp: dsv3 bench absorb
void add_latent(CLI::App& bench);  // bench_latent.cpp: dsv3 bench latent
void add_train(CLI::App& bench);  // bench_train.cpp: dsv3 bench train
void add_stage(CLI::App& bench);  // bench_stage.cpp: dsv3 bench stage
void add_spec(CLI::App& bench);  // bench_spec.cpp: dsv3 bench speculative
void add_serve(CLI::App& bench);  // bench_serve.cpp: dsv3 bench serve

}  // namespace dsv3::bench
