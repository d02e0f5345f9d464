#pragma once
// Corpus statistics that put a model's loss in context.
#include <filesystem>

namespace lmf::data {

// Cross-entropy (nats/token) of the `val` split under the `train` split's token frequencies
// (add-one smoothed): the loss of the best model that ignores context. A language model that
// learned anything beats it.
double unigram_cross_entropy(const std::filesystem::path& dir);

}  // namespace lmf::data
