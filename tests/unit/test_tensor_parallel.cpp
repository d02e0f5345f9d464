// Tensor parallelism without mpirun: the registry's split layout (dist/tensor_parallel.h), and
// whole models run as 2 ranks on 2 threads (tests/thread_comm.h), in double, against the same
// model on one rank.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "dist/tensor_parallel.h"
#include "model/gpt2.h"
#include "model/llama.h"
#include "model_test_util.h"
#include "tp_test_util.h"

namespace lmf {
namespace {

// A registry of the three kinds of tensor: packed q|k|v rows, columns, replicated.
ParamStore<double> registry(int size) {
  ParamStore<double> ps;
  ps.add("qkv", {6 * 2 / size, 3}, true, Split{0, 3});  // whole (12, 3): 3 chunks of 4 rows
  ps.add("proj", {2, 4 / size}, true, Split{1, 1});     // whole (2, 4)
  ps.add("norm", {5}, false);
  ps.allocate();
  return ps;
}

TEST(TensorParallelLayout, SliceTakesEachRanksRowsOfEveryChunkAndItsColumns) {
  auto whole = registry(1);
  auto part = registry(2);
  std::vector<double> w(whole.flat_size());
  std::iota(w.begin(), w.end(), 0.0);
  const auto q = whole.entry(0).offset, p = whole.entry(1).offset, n = whole.entry(2).offset;
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE(rank);
    std::vector<double> got(part.flat_size(), -1);
    dist::tp_slice(whole, w.data(), part, got.data(), 2, rank);
    // qkv: chunk j holds whole rows [4j, 4j + 4); rank r has rows 4j + 2r and 4j + 2r + 1.
    const double* gq = got.data() + part.entry(0).offset;
    for (int j = 0; j < 3; ++j)
      for (int i = 0; i < 2; ++i)
        for (int c = 0; c < 3; ++c)
          EXPECT_EQ(gq[(j * 2 + i) * 3 + c], w[q + size_t((4 * j + 2 * rank + i) * 3 + c)]) << j << i << c;
    // proj: rank r has columns 2r and 2r + 1 of each row.
    const double* gp = got.data() + part.entry(1).offset;
    for (int row = 0; row < 2; ++row)
      for (int c = 0; c < 2; ++c) EXPECT_EQ(gp[row * 2 + c], w[p + size_t(row * 4 + 2 * rank + c)]);
    // norm: whole, on every rank.
    for (int i = 0; i < 5; ++i) EXPECT_EQ(got[part.entry(2).offset + size_t(i)], w[n + size_t(i)]);
  }
}

TEST(TensorParallelLayout, PlacingEveryRanksPartRebuildsTheWhole) {
  auto whole = registry(1);
  for (int size : {1, 2}) {
    auto part = registry(size);
    std::vector<double> w(whole.flat_size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.5 * double(i) + 1;
    for (const auto& e : whole.entries())  // padding is not part of any tensor
      for (size_t j = e.offset + e.size; j < w.size() && j % 16 != 0; ++j) w[j] = 0;
    std::vector<double> back(w.size(), 0.0), piece(part.flat_size());
    for (int r = 0; r < size; ++r) {
      dist::tp_slice(whole, w.data(), part, piece.data(), size, r);
      dist::tp_place(whole, back.data(), part, piece.data(), size, r);
    }
    EXPECT_EQ(back, w) << size;
  }
}

TEST(TensorParallelLayout, MismatchedRegistriesAreRefused) {
  auto whole = registry(1);
  ParamStore<double> other;
  other.add("qkv", {6, 3}, true, Split{0, 3});
  other.allocate();
  std::vector<double> w(whole.flat_size()), p(other.flat_size());
  EXPECT_THROW(dist::tp_slice(whole, w.data(), other, p.data(), 2, 0), Error);
}

// The model of family M on `size` ranks (threads) equals it on one: the loss, and every
// gradient once each rank's part is put in its place.
template <class M>
void expect_split_matches_whole(const ModelConfig& cfg, int size) {
  SCOPED_TRACE(size);
  const int B = 2, T = 7, V = cfg.vocab_size;
  M whole(cfg);
  test::randomise(whole, 11);
  auto batch = test::random_batch(B, T, V, 12);
  const double scale = 1.0 / (B * T - 1);
  whole.params().zero_grad();
  const double loss = whole.forward(batch.x.data(), batch.y.data(), B, T, scale);
  whole.backward();
  const auto& wps = whole.params();

  const auto run = test::run_split<M>(cfg, size, wps, batch, B, T, scale);
  const auto& losses = run.losses;
  const auto& part_grads = run.grads;

  std::vector<double> grads(wps.flat_size(), 0.0);
  for (int r = size - 1; r >= 0; --r) {
    SCOPED_TRACE(r);
    EXPECT_NEAR(losses[size_t(r)], loss, 1e-12 * loss);
    M shape(cfg, false, nn::TensorParallel{nullptr, size, r});
    // Replicated tensors see the same numbers on every rank: the same gradient, bit for bit.
    for (const auto& e : shape.params().entries()) {
      if (e.split_dim >= 0) continue;
      for (size_t j = 0; j < e.size; ++j)
        ASSERT_EQ(part_grads[size_t(r)][e.offset + j], part_grads[0][e.offset + j]) << e.name << " " << j;
    }
    test::place_split<M>(cfg, size, r, wps, part_grads[size_t(r)], grads.data());
  }
  double worst = 0;
  size_t split_values = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const double ref = wps.grads()[i];
    worst = std::max(worst, std::abs(grads[i] - ref) / (1e-6 + std::abs(ref)));
  }
  const M shape0(cfg, false, nn::TensorParallel{nullptr, size, 0});
  for (const auto& e : shape0.params().entries())
    split_values += e.split_dim >= 0 ? e.size : 0;
  EXPECT_GT(split_values, 0u);  // the model really is split
  // Double precision, only the summation order differs: relative 1e-10 is ~10^6 ulps.
  EXPECT_LT(worst, 1e-10);
}

TEST(TensorParallelModel, Gpt2OnTwoRanksEqualsOneRank) {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 16;
  c.vocab_size = 23;
  c.block_size = 8;
  expect_split_matches_whole<Gpt2<double>>(c, 2);
  c.tied_embeddings = false;
  expect_split_matches_whole<Gpt2<double>>(c, 4);
}

TEST(TensorParallelModel, LlamaWithGqaAndBiasesOnTwoRanksEqualsOneRank) {
  ModelConfig c;
  c.arch = "llama";
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.n_embd = 16;
  c.ffn_hidden = 24;
  c.vocab_size = 23;
  c.block_size = 8;
  c.attention_bias = true;
  c.mlp_bias = true;
  expect_split_matches_whole<Llama<double>>(c, 2);
  c.attention_bias = c.mlp_bias = false;
  c.n_kv_head = 4;
  expect_split_matches_whole<Llama<double>>(c, 4);
}

}  // namespace
}  // namespace lmf
