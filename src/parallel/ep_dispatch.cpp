#include "parallel/ep_dispatch.h"

#include <cstring>

#include "core/check.h"
#include "core/fiber.h"
#include "kernels/convert.h"
#include "kernels/quant.h"

namespace dsv3 {
namespace {

int64_t pad4(int64_t b) { return (b + 3) / 4 * 4; }

}  // namespace

const char* wire_name(Wire w) {
  return w == Wire::F32 ? "f32" : w == Wire::BF16 ? "bf16" : "e4m3";
}

int64_t wire_row_bytes(Wire w, int64_t H) {
  switch (w) {
    case Wire::F32: return 4 * H;
    case Wire::BF16: return pad4(2 * H);
    case Wire::E4M3: return pad4(H) + 4 * fp8_blocks(H);
  }
  return 0;
}

void wire_encode(uint8_t* dst, const float* x, int64_t H, Wire w) {
  switch (w) {
    case Wire::F32:
      std::memcpy(dst, x, size_t(H) * sizeof(float));
      return;
    case Wire::BF16:
      convert_f32_to_bf16(x, reinterpret_cast<uint16_t*>(dst), H);
      return;
    case Wire::E4M3:  // one thread: callers encode rows in parallel, or rows are few
      quantize_fp8_1x128(x, DType::F32, 1, H, H, dst, H, reinterpret_cast<float*>(dst + pad4(H)), 1);
      return;
  }
}

void wire_decode(float* x, const uint8_t* src, int64_t H, Wire w) {
  switch (w) {
    case Wire::F32:
      std::memcpy(x, src, size_t(H) * sizeof(float));
      return;
    case Wire::BF16:
      convert_bf16_to_f32(reinterpret_cast<const uint16_t*>(src), x, H);
      return;
    case Wire::E4M3:
      dequantize_fp8_1x128(src, 1, H, H, reinterpret_cast<const float*>(src + pad4(H)), x,
                           DType::F32, H, 1);
      return;
  }
}

void ep_plan(EpPlan& p, const dist::Comm& comm, const int64_t* start, int64_t E) {
  const int P = comm.size();
  DSV3_CHECK(E % P == 0, "expert parallelism: n_routed_experts (", E,
             ") must be divisible by the expert-parallel size (", P, ")");
  const int64_t El = E / P;
  p.P = P;
  p.rank = comm.rank();
  p.El = El;
  p.send_rows.assign(size_t(P), 0);
  p.recv_count.assign(size_t(P * El), 0);
  p.recv_rows.assign(size_t(P), 0);
  p.block_row.assign(size_t(P * El), 0);
  p.expert_start.assign(size_t(El + 1), 0);

  // counts[q, j] = rows for owner q's local expert j: exchanged as El int64 per pair.
  std::vector<int64_t> counts(size_t(P * El));
  for (int64_t e = 0; e < E; ++e) counts[size_t(e)] = start[e + 1] - start[e];
  for (int q = 0; q < P; ++q) p.send_rows[size_t(q)] = start[(q + 1) * El] - start[q * El];
  std::vector<int64_t> cnt(size_t(P), El * 8);
  std::vector<int64_t> displ(static_cast<size_t>(P));
  for (int q = 0; q < P; ++q) displ[size_t(q)] = q * El * 8;
  dist::Request req = comm.ialltoallv(counts.data(), cnt, displ, p.recv_count.data(), cnt, displ);
  ep_wait(req);  // another micro-batch may compute while the counts travel

  p.n_send = start[E] - start[0];
  p.n_recv = 0;
  for (int s = 0; s < P; ++s)
    for (int64_t j = 0; j < El; ++j) {
      p.block_row[size_t(s * El + j)] = p.n_recv;
      p.recv_rows[size_t(s)] += p.recv_count[size_t(s * El + j)];
      p.n_recv += p.recv_count[size_t(s * El + j)];
    }
  for (int64_t j = 0; j < El; ++j) {
    int64_t n = 0;
    for (int s = 0; s < P; ++s) n += p.recv_count[size_t(s * El + j)];
    p.expert_start[size_t(j + 1)] = p.expert_start[size_t(j)] + n;
  }
}

void ep_wait(dist::Request& req) {
  fiber_yield();
  req.wait();
}

dist::Request ep_exchange(const dist::Comm& comm, const EpPlan& p, EpDirection dir,
                          const uint8_t* send, uint8_t* recv, int64_t row_bytes) {
  const std::vector<int64_t>& out = dir == EpDirection::ToOwners ? p.send_rows : p.recv_rows;
  const std::vector<int64_t>& in = dir == EpDirection::ToOwners ? p.recv_rows : p.send_rows;
  std::vector<int64_t> sc(size_t(p.P)), sd(size_t(p.P)), rc(size_t(p.P)), rd(size_t(p.P));
  int64_t so = 0, ro = 0;
  for (int q = 0; q < p.P; ++q) {
    sc[size_t(q)] = out[size_t(q)] * row_bytes;
    sd[size_t(q)] = so;
    so += sc[size_t(q)];
    rc[size_t(q)] = in[size_t(q)] * row_bytes;
    rd[size_t(q)] = ro;
    ro += rc[size_t(q)];
  }
  return comm.ialltoallv(send, sc, sd, recv, rc, rd);
}

EpBytes ep_bytes(const EpPlan& p, int64_t dispatch_row_bytes, int64_t combine_row_bytes,
                 bool with_counts) {
  EpBytes b;
  if (p.P == 1) return b;
  for (int q = 0; q < p.P; ++q) {
    if (q == p.rank) continue;
    b.dispatch += p.send_rows[size_t(q)] * dispatch_row_bytes;
    b.combine += p.recv_rows[size_t(q)] * combine_row_bytes;
  }
  if (with_counts) b.counts = int64_t(p.P - 1) * p.El * 8;
  return b;
}

}  // namespace dsv3
