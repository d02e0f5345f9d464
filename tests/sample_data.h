#pragma once
// The bundled real text (tests/data/sotu_sample), prepared into token shards for tests that train
// in-process: byte tokenizer, 20% of documents held out for validation, the CLI tests' split.
#include <filesystem>

#include "data/prepare.h"

namespace lmf::test {

inline void prepare_sample_text(const std::filesystem::path& out_dir) {
  data::PrepareOptions po;
  po.inputs = {std::filesystem::path(LMF_SOURCE_DIR) / "tests/data/sotu_sample"};
  po.out_dir = out_dir;
  po.val_fraction = 0.2;
  po.seed = 3;
  po.threads = 1;
  data::prepare(po);
}

}  // namespace lmf::test
