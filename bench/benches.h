#pragma once

namespace CLI { class App; }

namespace dsv3::bench {

void add_gemm(CLI::App& bench);  // bench_gemm.cpp: dsv3 bench gemm
void add_load(CLI::App& bench);  // bench_load.cpp: dsv3 bench load

}  // namespace dsv3::bench
