#include "model/hf.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"
#include "core/half.h"
#include "core/safetensors.h"

namespace lmf {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kConfig = "config.json";
const char* kSingle = "model.safetensors";
const char* kIndex = "model.safetensors.index.json";

// Typed access to config.json fields, with errors naming the file and the field.
class ConfigJson {
 public:
  explicit ConfigJson(const fs::path& file) : file_(file.string()) {
    try {
      j_ = json::parse(read_file(file));
    } catch (const json::exception& e) {
      throw UserError("{}: not valid JSON ({})", file_, e.what());
    }
    if (!j_.is_object()) throw UserError("{}: expected a JSON object", file_);
  }
  bool has(const char* k) const { return j_.contains(k) && !j_.at(k).is_null(); }
  const json& at(const char* k) const {
    if (!has(k)) throw UserError("{}: missing field '{}'", file_, k);
    return j_.at(k);
  }
  int integer(const char* k) const {
    const json& v = at(k);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (int64_t(1) << 30))
      throw UserError("{}: field '{}' must be a non-negative integer (got {})", file_, k, v.dump());
    return v.get<int>();
  }
  int integer(const char* k, int dflt) const { return has(k) ? integer(k) : dflt; }
  double number(const char* k) const {
    const json& v = at(k);
    if (!v.is_number()) throw UserError("{}: field '{}' must be a number (got {})", file_, k, v.dump());
    return v.get<double>();
  }
  double number(const char* k, double dflt) const { return has(k) ? number(k) : dflt; }
  bool boolean(const char* k, bool dflt) const {
    if (!has(k)) return dflt;
    const json& v = j_.at(k);
    if (!v.is_boolean()) throw UserError("{}: field '{}' must be true or false (got {})", file_, k, v.dump());
    return v.get<bool>();
  }
  std::string string(const char* k) const {
    const json& v = at(k);
    if (!v.is_string()) throw UserError("{}: field '{}' must be a string (got {})", file_, k, v.dump());
    return v.get<std::string>();
  }
  std::string string(const char* k, const std::string& dflt) const { return has(k) ? string(k) : dflt; }
  [[noreturn]] void unsupported(const char* k, const std::string& what) const {
    throw UserError("{}: field '{}': {}", file_, k, what);
  }
  const json& raw() const { return j_; }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  json j_;
};

ModelConfig gpt2_from(const ConfigJson& j) {
  ModelConfig c;
  c.arch = "gpt2";
  c.vocab_size = j.integer("vocab_size");
  c.block_size = j.integer("n_positions");
  c.n_embd = j.integer("n_embd");
  c.n_layer = j.integer("n_layer");
  c.n_head = j.integer("n_head");
  c.tied_embeddings = j.boolean("tie_word_embeddings", true);
  if (j.has("n_inner") && j.integer("n_inner") != 4 * c.n_embd)
    j.unsupported("n_inner", fmt::format("lmforge's GPT-2 has an MLP width of 4 n_embd = {}", 4 * c.n_embd));
  std::string act = j.string("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh")
    j.unsupported("activation_function", fmt::format("expected gelu_new (the tanh approximation), got \"{}\"", act));
  if (double eps = j.number("layer_norm_epsilon", 1e-5); std::abs(eps - 1e-5) > 1e-12)
    j.unsupported("layer_norm_epsilon", fmt::format("lmforge's GPT-2 LayerNorm uses 1e-5 (got {})", eps));
  if (!j.boolean("scale_attn_weights", true)) j.unsupported("scale_attn_weights", "expected true");
  if (j.boolean("scale_attn_by_inverse_layer_idx", false))
    j.unsupported("scale_attn_by_inverse_layer_idx", "expected false");
  return c;
}

