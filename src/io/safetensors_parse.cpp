// Validation of a safetensors file image: every rule of the format (safetensors.h).
// Kept free of file I/O so that the fuzzer (fuzz/fuzz_safetensors.cpp) drives it directly.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/json_strict.h"
#include "io/safetensors.h"

namespace dsv3 {

namespace {

using json = nlohmann::json;

// The header of a valid file nests three levels ({name: {shape: [..]}}); anything deeper is
// rejected before parsing.
constexpr int kMaxJsonDepth = 8;

std::string offsets_str(uint64_t b, uint64_t e) {
  return str_cat("[", b, ", ", e, "]");
}

SafetensorsEntry parse_entry(const std::string& name, const json& v, const std::string& where) {
  const std::string ctx = str_cat(where, ": tensor '", name, "'");
  DSV3_CHECK(v.is_object(), ctx, ": expected an object {dtype, shape, data_offsets}, got ",
             v.type_name());
  SafetensorsEntry e;
  e.name = name;
  for (const auto& [key, _] : v.items())
    DSV3_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", ctx,
               ": unexpected key '", key, "' (expected dtype, shape, data_offsets)");

  auto dt = v.find("dtype");
  DSV3_CHECK(dt != v.end(), ctx, ": missing \"dtype\"");
  DSV3_CHECK(dt->is_string(), ctx, ": \"dtype\" must be a string, got ", dt->type_name());
  const std::string& dname = dt->get_ref<const std::string&>();
  DSV3_CHECK(dtype_from_name(dname, &e.dtype), ctx, ": unknown dtype '", dname,
             "' (expected one of F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U64 U32 U16 "
             "U8 BOOL)");

  auto sh = v.find("shape");
  DSV3_CHECK(sh != v.end(), ctx, ": missing \"shape\"");
  DSV3_CHECK(sh->is_array(), ctx, ": \"shape\" must be an array, got ", sh->type_name());
  DSV3_CHECK(sh->size() <= size_t(kMaxDims), ctx, ": rank ", sh->size(),
             " exceeds the supported maximum of ", kMaxDims);
  e.ndim = int(sh->size());
  for (int d = 0; d < e.ndim; ++d) {
    const json& x = (*sh)[size_t(d)];
    DSV3_CHECK(x.is_number_unsigned(), ctx, ": shape[", d,
               "] must be a non-negative integer, got ", x.dump());
    const uint64_t u = x.get<uint64_t>();
    DSV3_CHECK(u <= uint64_t(std::numeric_limits<int64_t>::max()), ctx, ": shape[", d,
               "] = ", u, " is too large");
    e.shape[d] = int64_t(u);
  }

  auto off = v.find("data_offsets");
  DSV3_CHECK(off != v.end(), ctx, ": missing \"data_offsets\"");
  DSV3_CHECK(off->is_array() && off->size() == 2 && (*off)[0].is_number_unsigned() &&
                 (*off)[1].is_number_unsigned(),
             ctx, ": \"data_offsets\" must be [begin, end] with non-negative integers, got ",
             off->dump());
  e.begin = (*off)[0].get<uint64_t>();
  e.end = (*off)[1].get<uint64_t>();
  DSV3_CHECK(e.begin <= e.end, ctx, ": data_offsets ", offsets_str(e.begin, e.end),
             " has begin > end");
  uint64_t nbytes = 0;
  DSV3_CHECK(safetensors_nbytes(e.dtype, e.shape, e.ndim, &nbytes), ctx, ": shape ",
             e.shape_str(), " of ", dname, " overflows 64 bits");
  DSV3_CHECK(e.end - e.begin == nbytes, ctx, ": shape ", e.shape_str(), " of ", dname,
             " needs ", nbytes, " bytes but data_offsets ", offsets_str(e.begin, e.end),
             " span ", e.end - e.begin);
  return e;
}

}  // namespace

std::string SafetensorsEntry::shape_str() const {
  std::string s = "[";
  for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

bool safetensors_nbytes(DType dtype, const int64_t* shape, int ndim, uint64_t* out) {
  // The product of the non-zero dimensions and the element size must fit in int64 even
  // when another dimension is 0: TensorView::numel() multiplies them in order, and an
  // overflow there would be undefined behaviour on a file we accepted.
  constexpr uint64_t kMax = uint64_t(std::numeric_limits<int64_t>::max());
  uint64_t n = dtype_size(dtype);
  bool zero = false;
  for (int d = 0; d < ndim; ++d) {
    const uint64_t s = uint64_t(shape[d]);
    if (s == 0) { zero = true; continue; }
    if (n > kMax / s) return false;
    n *= s;
  }
  *out = zero ? 0 : n;
  return true;
}

SafetensorsHeader parse_safetensors(const uint8_t* file, size_t file_size, const std::string& where) {
  DSV3_CHECK(file_size >= 8, where, ": file is ", file_size,
             " bytes, too short for the 8-byte header length (truncated?)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | file[i];  // little-endian u64
  DSV3_CHECK(n <= kSafetensorsMaxHeader, where, ": header length ", n,
             " bytes exceeds the 100 MB limit (not a safetensors file?)");
  DSV3_CHECK(n <= file_size - 8, where, ": header length ", n, " runs past the end of the ",
             file_size, "-byte file (truncated?)");
  DSV3_CHECK(n >= 2, where, ": header length ", n, " is too short for a JSON object");
  const json j = parse_json_strict(file + 8, size_t(n), where, "header", kMaxJsonDepth);
  DSV3_CHECK(j.is_object(), where, ": header must be a JSON object, got ", j.type_name());

  SafetensorsHeader out;
  out.header_len = n;
  out.tensors.reserve(j.size());
  for (const auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      DSV3_CHECK(v.is_object(), where, ": \"__metadata__\" must be an object of strings, got ",
                 v.type_name());
      for (const auto& [k, mv] : v.items()) {
        DSV3_CHECK(mv.is_string(), where, ": \"__metadata__\" key '", k,
                   "' must map to a string, got ", mv.type_name());
        out.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    out.tensors.push_back(parse_entry(name, v, where));
  }

  // Data order; zero-byte tensors sort before others at the same offset.
  std::sort(out.tensors.begin(), out.tensors.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t pos = 0;
  for (const SafetensorsEntry& e : out.tensors) {
    DSV3_CHECK(e.begin >= pos, where, ": tensor '", e.name, "' data_offsets ",
               offsets_str(e.begin, e.end), " overlap the previous tensor, which ends at ", pos);
    DSV3_CHECK(e.begin == pos, where, ": tensor '", e.name, "' data_offsets ",
               offsets_str(e.begin, e.end), " leave a hole: the previous tensor ends at ", pos);
    pos = e.end;
  }
  out.data_size = pos;
  const uint64_t avail = file_size - 8 - n;
  DSV3_CHECK(pos <= avail, where, ": tensor '", out.tensors.back().name, "' data_offsets end at ",
             pos, " but the file holds ", avail, " bytes of data (truncated?)");
  DSV3_CHECK(pos == avail, where, ": file has ", avail - pos,
             " bytes after the last tensor (expected size 8 + ", n, " + ", pos, " = ",
             8 + n + pos, ", got ", file_size, ")");
  return out;
}

}  // namespace dsv3
