// Model::forward_batch (the serving step) is batch-invariant at the model level: each
// sequence's logits from one batched step over the paged pool are bit-identical to the same
// step with that sequence alone. The batch mixes what a serving step holds: decode tokens
// (T = 1) at different context lengths, speculative verify rows (T = 2) and draft-sized
// steps (T = 3, 4) — these attend together (mla.cpp attention_decode_batch: gathered rows,
// one slice-kernel call per head, one latent_attention_batch) — a first prefill chunk (p0 = 0,
// the naive form) and a later prefill chunk larger than kLinearGemvMaxM (its own GEMMs).
// Tiny random checkpoints in FP8, BF16 and F32; 1 and 2 threads; activations carried as
// hi+lo (the default) and rounded to BF16 (ModelOptions::bf16_activations, which must change
// the BF16/FP8 logits — it is not ignored — and leave F32 checkpoints' alone); the latent
// cache stored as F32, BF16 and FP8 (kernels/latent_cache.h: the decode attention reads the
// stored rows, the prefill chunks their decoded copy, all the same values).
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <filesystem>

#include "core/parallel.h"
#include "io/random_checkpoint.h"
#include "model/mla.h"
#include "model/model.h"
#include "model_test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBlockRows = 4;  // small blocks: tables of several blocks per sequence

struct SeqSpec {
  int64_t p0, T;
};

// Small sequences (T ≤ kLinearGemvMaxM) first, as forward_batch requires.
const SeqSpec kSeqs[] = {{7, 1}, {30, 1}, {1, 1}, {12, 2}, {19, 3}, {5, 4}, {0, 3}, {11, 9}};
constexpr int kN = int(std::size(kSeqs));

class ForwardBatch
    : public ::testing::TestWithParam<std::tuple<CheckpointFormat, int, bool, CacheDtype>> {};