ModelConfig llama_from(const ConfigJson& j) {
  ModelConfig c;
  c.arch = "llama";
  c.vocab_size = j.integer("vocab_size");
  c.n_embd = j.integer("hidden_size");
  c.n_layer = j.integer("num_hidden_layers");
  c.n_head = j.integer("num_attention_heads");
  if (c.n_head < 1 || c.n_embd % c.n_head != 0)
    j.unsupported("hidden_size", fmt::format("must be a multiple of num_attention_heads = {}", c.n_head));
  c.n_kv_head = j.integer("num_key_value_heads", c.n_head);
  if (c.n_kv_head < 1 || c.n_head % c.n_kv_head != 0)
    j.unsupported("num_key_value_heads", fmt::format("must divide num_attention_heads = {}", c.n_head));
  if (j.has("head_dim") && j.integer("head_dim") != c.n_embd / c.n_head)
    j.unsupported("head_dim", fmt::format("lmforge needs hidden_size / num_attention_heads = {}", c.n_embd / c.n_head));
  c.ffn_hidden = j.integer("intermediate_size");
  c.block_size = j.integer("max_position_embeddings", 2048);
  c.norm_eps = j.number("rms_norm_eps", 1e-6);
  c.rope_theta = j.number("rope_theta", 10000.0);
  c.rope_interleaved = false;  // transformers permutes Meta's q/k rows to rotate-half at conversion
  c.attention_bias = j.boolean("attention_bias", false);
  c.mlp_bias = j.boolean("mlp_bias", false);
  c.tied_embeddings = j.boolean("tie_word_embeddings", false);
  std::string act = j.string("hidden_act", "silu");
  if (act != "silu") j.unsupported("hidden_act", fmt::format("expected silu (SwiGLU), got \"{}\"", act));
  if (j.has("pretraining_tp") && j.integer("pretraining_tp") != 1) j.unsupported("pretraining_tp", "expected 1");
  if (j.has("rope_scaling")) {
    const json& rs = j.at("rope_scaling");
    if (!rs.is_object()) j.unsupported("rope_scaling", "expected an object or null");
    std::string type = rs.contains("rope_type") ? rs.value("rope_type", "") : rs.value("type", "");
    auto num = [&](const char* k) {
      if (!rs.contains(k) || !rs.at(k).is_number())
        j.unsupported("rope_scaling", fmt::format("\"{}\" needs a numeric '{}'", type, k));
      return rs.at(k).get<double>();
    };
    if (type == "default") {
      c.rope_scaling = "none";
    } else if (type == "linear") {
      c.rope_scaling = "linear";
      c.rope_factor = num("factor");
    } else if (type == "llama3") {
      c.rope_scaling = "llama3";
      c.rope_factor = num("factor");
      c.rope_low_freq_factor = num("low_freq_factor");
      c.rope_high_freq_factor = num("high_freq_factor");
      c.rope_original_context = static_cast<int>(num("original_max_position_embeddings"));
    } else {
      j.unsupported("rope_scaling", fmt::format("type \"{}\" is not supported (default, linear or llama3)", type));
    }
  }
  if (c.head_size() % 2 != 0) j.unsupported("hidden_size", "head size must be even for RoPE");
  return c;
}

// A name as lmforge registers it -> the names a checkpoint may use for it.
std::vector<std::string> file_names_for(const std::string& name) {
  std::vector<std::string> v{name};
  // GPT2Model (no LM head) checkpoints, like the original openai-community/gpt2 files, omit the
  // "transformer." prefix.
  if (name.starts_with("transformer.")) v.push_back(name.substr(12));
  return v;
}

// Tensors transformers keeps beside the weights that carry nothing to load.
bool ignorable(const std::string& name, bool tied) {
  return name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") ||
         name.ends_with("rotary_emb.inv_freq") || (tied && name == "lm_head.weight");
}

struct ShardSet {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, const SafetensorsFile*> where;  // tensor name -> its file
};

void add_file(ShardSet& s, const fs::path& p) {
  s.files.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(p)));
  for (const auto& t : s.files.back()->tensors()) {
    if (s.where.count(t.name))
      throw UserError("{}: tensor '{}' also appears in {}", p.string(), t.name, s.where[t.name]->path().string());
    s.where[t.name] = s.files.back().get();
  }
}

