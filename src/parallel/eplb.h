// Redundant experts for expert-parallel inference (report §3.4; SPEC §5): DeepSeek's public
// expert-parallelism load balancer (deepseek-ai/EPLB, eplb.py `rebalance_experts`), restated
// so that the same loads give the same placement.
//
// From each MoE layer's load per logical expert (tokens routed to it over some window) it
// chooses R physical expert slots (R ≥ E: the extra R − E are copies of hot experts), which
// logical expert each slot holds, and lays the slots out GPU-major: slot p lives on GPU
// p / (R / gpus), and GPU q on node q / (gpus / nodes).
//
//   hierarchical (groups % nodes == 0): (1) whole expert groups to nodes, balancing the
//     nodes' loads, so group-limited routing stays within a node; (2) within each node, the
//     copies: each extra slot goes to the expert whose load per copy is highest; (3) the
//     node's slots to its GPUs, balancing the GPUs' loads.
//   global (otherwise): the same with one group and one node — copies chosen over all
//     experts, slots packed over all GPUs. (The first eplb.py returned replicate_experts'
//     slot order here, without packing the slots to GPUs; this follows the current one.)
//
// Both packings are the greedy of eplb.py's balanced_packing: items by load, heaviest first,
// each into the pack with the least load among those not yet full, every pack taking the
// same number of items. With one item per pack eplb.py skips the greedy: item i to pack i.
//
// Bit-for-bit as the public code, whose inputs become float32 (`weight.float()`): loads are
// rounded to float once, and every sum and quotient is a float operation. Ties:
//   - argmax (torch max(dim).indices) takes the first maximum, as torch documents: the
//     lowest expert index;
//   - the least-loaded pack (Python min) is the first: the lowest pack index;
//   - equal loads in the descending sort keep index order. torch.sort (stable=False) on CPU
//     is std::sort, which with libstdc++ keeps equal keys in order for rows of up to 16
//     items (its insertion sort); longer rows (step 3 on a node of more than 16 slots), or
//     PyTorch builds that sort float rows with x86-simd-sort, may order equal loads
//     differently. That changes which copy of an expert sits where (log2phy) and, for equal
//     loads of different experts, phy2log. The README example's phy2log does not depend on it.
//   - group loads are summed left to right; torch's vectorised sum may round a sum of
//     non-integer loads differently in the last bit. Integer loads below 2^24 (token
//     counts) are exact either way.
// docs/serve.md, "Redundant experts (EPLB)"; tests/test_eplb.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::eplb {

struct Params {
  int num_replicas = 0;  // R: physical expert slots per layer, all GPUs; a multiple of num_gpus
  int num_groups = 1;    // expert groups (DeepSeek-V3: n_group = 8); divides the expert count
  int num_nodes = 1;     // nodes; divides num_gpus
  int num_gpus = 1;      // GPUs, all nodes
};

struct Plan {
  bool hierarchical = false;  // which policy ran (groups % nodes == 0)
  int max_copies = 0;         // X: the most slots any expert has, over all layers
  std::vector<std::vector<int>> phy2log;               // [layers][R]: expert in slot p
  std::vector<std::vector<std::vector<int>>> log2phy;  // [layers][E][X]: slots of copy r, -1 past logcnt
  std::vector<std::vector<int>> logcnt;                // [layers][E]: copies of each expert
};

// The public entry point. weight: [layers][E] loads, finite and ≥ 0, every layer the same
// length. Throws dsv3::Error naming the bad count or load (see validate()).
Plan rebalance_experts(const std::vector<std::vector<double>>& weight, const Params& p);
Plan rebalance_experts(const std::vector<std::vector<float>>& weight, const Params& p);

// Checks the counts against each other for E experts: all ≥ 1, num_replicas ≥ E and a multiple
// of num_gpus, num_gpus a multiple of num_nodes, E a multiple of num_groups. The last two
// hold under either policy: they describe the cluster and the model, although eplb.py's
// global policy never looks at groups or nodes and so accepts them broken.
void validate(const Params& p, int num_experts);

// A load file: {"weight": [[load per expert] per layer]}, every layer the same length, every
// load a number (finite and ≥ 0 is rebalance_experts' check). What `dsv3 serve` writes
// (GET /v1/expert_load, --expert-load-out) rides along: "layers", the model layer of each row
// (only the layers that routed tokens are listed), "assignments", "rank_load" and "placement".
// Throws dsv3::Error naming the file and the key or element that is wrong.
struct LoadFile {
  std::vector<std::vector<double>> weight;  // [rows][E]
  std::vector<int64_t> layers;              // [rows] or empty: row i is the i-th layer given
};
LoadFile read_load_file(const std::string& path);

// ---- the building blocks, exposed for tests --------------------------------------------

// Pack n items into num_packs packs of n / num_packs items each (n a multiple of num_packs).
struct Packing {
  std::vector<int> pack;  // [n]: pack of item i
  std::vector<int> rank;  // [n]: its position within the pack, in the order it was placed
};
Packing balanced_packing(const std::vector<float>& weight, int num_packs);

// Give num_phy ≥ n slots to n items: slot i < n holds item i; each later slot goes to the item
// with the highest weight / copies (the first such item).
struct Replication {
  std::vector<int> phy2log;  // [num_phy]: item in slot p
  std::vector<int> rank;     // [num_phy]: which copy of its item slot p is (0 = the original)
  std::vector<int> logcnt;   // [n]: copies of each item
};
Replication replicate_experts(const std::vector<float>& weight, int num_phy);

}  // namespace dsv3::eplb
