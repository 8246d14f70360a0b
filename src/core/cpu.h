// CPU features and the instruction-set level the kernels dispatch on.
#pragma once

namespace dsv3 {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512bf16 = false, avx512vnni = false, avx512vbmi = false;
  bool intel = false;  // vendor GenuineIntel
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

// How the AVX-512 kernels multiply BF16 (and E4M3 decoded to BF16) operands:
//   Dot  VDPBF16PS, a pair of products per lane: on AMD Zen 4/5 one instruction does twice
//        the work of an FP32 FMA at the same rate.
//   Fma  the operands widened to FP32 while packing (exact) and multiplied by VFMADD231PS:
//        on Intel Xeon (Sapphire / Emerald Rapids) VDPBF16PS issues once per 2 cycles
//        against 2 FMAs per cycle, so FP32 FMAs do twice its multiply-adds (measured on an
//        Emerald Rapids VM: 1.39 G vdpbf16ps/s against 5.76 G vfmadd231ps/s, one core).
// The default follows the vendor; DSV3_BF16_GEMM=dot|fma overrides it. Both give results
// within the GEMM tolerance (kernels/gemm.h); the choice never depends on thread counts.
enum class Bf16Mode { Dot = 0, Fma = 1 };
Bf16Mode best_bf16_mode();
Bf16Mode bf16_mode();             // best_bf16_mode() unless set_bf16_mode() changed it
void set_bf16_mode(Bf16Mode m);  // tests run both modes on one machine
const char* bf16_mode_name(Bf16Mode m);

}  // namespace dsv3