ShardSet open_weights(const fs::path& dir) {
  ShardSet s;
  std::error_code ec;
  auto add = [&](const fs::path& p) { add_file(s, p); };
  if (fs::is_regular_file(dir / kIndex, ec)) {
    const auto file = (dir / kIndex).string();
    json idx;
    try {
      idx = json::parse(read_file(dir / kIndex));
    } catch (const json::exception& e) {
      throw UserError("{}: not valid JSON ({})", file, e.what());
    }
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      throw UserError("{}: expected an object with a 'weight_map' object", file);
    std::set<std::string> shards;
    for (const auto& [name, shard] : idx["weight_map"].items()) {
      if (!shard.is_string()) throw UserError("{}: weight_map['{}'] must be a file name", file, name);
      std::string f = shard.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f.starts_with("."))
        throw UserError("{}: weight_map['{}'] = \"{}\" is not a file name in this directory", file, name, f);
      shards.insert(f);
    }
    for (const auto& f : shards) add(dir / f);
    for (const auto& [name, shard] : idx["weight_map"].items()) {
      auto it = s.where.find(name);
      if (it == s.where.end() || it->second->path().filename() != shard.get<std::string>())
        throw UserError("{}: weight_map says '{}' is in {}, but it is not there", file, name,
                        shard.get<std::string>());
    }
  } else if (fs::is_regular_file(dir / kSingle, ec)) {
    add(dir / kSingle);
  } else {
    throw UserError("{}: no {} or {} (not a Hugging Face checkpoint directory)", dir.string(), kSingle, kIndex);
  }
  return s;
}

json config_json(const ModelConfig& c, const HfExportOptions& opt) {
  const char* dtype = opt.dtype == DType::BF16 ? "bfloat16" : opt.dtype == DType::F16 ? "float16" : "float32";
  json j;
  if (c.arch == "gpt2") {
    j = {{"architectures", {"GPT2LMHeadModel"}},
         {"model_type", "gpt2"},
         {"vocab_size", c.vocab_size},
         {"n_positions", c.block_size},
         {"n_ctx", c.block_size},
         {"n_embd", c.n_embd},
         {"n_layer", c.n_layer},
         {"n_head", c.n_head},
         {"n_inner", nullptr},
         {"activation_function", "gelu_new"},
         {"layer_norm_epsilon", 1e-5},
         {"resid_pdrop", 0.0},
         {"embd_pdrop", 0.0},
         {"attn_pdrop", 0.0},
         {"initializer_range", c.init_std},
         {"scale_attn_weights", true},
         {"scale_attn_by_inverse_layer_idx", false},
         {"reorder_and_upcast_attn", false},
         {"use_cache", true},
         {"tie_word_embeddings", c.tied_embeddings}};
  } else {
    json rope_scaling = nullptr;
    if (c.rope_scaling == "linear") rope_scaling = {{"rope_type", "linear"}, {"factor", c.rope_factor}};
    if (c.rope_scaling == "llama3")
      rope_scaling = {{"rope_type", "llama3"},
                      {"factor", c.rope_factor},
                      {"low_freq_factor", c.rope_low_freq_factor},
                      {"high_freq_factor", c.rope_high_freq_factor},
                      {"original_max_position_embeddings", c.rope_original_context}};
    j = {{"architectures", {"LlamaForCausalLM"}},
         {"model_type", "llama"},
         {"vocab_size", c.vocab_size},
         {"hidden_size", c.n_embd},
         {"intermediate_size", c.ffn_size()},
         {"num_hidden_layers", c.n_layer},
         {"num_attention_heads", c.n_head},
         {"num_key_value_heads", c.kv_heads()},
         {"head_dim", c.head_size()},
         {"hidden_act", "silu"},
         {"max_position_embeddings", c.block_size},
         {"rms_norm_eps", c.norm_eps},
         {"rope_theta", c.rope_theta},
         {"rope_scaling", rope_scaling},
         {"attention_bias", c.attention_bias},
         {"attention_dropout", 0.0},
         {"mlp_bias", c.mlp_bias},
         {"pretraining_tp", 1},
         {"initializer_range", c.init_std},
         {"use_cache", true},
         {"tie_word_embeddings", c.tied_embeddings}};
  }
  j["torch_dtype"] = dtype;
  if (opt.bos_token_id >= 0) j["bos_token_id"] = opt.bos_token_id;
  if (opt.eos_token_id >= 0) j["eos_token_id"] = opt.eos_token_id;
  j["transformers_version"] = "4.46.0";
  return j;
}

}  // namespace

