// eplb::read_load_file (parallel/eplb.h): the load files `dsv3 eplb --load` and
// `dsv3 serve --expert-load` read.
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/file_util.h"
#include "io/json_strict.h"
#include "parallel/eplb.h"

namespace dsv3::eplb {

LoadFile read_load_file(const std::string& path) {
  const nlohmann::json j = parse_json_strict(read_text_file(path), path, "the load file");
  DSV3_CHECK(j.is_object(), path, ": expected an object {\"weight\": [[load per expert] per layer]}, got a JSON ",
             j.type_name());
  for (const auto& [key, value] : j.items())
    DSV3_CHECK(key == "weight" || key == "layers" || key == "assignments" || key == "rank_load" ||
                   key == "placement",
               path, ": unknown key \"", key, "\" (expected \"weight\", and optionally the server's \"layers\", ",
               "\"assignments\", \"rank_load\" and \"placement\")");
  DSV3_CHECK(j.contains("weight"), path, ": no \"weight\" key (expected {\"weight\": [[load per expert] per layer]})");
  const nlohmann::json& w = j["weight"];
  DSV3_CHECK(w.is_array() && !w.empty(), path, ": \"weight\" must be a non-empty array of layers, got ",
             w.is_array() ? "an empty array" : str_cat("a JSON ", w.type_name()));
  LoadFile out;
  out.weight.resize(w.size());
  for (size_t l = 0; l < w.size(); ++l) {
    DSV3_CHECK(w[l].is_array(), path, ": weight[", l, "] must be an array of loads, one per expert, got a JSON ",
               w[l].type_name());
    DSV3_CHECK(w[l].size() == w[0].size(), path, ": weight[", l, "] has ", w[l].size(), " loads, weight[0] has ",
               w[0].size(), " (every layer needs one load per expert)");
    for (size_t e = 0; e < w[l].size(); ++e) {
      const nlohmann::json& v = w[l][e];
      DSV3_CHECK(v.is_number(), path, ": weight[", l, "][", e, "] is ", v.dump(), ", expected a number");
      out.weight[l].push_back(v.get<double>());
    }
  }
  if (j.contains("layers")) {
    const nlohmann::json& ls = j["layers"];
    DSV3_CHECK(ls.is_array() && ls.size() == w.size(), path, ": \"layers\" must be an array of ", w.size(),
               " layer indices, one per row of \"weight\"");
    for (size_t i = 0; i < ls.size(); ++i) {
      DSV3_CHECK(ls[i].is_number_integer() && ls[i].get<int64_t>() >= 0, path, ": layers[", i, "] is ",
                 ls[i].dump(), ", expected a layer index");
      DSV3_CHECK(i == 0 || ls[i].get<int64_t>() > out.layers.back(), path, ": \"layers\" must be increasing");
      out.layers.push_back(ls[i].get<int64_t>());
    }
  }
  return out;
}

}  // namespace dsv3::eplb
