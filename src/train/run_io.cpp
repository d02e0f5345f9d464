#include "train/run_io.h"

#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "model/hf.h"
#include "train/checkpoint_dir.h"

namespace lmf {

void save_model(const Model& model, const std::filesystem::path& file) {
  const auto& ps = model.params();
  SafetensorsWriter w;
  std::vector<std::vector<float>> transposed;  // keeps data alive until write()
  transposed.reserve(ps.entries().size());
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    if (model.hf_transposed(e.name)) {
      auto& t = transposed.emplace_back(e.size);
      transpose_matrix(t.data(), ps.param(i), e.shape[0], e.shape[1]);
      w.add(e.name, DType::F32, {e.shape[1], e.shape[0]}, t.data());
    } else {
      w.add(e.name, DType::F32, e.shape, ps.param(i));
    }
  }
  w.set_metadata("format", "pt");
  const auto& c = model.config();
  w.set_metadata("lmforge.arch", c.arch);
  w.set_metadata("lmforge.n_layer", std::to_string(c.n_layer));
  w.set_metadata("lmforge.n_head", std::to_string(c.n_head));
  w.set_metadata("lmforge.n_embd", std::to_string(c.n_embd));
  w.set_metadata("lmforge.vocab_size", std::to_string(c.vocab_size));
  w.set_metadata("lmforge.block_size", std::to_string(c.block_size));
  w.set_metadata("lmforge.tied_embeddings", c.tied_embeddings ? "true" : "false");
  w.write(file);
}

void load_model(Model& model, const std::filesystem::path& file) {
  load_weights_from(model, {file}, file.string());
}

void save_optimizer(const float* m, const float* v, long t, const ParamStore<float>& ps,
                    const std::filesystem::path& file) {
  SafetensorsWriter w;
  for (const auto& e : ps.entries()) {
    w.add("exp_avg." + e.name, DType::F32, e.shape, m + e.offset);
    w.add("exp_avg_sq." + e.name, DType::F32, e.shape, v + e.offset);
  }
  w.set_metadata("step", std::to_string(t));
  w.write(file);
}

long load_optimizer(float* m, float* v, const ParamStore<float>& ps, const std::filesystem::path& file) {
  auto st = SafetensorsFile::open(file);
  for (const auto& e : ps.entries()) {
    for (auto [prefix, dst] : {std::pair{"exp_avg.", m}, std::pair{"exp_avg_sq.", v}}) {
      std::string name = prefix + e.name;
      if (!st.find(name)) throw UserError("{}: missing tensor '{}'", file.string(), name);
      st.read_as_float(name, e.shape, dst + e.offset);
    }
  }
  auto it = st.metadata().find("step");
  if (it == st.metadata().end()) throw UserError("{}: metadata has no 'step'", file.string());
  try {
    return std::stol(it->second);
  } catch (const std::exception&) {
    throw UserError("{}: metadata 'step' is not an integer ('{}')", file.string(), it->second);
  }
}

namespace {
// "bpe:PATH" -> {"bpe:", PATH}; other specs -> {"", ""}.
std::pair<std::string, std::filesystem::path> split_file_spec(const std::string& spec) {
  for (const char* prefix : {"bpe:", "llama2c:"})
    if (spec.starts_with(prefix)) return {prefix, spec.substr(std::strlen(prefix))};
  return {"", ""};
}
std::filesystem::path copy_name(const std::filesystem::path& src, const std::filesystem::path& run_dir) {
  return run_dir / ("tokenizer" + src.extension().string());
}
}  // namespace

std::filesystem::path keep_tokenizer_copy(const std::string& spec, const std::filesystem::path& run_dir) {
  auto [prefix, path] = split_file_spec(spec);
  std::error_code ec;
  if (prefix.empty() || !std::filesystem::is_regular_file(path, ec)) return {};
  auto dst = copy_name(path, run_dir);
  write_file_atomic(dst, read_file(path));
  return dst;
}

std::string run_tokenizer_spec(const std::string& spec, const std::filesystem::path& run_dir) {
  auto [prefix, path] = split_file_spec(spec);
  std::error_code ec;
  if (prefix.empty() || std::filesystem::exists(path, ec)) return spec;
  auto copy = copy_name(path, run_dir);
  return std::filesystem::exists(copy, ec) ? prefix + copy.string() : spec;
}

namespace {
// The run's latest checkpoint and the config saved with it.
std::pair<CheckpointRef, RunConfig> latest_with_config(const std::filesystem::path& run_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(run_dir, ec)) throw UserError("{}: run directory not found", run_dir.string());
  auto ck = latest_checkpoint(run_dir);
  if (!ck) throw UserError("{}: no checkpoint in {}/checkpoints (train first)", run_dir.string(), run_dir.string());
  auto cfg_path = ck->dir / "config.toml";
  RunConfig cfg = config_from_toml_string(read_file(cfg_path), cfg_path.string());
  validate_config(cfg);
  if (cfg.model.vocab_size <= 0) throw UserError("{}: [model] vocab_size is not resolved", cfg_path.string());
  return {*ck, std::move(cfg)};
}
}  // namespace

RunConfig open_run_config(const std::filesystem::path& run_dir) { return latest_with_config(run_dir).second; }

OpenedRun open_run(const std::filesystem::path& run_dir, const ops::Backend<float>* be,
                   const ops::Backend<bf16>* be16) {
  auto [ck0, cfg] = latest_with_config(run_dir);
  const CheckpointRef* ck = &ck0;
  OpenedRun r;
  r.cfg = std::move(cfg);
  r.model = make_model(r.cfg.model, true, {}, be, be16);
  load_model(*r.model, ck->dir / "model.safetensors");
  r.model->params().upload_params();  // into a device backend's copy (nothing on the CPU)
  r.step = ck->step;
  r.checkpoint = ck->dir;
  return r;
}

ModelConfig pretrained_config(const std::filesystem::path& src) {
  if (is_hf_dir(src)) return read_hf_config(src);
  auto ck = latest_checkpoint(src);
  if (!ck)
    throw UserError("{}: neither a run directory with a checkpoint nor a Hugging Face checkpoint (config.json)",
                    src.string());
  auto cfg_path = ck->dir / "config.toml";
  RunConfig rc = config_from_toml_string(read_file(cfg_path), cfg_path.string());
  validate_config(rc);
  return rc.model;
}

void load_pretrained_weights(Model& model, const std::filesystem::path& src) {
  if (is_hf_dir(src)) return load_hf_weights(model, src);
  auto ck = latest_checkpoint(src);
  LMF_CHECK(ck.has_value(), "{}: no checkpoint", src.string());
  load_model(model, ck->dir / "model.safetensors");
}

}  // namespace lmf