bool is_hf_dir(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / kConfig, ec);
}

ModelConfig read_hf_config(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw UserError("{}: not a directory", dir.string());
  ConfigJson j(dir / kConfig);
  std::string type = j.string("model_type");
  ModelConfig c;
  if (type == "gpt2") {
    c = gpt2_from(j);
  } else if (type == "llama") {
    c = llama_from(j);
  } else {
    throw UserError("{}: model_type \"{}\" is not supported (gpt2 or llama)", j.file(), type);
  }
  if (c.vocab_size < 1 || c.n_layer < 1 || c.n_embd < 1 || c.block_size < 1)
    throw UserError("{}: vocab_size, layers, width and positions must all be >= 1", j.file());
  return c;
}

void transpose_matrix(float* dst, const float* src, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
}

namespace {

void load_from(Model& model, const ShardSet& s, const std::string& where) {
  auto& ps = model.params();
  const bool tied = model.config().tied_embeddings;
  std::set<std::string> used;
  std::vector<float> tmp;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    const SafetensorsFile* f = nullptr;
    std::string found;
    for (const auto& n : file_names_for(e.name))
      if (auto it = s.where.find(n); it != s.where.end()) {
        f = it->second;
        found = n;
        break;
      }
    if (!f) throw UserError("{}: tensor '{}' is missing (the weights do not match the model config)", where, e.name);
    used.insert(found);
    if (model.hf_transposed(e.name)) {
      tmp.resize(e.size);
      f->read_as_float(found, {e.shape[1], e.shape[0]}, tmp.data());
      transpose_matrix(ps.param(i), tmp.data(), e.shape[1], e.shape[0]);
    } else {
      f->read_as_float(found, e.shape, ps.param(i));
    }
  }
  for (const auto& [name, f] : s.where)
    if (!used.count(name) && !ignorable(name, tied))
      throw UserError("{}: tensor '{}' has no place in a {}-layer {} model (the weights do not match the model config)",
                      f->path().string(), name, model.config().n_layer, model.config().arch);
}

}  // namespace

void load_hf_weights(Model& model, const fs::path& dir) { load_from(model, open_weights(dir), dir.string()); }

void load_weights_from(Model& model, const std::vector<fs::path>& files, const std::string& where) {
  ShardSet s;
  for (const auto& f : files) add_file(s, f);
  load_from(model, s, where);
}

