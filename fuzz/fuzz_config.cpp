// libFuzzer target: config.json text into parse_model_config (model/config.h). Every input
// must parse (and then survive a write/re-parse round trip unchanged) or throw dsv3::Error.
// Build and run: FUZZ_TARGET=config scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const dsv3::ModelConfig c = dsv3::parse_model_config(text, "fuzz");
    (void)dsv3::count_parameters(c);
    const std::string out = dsv3::model_config_to_json(c);
    if (dsv3::model_config_to_json(dsv3::parse_model_config(out, "fuzz-rt")) != out) std::abort();
  } catch (const dsv3::Error&) {
  }
  return 0;
}