TEST_P(ForwardBatch, EachSequenceAsAlone) {
  const auto [format, threads, bf16_act, kv] = GetParam();
  const fs::path dir = fs::temp_directory_path() /
                       ("dsv3_fwd_batch_" + std::to_string(::getpid()) + "_" +
                        checkpoint_format_name(format));
  fs::remove_all(dir);
  fs::create_directories(dir);
  RandomCheckpointOptions ro;
  ro.format = format;
  ro.seed = 11;
  ro.with_mtp = false;
  write_random_checkpoint(tiny_v3_config(), dir.string(), ro);
  ModelOptions mo;
  mo.with_mtp = false;
  mo.threads = threads;
  mo.bf16_activations = bf16_act;
  mo.kv_cache = kv;
  Model m(dir.string(), mo);
  const ModelConfig& c = m.config();
  const int64_t V = m.vocab(), row = mla_cache_row(c), L = c.num_hidden_layers;
  m.reserve_positions(64);

  // Each sequence owns a contiguous run of blocks, shuffled within the pool (block i of
  // sequence j is pool block (j + i * kN) so tables interleave).
  const int64_t per_seq = 64 / kBlockRows, n_blocks = per_seq * kN;
  const int64_t rb = cache_row_bytes(kv, row);
  std::vector<uint8_t> pool(static_cast<size_t>(L * n_blocks * kBlockRows * rb));
  KvPoolView view{pool.data(), n_blocks, kBlockRows, row, kv};
  std::vector<std::vector<int32_t>> tables(kN), ids(kN);
  std::vector<std::vector<float>> logits(kN);
  for (int j = 0; j < kN; ++j) {
    for (int64_t i = 0; i < per_seq; ++i) tables[size_t(j)].push_back(int32_t(j + i * kN));
    ids[size_t(j)] = testing::ids_for(kSeqs[j].p0 + kSeqs[j].T, V, 40 + uint32_t(j));
    logits[size_t(j)].assign(static_cast<size_t>(kSeqs[j].T * V), 0.0f);
  }
  // Each sequence's context [0, p0): a real prefill of it alone.
  ForwardScratch s;
  for (int j = 0; j < kN; ++j) {
    if (kSeqs[j].p0 == 0) continue;
    BatchSeq b;
    b.ids = ids[size_t(j)].data();
    b.T = kSeqs[j].p0;
    b.table = tables[size_t(j)].data();
    m.forward_batch(view, &b, 1, true, s);
  }
  const std::vector<uint8_t> context = pool;

  auto seq = [&](int j, float* out) {
    BatchSeq b;
    b.ids = ids[size_t(j)].data() + kSeqs[j].p0;
    b.T = kSeqs[j].T;
    b.p0 = kSeqs[j].p0;
    b.table = tables[size_t(j)].data();
    b.logits = out;
    b.logits_from = 0;  // every row's logits (verify and draft rows need them all)
    return b;
  };
  std::vector<BatchSeq> batch;
  for (int j = 0; j < kN; ++j) batch.push_back(seq(j, logits[size_t(j)].data()));
  m.forward_batch(view, batch.data(), kN, true, s);
  const std::vector<uint8_t> after_batch = pool;

  for (int j = 0; j < kN; ++j) {
    SCOPED_TRACE(::testing::Message() << "sequence " << j << " p0 " << kSeqs[j].p0 << " T "
                                      << kSeqs[j].T);
    pool = context;
    std::vector<float> alone(static_cast<size_t>(kSeqs[j].T * V));
    const BatchSeq b = seq(j, alone.data());
    ForwardScratch s1;
    m.forward_batch(view, &b, 1, true, s1);
    for (size_t k = 0; k < alone.size(); ++k)
      ASSERT_EQ(std::bit_cast<uint32_t>(alone[k]), std::bit_cast<uint32_t>(logits[size_t(j)][k]))
          << "logit " << k << ": alone " << alone[k] << ", batched " << logits[size_t(j)][k];
    // The rows the step wrote into this sequence's blocks are the same too.
    for (int64_t l = 0; l < L; ++l) {
      const LatentCache lc = view.layer(l, tables[size_t(j)].data());
      for (int64_t p = kSeqs[j].p0; p < kSeqs[j].p0 + kSeqs[j].T; ++p) {
        const size_t at = size_t(lc.row(p) - pool.data());
        ASSERT_EQ(0, std::memcmp(&pool[at], &after_batch[at], size_t(rb)))
            << "cache row " << p << " of layer " << l;
      }
    }
  }
  if (bf16_act) {  // the same step with activations carried as hi+lo
    mo.bf16_activations = false;
    Model m32(dir.string(), mo);
    m32.reserve_positions(64);
    pool = context;
    std::vector<std::vector<float>> logits32(kN);
    std::vector<BatchSeq> batch32;
    for (int j = 0; j < kN; ++j) {
      logits32[size_t(j)].assign(logits[size_t(j)].size(), 0.0f);
      batch32.push_back(seq(j, logits32[size_t(j)].data()));
    }
    ForwardScratch s32;
    m32.forward_batch(view, batch32.data(), kN, true, s32);
    bool same = true;
    for (int j = 0; j < kN; ++j) same = same && logits32[size_t(j)] == logits[size_t(j)];
    EXPECT_EQ(same, format == CheckpointFormat::F32)
        << "BF16 activations must change BF16/FP8 linears and only those";
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Formats, ForwardBatch,
                         ::testing::Combine(::testing::Values(CheckpointFormat::FP8,
                                                              CheckpointFormat::BF16,
                                                              CheckpointFormat::F32),
                                            ::testing::Values(1, 2), ::testing::Bool(),
                                            ::testing::Values(CacheDtype::F32, CacheDtype::BF16,
                                                              CacheDtype::FP8)),
                         [](const auto& info) {
                           return std::string(checkpoint_format_name(std::get<0>(info.param))) +
                                  "_t" + std::to_string(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_bf16act" : "") + "_kv" +
                                  cache_dtype_name(std::get<3>(info.param));
                         });

}  // namespace
}  // namespace dsv3