void save_hf(const Model& model, const fs::path& dir, const HfExportOptions& opt) {
  LMF_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::BF16 || opt.dtype == DType::F16, "export dtype");
  std::error_code ec;
  if (fs::exists(dir, ec) && !(fs::is_directory(dir, ec) && fs::is_empty(dir, ec)))
    throw UserError("{}: already exists and is not empty (choose a new directory)", dir.string());
  const fs::path tmp = dir.parent_path() / ("." + dir.filename().string() + ".tmp");
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw UserError("{}: cannot create directory ({})", tmp.string(), ec.message());
  try {
    // Every tensor in the export dtype and Hugging Face's layout, in registry order.
    const auto& ps = model.params();
    const size_t el = dtype_size(opt.dtype);
    struct Out {
      std::string name;
      Shape shape;
      std::vector<uint8_t> bytes;
    };
    std::vector<Out> outs;
    std::vector<float> t;
    const auto& mc = model.config();
    const int64_t hs = mc.head_size();
    auto permute_rows = [&](const std::string& name) {
      return mc.arch == "llama" && mc.rope_interleaved &&
             (name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.k_proj.weight") ||
              name.ends_with("self_attn.q_proj.bias") || name.ends_with("self_attn.k_proj.bias"));
    };
    for (size_t i = 0; i < ps.entries().size(); ++i) {
      const auto& e = ps.entry(i);
      const float* src = ps.param(i);
      Shape shape = e.shape;
      if (model.hf_transposed(e.name)) {
        t.resize(e.size);
        transpose_matrix(t.data(), src, e.shape[0], e.shape[1]);
        src = t.data();
        shape = {e.shape[1], e.shape[0]};
      }
      if (permute_rows(e.name)) {
        // Meta's interleaved RoPE pairs (2j, 2j+1) become transformers' rotate-half pairs
        // (j, j + hs/2): within each head, rows 0, 2, 4, ... then 1, 3, 5, ...
        const int64_t rows = e.shape[0], cols = e.shape.size() > 1 ? e.shape[1] : 1;
        std::vector<float> p(e.size);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t h = r / hs, i = r % hs;
          const int64_t from = h * hs + (i < hs / 2 ? 2 * i : 2 * (i - hs / 2) + 1);
          std::memcpy(p.data() + r * cols, src + from * cols, sizeof(float) * cols);
        }
        t = std::move(p);
        src = t.data();
      }
      Out o{e.name, shape, std::vector<uint8_t>(e.size * el)};
      if (opt.dtype == DType::F32) {
        std::memcpy(o.bytes.data(), src, e.size * 4);
      } else {
        auto* h = reinterpret_cast<uint16_t*>(o.bytes.data());
        for (size_t k = 0; k < e.size; ++k)
          h[k] = opt.dtype == DType::BF16 ? float_to_bf16(src[k]) : float_to_f16(src[k]);
      }
      outs.push_back(std::move(o));
    }
    // Shards in registry order, each up to max_shard_bytes (a tensor larger than that alone).
    std::vector<std::vector<const Out*>> shards(1);
    uint64_t cur = 0, total = 0;
    for (const auto& o : outs) {
      if (cur > 0 && cur + o.bytes.size() > opt.max_shard_bytes) {
        shards.emplace_back();
        cur = 0;
      }
      shards.back().push_back(&o);
      cur += o.bytes.size();
      total += o.bytes.size();
    }
    json weight_map = json::object();
    for (size_t k = 0; k < shards.size(); ++k) {
      std::string name = shards.size() == 1 ? std::string(kSingle)
                                            : fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, shards.size());
      SafetensorsWriter w;
      for (const Out* o : shards[k]) {
        w.add(o->name, opt.dtype, o->shape, o->bytes.data());
        weight_map[o->name] = name;
      }
      w.set_metadata("format", "pt");
      w.write(tmp / name);
    }
    if (shards.size() > 1)
      write_file_atomic(tmp / kIndex,
                        json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) + "\n");
    write_file_atomic(tmp / kConfig, config_json(model.config(), opt).dump(2) + "\n");
    // save_pretrained writes the generation defaults beside the config; generate() reads them.
    json gen = {{"_from_model_config", true}, {"transformers_version", "4.46.0"}};
    if (opt.bos_token_id >= 0) gen["bos_token_id"] = opt.bos_token_id;
    if (opt.eos_token_id >= 0) gen["eos_token_id"] = opt.eos_token_id;
    write_file_atomic(tmp / "generation_config.json", gen.dump(2) + "\n");
    if (!opt.tokenizer_json.empty()) write_file_atomic(tmp / "tokenizer.json", read_file(opt.tokenizer_json));
    fs::remove(dir, ec);  // an empty directory, or nothing
    fs::rename(tmp, dir, ec);
    if (ec) throw UserError("{}: cannot rename {} into place ({})", dir.string(), tmp.string(), ec.message());
    fsync_path(dir.parent_path().empty() ? fs::path(".") : dir.parent_path(), true);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace lmf
