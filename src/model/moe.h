// The feed-forward half of a block: a dense SwiGLU MLP (the first first_k_dense_replace
// layers) or DeepSeekMoE (SPEC §1, report §2.1.2): shared experts on every token plus the
// top-k routed experts chosen by the gate, computed grouped — the tokens routed to an
// expert are gathered, run through it as one matmul per projection, and scattered back.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/expert_placement.h"
#include "kernels/gemv.h"
#include "model/linear.h"

namespace dsv3 {
namespace dist { class Comm; }

// Expert parallelism at inference (`dsv3 serve --ep P`, docs/serve.md): by default rank r of
// the EP group holds the routed experts [first_expert(r), first_expert(r + 1)) — contiguous
// blocks, as training's EP layout (parallel/ep_dispatch.h); with redundant experts, the
// experts of its slots (model/expert_placement.h). Every rank routes every token the same
// way and so assigns the work the same way. A rank runs the work assigned to it, the outputs
// of each (token, expert) pair are all-gathered, and every rank adds all of them in the
// one-process order (shared experts, then the token's experts by index): the sum, so the
// layer's output, is the one-process result bit for bit whatever the placement. An
// allreduce of per-rank partial sums would add in another order.
inline int64_t ep_first_expert(int64_t n_experts, int ranks, int rank) {
  return int64_t(rank) * n_experts / ranks;
}

// One expert's share of a decode step: up to kGemvMaxM tokens (rows of x) and their gate
// weights (1 for shared experts and dense layers).
struct FfnTask {
  const MlpWeights* w = nullptr;
  int n = 0;
  int32_t tok[kGemvMaxM] = {};
  float weight[kGemvMaxM] = {};
};

// Per-call buffers of moe_route, kept by the caller so that routing does not allocate.
struct RouteScratch {
  std::vector<float> score, biased;  // [E]
  std::vector<float> gscore;         // [n_group]
  std::vector<int32_t> gsel;         // [topk_group]
  std::vector<uint8_t> allowed;      // [E]
  std::vector<float> nscore;         // [n_nodes] node-limited routing
  std::vector<int32_t> nsel, ntop;   // [max_nodes], [K / max_nodes]
  std::vector<uint8_t> nallowed;     // [max(n_nodes, n_group)]
};

// Node-limited routing (report §2.1.2; SPEC §2): the routed experts split into n_nodes equal
// consecutive blocks (under expert parallelism, the experts of a node's EP ranks) and each
// token's experts lie on at most max_nodes of them. A node's score is the sum of the highest
// K/max_nodes selection scores (biased, as the group score of noaux_tc) of its experts; the
// max_nodes best nodes are kept, then group-limited routing (when configured) picks its
// topk_group groups among the groups on those nodes (groups must nest in nodes), then top-k.
// max_nodes = 0: off (moe_route is then exactly the plain rule).
struct NodeLimit {
  int64_t n_nodes = 0;
  int64_t max_nodes = 0;
};
// User-input checks of a node limit against the config (dsv3::Error naming the values); a
// no-op when max_nodes = 0.
void check_node_limit(const ModelConfig& c, const NodeLimit& nl);

struct FfnScratch {
  LinearScratch lin;
  std::vector<float> gate, up;          // [rows, inter]
  std::vector<float> y;                 // [rows, H]
  std::vector<float> xe;                // [rows, H] gathered expert input
  std::vector<float> logits, scores;    // [T, E]
  std::vector<int32_t> topk_idx;        // [T, k]
  std::vector<float> topk_w;            // [T, k]
  std::vector<int32_t> order, count;    // token slots grouped by expert
  std::vector<int32_t> fill;            // [E] counting-sort cursors
  RouteScratch route;
  std::vector<float> h;                 // decode: [tasks, ≤ kGemvMaxM, inter] SwiGLU outputs
  std::vector<float> down;              // decode: [tasks, ≤ kGemvMaxM, H] down projections
  std::vector<FfnTask> tasks;           // decode: the experts of the step
  std::vector<int64_t> off;             // decode: [3, tasks + 1] offsets into h, xe, units
  std::vector<LinearScratch> per_thread;
  std::vector<int32_t> ep_first;        // EP decode: [P + 1] first task of each rank's work
  std::vector<float> ey;                // EP prefill: [T·K, H] expert outputs, rank-major
  // Expert parallelism: the units of work (an expert's rows of a prefill sequence, or one
  // decode task), their rank, and the tasks reordered rank-major.
  std::vector<int32_t> unit_expert, unit_rows, unit_rank, add_order;
  std::vector<int64_t> ey_off;          // EP prefill: [E] first row of each expert in ey
  std::vector<FfnTask> ep_tasks;
  ExpertPlacement::Scratch assign;
  ExpertPlacement plain;                // the contiguous placement when the layer names none
  // Prefill in one process: the routed experts one per thread, each with its own scratch;
  // each token's K rows of the expert-sorted outputs (ey), ascending.
  std::vector<FfnScratch> per_expert_thread;
  std::vector<int32_t> tok_rows;        // [T, K]
};

// An expert-sorted order of a MoE layer's (token, slot) pairs (order [T·K], the counting sort
// of moe_forward / moe_train_forward: experts ascending, tokens ascending within an expert)
// and each expert's outputs y [T·K, H] in that order. moe_token_rows: each token's K rows of
// it, ascending (rows [T, K]; fill [T] scratch), which are its experts in index order.
// moe_add_token_rows: out [T, H] += each token's rows in that order, weighted by
// wt[order[r]] (wt null: added as they are) — the order and arithmetic of a loop over the
// experts adding their rows, so the same bits, over the threads.
const int32_t* moe_token_rows(const int32_t* order, int64_t T, int64_t K,
                              std::vector<int32_t>& rows, std::vector<int32_t>& fill);
void moe_add_token_rows(float* out, const float* y, const int32_t* rows, const int32_t* order,
                        const float* wt, int64_t T, int64_t K, int64_t H, int threads);

// Under expert parallelism, ffn_tasks_decode's tasks [first[r], first[r + 1]) are rank r's
// (first [P + 1]) and the tasks before first[0] (shared experts) every rank's. order [tasks]
// (nullptr: task order) is the order the outputs are added in — the one-process order, which
// a rank-major task list does not follow once copies of experts sit on other ranks.
struct TaskShard {
  const dist::Comm* comm = nullptr;
  const int32_t* first = nullptr;
  const int32_t* order = nullptr;
};

// out [T, H] += Σ_tasks weight · expert(x[tok]) for decode-sized T (≤ kGemvMaxM), all
// experts in one parallel region: gate/up split into 128-row blocks over the threads, then
// down split by output rows (each thread owns its rows of out: no reduction). Many small
// weight-streaming GEMVs would each pay a fork/join otherwise.
// shard (expert parallelism): this rank computes its own and the shared tasks, all-gathers
// the others' outputs, then adds every task in order as one process would.
void ffn_tasks_decode(float* out, const float* x, int64_t T, int64_t H, const FfnTask* tasks,
                      int n_tasks, FfnScratch& s, int threads, const TaskShard* shard = nullptr);

// The decode forms for any T: tasks of ≤ kGemvMaxM tokens through ffn_tasks_decode, each
// token's result independent of the others (the batch-invariant serving step, docs/serve.md).
// moe_forward_decode leaves the routing in s.topk_idx / s.topk_w like moe_forward.
void mlp_forward_decode(float* out, const float* x, int64_t T, int64_t H, const MlpWeights& w,
                        FfnScratch& s, bool accumulate, int threads);

// out [T, H] (written, or added to) = down(silu(gate(x)) * up(x)).
void mlp_forward(float* out, const float* x, int64_t T, int64_t H, const MlpWeights& w,
                 FfnScratch& s, bool accumulate, int threads);

// The gate's decision for T tokens: idx [T, k] (chosen experts, best biased score first)
// and weights [T, k] (unbiased scores, normalised/scaled per docs/numerics.md).
// logits [T, E] are the router outputs; bias [E] or nullptr. nl: node-limited routing.
void moe_route(int32_t* idx, float* weight, const float* logits, int64_t T, const ModelConfig& c,
               const float* bias, RouteScratch& s, const NodeLimit& nl = {});

struct MoeLayer {
  const MoeWeights* w = nullptr;
  const float* bias = nullptr;  // [E] e_score_correction_bias (F32 copy) or nullptr
  // Expert parallelism (nullptr or one rank: every expert here): this rank holds only the
  // experts [ep_first_expert(E, P, rank), ep_first_expert(E, P, rank + 1)); the others'
  // weights are not loaded. Every rank of ep must call the layer with the same x.
  const dist::Comm* ep = nullptr;
  // With ep: the layer's slots over the ranks (nullptr: the contiguous blocks above); this
  // rank must hold the weights of every expert with a slot on it.
  const ExpertPlacement* place = nullptr;
  // With ep, when set: [P] += the routed rows each rank computed in this call.
  int64_t* rank_rows = nullptr;
  // With ep and place: [P] the rows each rank took in this layer's earlier calls under this
  // placement (ExpertPlacement::assign's balance), updated. Every rank must pass the same.
  int64_t* balance = nullptr;
};

void moe_forward_decode(float* out, const float* x, int64_t T, const ModelConfig& c,
                        const MoeLayer& L, FfnScratch& s, int threads);

// out [T, H] (written) = shared_experts(x) + Σ_{i ∈ TopK} g_i · expert_i(x). The routing
// decision is left in s.topk_idx / s.topk_w ([T, k]).
void moe_forward(float* out, const float* x, int64_t T, const ModelConfig& c, const MoeLayer& L,
                 FfnScratch& s, int threads);

}  // namespace dsv3
