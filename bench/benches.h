#pragma once

namespace CLI { class App; }

namespace dsv3::bench {

void add_gemm(CLI::App& bench);  // bench_gemm.cpp: dsv3 bench gemm
void add_ops(CLI::App& bench);   // bench_ops.cpp: dsv3 bench ops
void add_tokenize(CLI::App& bench);  // bench_tokenizer.cpp: dsv3 bench tokenize

}  // namespace dsv3::bench
