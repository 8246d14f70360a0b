// The all-to-all of expert parallelism (SPEC §4, report §3.2): rows of activations travel
// from the rank that holds a token to the rank that owns the expert it was routed to
// (dispatch), and the expert's output rows travel back (combine); backward the same with
// gradients. This file holds the parts that know nothing about MoE layers: the wire format of
// a row, the exchange plan (how many rows go where, and where they land), the non-blocking
// exchange itself on dist::Comm, and the bytes it sends, for the traffic figures.
//
// Layout. An EP group of P ranks; rank q owns the routed experts [q·El, (q+1)·El), El = E/P.
// A source rank sorts its (token, slot) rows by expert, so the rows for owner q are one
// contiguous block (experts q·El .. (q+1)·El−1, each in token order): that block is what it
// sends to q. The owner receives, from each source s in rank order, one block holding s's rows
// for its local experts 0..El−1 in expert order ("source-major"). It computes per expert over
// the rows of all sources concatenated in source order ("expert-major"): for a global batch
// split over ranks in rank order, an expert then sees its rows in the order one process would
// (the weight gradients are sums over those rows: same order, same bits). The combine sends
// the owner's rows back in the source-major layout it received them in, so a source gets its
// rows back in the order it sent them.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/comm.h"

namespace dsv3 {

// ---- wire format of one row of H values ------------------------------------------------
// F32   4·H bytes (exact);
// BF16  2·H bytes, round to nearest even (core/dtype.h);
// E4M3  H codes, then ceil(H/128) F32 scales: per-row 1x128 tiles with scale = amax/448,
//       exactly kernels/quant.h's quantize_fp8_1x128 (report §3.3.2: the activations before
//       the MoE up-projections are dispatched in FP8).
// A row is padded to a multiple of 4 bytes so that F32 fields stay aligned.
enum class Wire : uint8_t { F32, BF16, E4M3 };
const char* wire_name(Wire w);
int64_t wire_row_bytes(Wire w, int64_t H);
// One row: x [H] -> dst [wire_row_bytes] (dst 4-byte aligned), and back.
void wire_encode(uint8_t* dst, const float* x, int64_t H, Wire w);
void wire_decode(float* x, const uint8_t* src, int64_t H, Wire w);

// ---- the exchange plan ------------------------------------------------------------------
struct EpPlan {
  int P = 1, rank = 0;
  int64_t El = 0;                     // routed experts per rank
  std::vector<int64_t> send_rows;     // [P] rows this rank sends to owner q (its sorted block q)
  std::vector<int64_t> recv_count;    // [P, El] rows from source s for local expert j
  std::vector<int64_t> recv_rows;     // [P] Σ_j recv_count[s, j]
  std::vector<int64_t> block_row;     // [P, El] first row of (s, j) in the source-major buffer
  std::vector<int64_t> expert_start;  // [El + 1] expert j's rows [start[j], start[j+1]) expert-major
  int64_t n_send = 0, n_recv = 0;     // rows sent / received in all (self included)
};

// Builds the plan from this rank's sorted rows: start [E + 1] (its rows for expert e are
// [start[e], start[e+1]) of its sorted order). Exchanges the counts (El int64 per pair of
// ranks, a blocking all-to-all). E must be divisible by comm.size() (dsv3::Error otherwise).
void ep_plan(EpPlan& p, const dist::Comm& comm, const int64_t* start, int64_t E);

// Starts the exchange of rows of row_bytes bytes: forward = source -> owner (send holds the
// sorted rows, block q for owner q; recv gets the source-major layout), backward = owner ->
// source (send in source-major layout, recv in the sorted layout). The buffers must live
// until the request completes.
enum class EpDirection { ToOwners, ToSources };
dist::Request ep_exchange(const dist::Comm& comm, const EpPlan& p, EpDirection dir,
                          const uint8_t* send, uint8_t* recv, int64_t row_bytes);

// The end of an exchange's window: first the other computation's turn when two run at once
// on fibers (core/fiber.h: the training step's micro-batch pairs and F&B pairs; a no-op
// otherwise), then the wait. Every exchange yields here unconditionally, so the interleaving —
// and the order of the collectives — is the same on every rank.
void ep_wait(dist::Request& req);

// ---- bytes ------------------------------------------------------------------------------
// Bytes this rank sends to other ranks (what dist::traffic() counts; the block to itself is a
// local copy). counts: the plan's count exchange; dispatch: rows to owners; combine: rows
// back to sources.
struct EpBytes {
  int64_t counts = 0, dispatch = 0, combine = 0;
  int64_t total() const { return counts + dispatch + combine; }
};
// The rows this rank sends to others × row bytes, given the row sizes of each direction.
EpBytes ep_bytes(const EpPlan& p, int64_t dispatch_row_bytes, int64_t combine_row_bytes,
                 bool with_counts);

}  // namespace dsv3
