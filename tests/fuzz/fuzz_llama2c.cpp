// libFuzzer target: llama2.c checkpoints. read_llama2c_config on arbitrary bytes; when it
// accepts the file and the model is small, build the Llama<float> it describes and load the
// weights. A bad file must be a UserError; an accepted one must load without a size mismatch
// (load_llama2c's LMF_CHECK) and put the file's first array in the token embedding.
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "fuzz_file.h"
#include "model/llama.h"
#include "model/llama2c.h"

namespace {

// Parameters a config implies, in double so that no header overflows the estimate.
double param_count(const lmf::ModelConfig& c) {
  const double C = c.n_embd, V = c.vocab_size, L = c.n_layer, H = c.ffn_hidden;
  const double KV = double(c.n_kv_head) * (c.n_embd / c.n_head);
  return V * C * (c.tied_embeddings ? 1 : 2) + C + L * (2 * C + 2 * C * C + 2 * KV * C + 3 * H * C);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lmf;
  const auto& path = fuzz::write_input("llama2c", data, size);
  try {
    const ModelConfig c = read_llama2c_config(path);
    int32_t h[7];
    LMF_FUZZ_ASSERT(size >= sizeof h);
    std::memcpy(h, data, sizeof h);
    LMF_FUZZ_ASSERT(c.n_embd == h[0] && c.ffn_hidden == h[1] && c.n_layer == h[2] &&
                    c.n_head == h[3] && c.n_kv_head == h[4] && c.block_size == h[6]);
    LMF_FUZZ_ASSERT(c.vocab_size > 0 && c.tied_embeddings == (h[5] > 0));
    LMF_FUZZ_ASSERT(param_count(c) * 4 <= double(size));  // the file holds every weight
    if (param_count(c) > 1e6) return 0;  // keep the harness's own allocations small
    Llama<float> m(c);
    load_llama2c(m, path);
    const size_t embed = m.index().embed;
    const size_t n = m.params().entry(embed).size;
    LMF_FUZZ_ASSERT(n == size_t(c.vocab_size) * size_t(c.n_embd));
    LMF_FUZZ_ASSERT(std::memcmp(m.params().param(embed), data + sizeof h, n * sizeof(float)) == 0);
  } catch (const UserError&) {
    // A malformed file, reported as one: the expected outcome for most inputs.
  }
  return 0;
}
