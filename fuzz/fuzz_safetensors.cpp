// libFuzzer target: a safetensors file image into the header parser (io/safetensors.h).
// Every input must either parse or throw dsv3::Error — never crash, hang, read out of
// bounds or trip UBSan. Accepted headers are checked against the layout invariants the
// reader promises, so a silently wrong parse is a crash too. Build and run: scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/check.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const dsv3::SafetensorsHeader h = dsv3::parse_safetensors(data, size, "fuzz");
    uint64_t pos = 0;
    for (const dsv3::SafetensorsEntry& e : h.tensors) {
      uint64_t n = 0;
      if (e.begin != pos || !dsv3::safetensors_nbytes(e.dtype, e.shape, e.ndim, &n) ||
          e.end - e.begin != n)
        std::abort();
      // numel() as TensorView computes it, in order: must not overflow int64.
      int64_t numel = 1;
      for (int d = 0; d < e.ndim; ++d)
        if (__builtin_mul_overflow(numel, e.shape[d], &numel)) std::abort();
      pos = e.end;
    }
    if (pos != h.data_size || 8 + h.header_len + h.data_size != size) std::abort();
  } catch (const dsv3::Error&) {
  }
  return 0;
}
