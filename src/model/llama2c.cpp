#include "model/llama2c.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

#include "core/error.h"
#include "core/file_io.h"

namespace lmf {
namespace {

constexpr int64_t kHeaderBytes = 7 * 4;

struct Header {
  int32_t dim, hidden, layers, heads, kv_heads, vocab, seq_len;
};

Header parse_header(const std::string& bytes, const std::filesystem::path& path) {
  if (int64_t(bytes.size()) < kHeaderBytes)
    throw UserError("file {}: too short for a llama2.c checkpoint header ({} bytes, need {})", path.string(),
                    bytes.size(), kHeaderBytes);
  Header h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  const std::string f = path.string();
  if (h.dim <= 0 || h.hidden <= 0 || h.layers <= 0 || h.heads <= 0 || h.kv_heads <= 0 || h.vocab == 0 ||
      h.vocab == INT32_MIN || h.seq_len <= 0)
    throw UserError("file {}: not a llama2.c checkpoint (header dim {}, hidden_dim {}, n_layers {}, n_heads {}, "
                    "n_kv_heads {}, vocab_size {}, seq_len {})",
                    f, h.dim, h.hidden, h.layers, h.heads, h.kv_heads, h.vocab, h.seq_len);
  if (h.dim % h.heads != 0)
    throw UserError("file {}: dim {} is not a multiple of n_heads {}", f, h.dim, h.heads);
  if (h.heads % h.kv_heads != 0)
    throw UserError("file {}: n_heads {} is not a multiple of n_kv_heads {}", f, h.heads, h.kv_heads);
  if ((h.dim / h.heads) % 2 != 0)
    throw UserError("file {}: head size {} is odd (RoPE needs pairs)", f, h.dim / h.heads);
  return h;
}

// Bytes the header implies for the whole file, or -1 when that is past int64 (a garbage header:
// products of 31-bit dimensions overflow int64, so they are formed in 128 bits).
int64_t expected_bytes(const Header& h) {
  using I = __int128;
  const I C = h.dim, H = h.hidden, L = h.layers, V = h.vocab < 0 ? -I(h.vocab) : I(h.vocab);
  const I hs = C / h.heads, KV = hs * h.kv_heads;
  I n = V * C;                             // token_embedding
  n += L * C;                              // rms_att
  n += L * C * C + 2 * L * KV * C + L * C * C;  // wq, wk, wv, wo
  n += L * C;                              // rms_ffn
  n += 3 * L * H * C;                      // w1, w2, w3
  n += C;                                  // rms_final
  n += I(h.seq_len) * hs;                  // two RoPE tables of seq_len * hs / 2
  if (h.vocab < 0) n += V * C;             // classifier
  const I bytes = kHeaderBytes + 4 * n;
  return bytes > I(INT64_MAX) ? -1 : int64_t(bytes);
}

// The file must be exactly as large as its header says.
void check_size(const Header& h, uint64_t size, const std::filesystem::path& path) {
  const int64_t want = expected_bytes(h);
  if (want < 0 || size != uint64_t(want))
    throw UserError("file {}: size {} bytes, but its llama2.c header (dim {}, hidden_dim {}, n_layers {}, "
                    "n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}) implies {} bytes",
                    path.string(), size, h.dim, h.hidden, h.layers, h.heads, h.kv_heads, h.vocab, h.seq_len,
                    want < 0 ? std::string("over 2^63") : std::to_string(want));
}

Header checked_header(const std::string& bytes, const std::filesystem::path& path) {
  Header h = parse_header(bytes, path);
  check_size(h, bytes.size(), path);
  return h;
}

ModelConfig config_of(const Header& h) {
  ModelConfig c;
  c.arch = "llama";
  c.n_layer = h.layers;
  c.n_head = h.heads;
  c.n_kv_head = h.kv_heads;
  c.n_embd = h.dim;
  c.ffn_hidden = h.hidden;
  c.vocab_size = h.vocab < 0 ? -h.vocab : h.vocab;
  c.block_size = h.seq_len;
  c.tied_embeddings = h.vocab > 0;
  c.rope_theta = 10000.0;
  c.rope_interleaved = true;
  c.norm_eps = 1e-5;
  return c;
}

std::string header_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError("file {}: cannot open", path.string());
  std::string s(kHeaderBytes, '\0');
  in.read(s.data(), kHeaderBytes);
  s.resize(size_t(in.gcount()));
  return s;
}

}  // namespace

ModelConfig read_llama2c_config(const std::filesystem::path& path) {
  std::string head = header_bytes(path);
  Header h = parse_header(head, path);
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw UserError("file {}: cannot read its size: {}", path.string(), ec.message());
  check_size(h, size, path);
  return config_of(h);
}

void load_llama2c(Llama<float>& model, const std::filesystem::path& path) {
  const std::string bytes = read_file(path);
  const Header h = checked_header(bytes, path);
  const ModelConfig c = config_of(h);
  const ModelConfig& m = model.config();
  if (m.n_layer != c.n_layer || m.n_head != c.n_head || model.n_kv_head() != c.n_kv_head ||
      m.n_embd != c.n_embd || model.ffn_hidden() != c.ffn_hidden || m.vocab_size != c.vocab_size ||
      m.tied_embeddings != c.tied_embeddings)
    throw UserError("file {}: checkpoint shape (n_layer {}, n_head {}, n_kv_head {}, n_embd {}, ffn_hidden {}, "
                    "vocab_size {}, tied {}) does not match the model's",
                    path.string(), c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.ffn_hidden, c.vocab_size,
                    c.tied_embeddings);
  auto& ps = model.params();
  const auto& idx = model.index();
  const char* p = bytes.data() + kHeaderBytes;
  auto take = [&](size_t i) {  // the next entry-sized array into parameter i
    size_t n = ps.entry(i).size;
    std::memcpy(ps.param(i), p, n * sizeof(float));
    p += n * sizeof(float);
  };
  // Per-layer arrays are stored layer-major: all layers of one kind, then the next kind.
  auto each_layer = [&](size_t Llama<float>::Index::Layer::*field) {
    for (const auto& li : idx.layers) take(li.*field);
  };
  using Layer = Llama<float>::Index::Layer;
  take(idx.embed);
  each_layer(&Layer::attn_norm);
  each_layer(&Layer::wq);
  each_layer(&Layer::wk);
  each_layer(&Layer::wv);
  each_layer(&Layer::wo);
  each_layer(&Layer::ffn_norm);
  each_layer(&Layer::gate);  // w1
  each_layer(&Layer::down);  // w2
  each_layer(&Layer::up);    // w3
  take(idx.norm);
  p += size_t(h.seq_len) * size_t(h.dim / h.heads) * sizeof(float);  // the two unused RoPE tables
  if (!c.tied_embeddings) take(idx.lm_head);
  LMF_CHECK(p == bytes.data() + bytes.size(), "llama2c layout: {} bytes left", bytes.data() + bytes.size() - p);
}

}  // namespace lmf
