// CPU features and the instruction-set level the kernels dispatch on.
#pragma once

namespace dsv3 {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512bf16 = false, avx512vnni = false, avx512vbmi = false;
};

// Levels, lowest first. Avx512 means F+BW+DQ+VL+BF16+VBMI (Zen 4, Sapphire Rapids);
// a CPU with AVX-512 but without BF16 runs the Avx2 paths.
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const CpuFeatures& cpu_features();
// The best level this CPU supports, lowered by the environment variable
// DSV3_ISA=scalar|avx2|avx512 (never raised past what the CPU has).
Isa best_isa();
// The level kernels use now: best_isa() unless set_isa() lowered it (tests use this to run
// every path on one machine).
Isa active_isa();
void set_isa(Isa isa);  // clamps to best_isa()
const char* isa_name(Isa isa);

}  // namespace dsv3
