#include <fmt/core.h>

#include <cstdio>

#include "cli/commands.h"
#include "cli/tables.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/threading.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "train/run_io.h"

namespace lmf::cli {

void add_sample(CLI::App& app) {
  auto* cmd = app.add_subcommand("sample", "Generate text from a trained run (KV-cache decoding)");
  struct Opts {
    std::string run, prompt, prompt_file, device = "cpu", precision = "fp32", storage = "fp32";
    SampleOptions s;
    int threads = 1, samples = 1;
    bool stats = false;
  };
  auto o = std::make_shared<Opts>();
  o->s.temperature = 0.8;
  o->s.top_k = 0;
  o->s.top_p = 0.95;
  o->s.seed = 1;
  o->s.max_new_tokens = 200;
  cmd->add_option("--run,-r", o->run, "run directory (its latest checkpoint is used)")->required();
  auto* prompt = cmd->add_option("--prompt,-p", o->prompt, "text to continue");
  auto* prompt_file =
      cmd->add_option("--prompt-file", o->prompt_file, "file whose text to continue (instead of --prompt)");
  prompt->excludes(prompt_file);
  prompt_file->excludes(prompt);
  cmd->add_option("--temperature", o->s.temperature, "softmax temperature; 0 = greedy")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", o->s.top_k, "sample among the k most likely tokens; 0 = all")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->s.top_p, "nucleus sampling threshold in (0, 1]")->capture_default_str()
      ->check(CLI::Range(1e-9, 1.0));
  cmd->add_option("--min-p", o->s.min_p,
                  "then keep only tokens at least this times as likely as the most likely one; 0 = off")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repetition-penalty", o->s.repetition_penalty,
                  "divide the positive logits (multiply the negative) of ids already in the text; 1 = off")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->s.seed, "sampling seed")->capture_default_str();
  cmd->add_option("--max-new-tokens,-n", o->s.max_new_tokens, "tokens to generate")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "CPU threads")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--device", o->device, "cpu | cuda (the KV cache and every op on the GPU)")->capture_default_str();
  cmd->add_option("--matmul-precision", o->precision, "GEMM and attention products: fp32 | tf32 | bf16")
      ->capture_default_str();
  cmd->add_option("--precision", o->storage,
                  "storage of the KV cache, activations and weights: fp32 | bf16 (bf16: every product bf16)")
      ->capture_default_str();
  cmd->add_option("--num-samples", o->samples,
                  "continuations of the prompt, generated together (a decoder batch) and printed in turn")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--stats", o->stats,
                "print the prompt's prefill and the generation's speed (tokens/s) to stderr at the end");
  cmd->callback([o, prompt, prompt_file]() {
    if (prompt->count() == 0 && prompt_file->count() == 0)
      throw UserError("sample: give --prompt TEXT or --prompt-file FILE");
    if (prompt_file->count() > 0) {
      o->prompt = read_file(o->prompt_file);
      if (o->prompt.empty()) throw UserError("{}: the prompt file is empty", o->prompt_file);
    }
    set_num_threads(o->threads);
    if (o->device != "cpu" && o->device != "cuda") throw UserError("--device: expected cpu or cuda (got \"{}\")", o->device);
    const auto precision = ops::parse_matmul_precision(o->precision);
    if (!precision) throw UserError("--matmul-precision: expected fp32, tf32 or bf16 (got \"{}\")", o->precision);
    const ops::Backend<bf16>* be16 = bf16_table(o->device, *precision, o->storage);
    auto run = open_run(o->run, &float_table(o->device, *precision), be16);
    auto tok = data::make_tokenizer(run_tokenizer_spec(run.cfg.data.tokenizer, o->run));
    if (tok->vocab_size() > run.cfg.model.vocab_size)
      throw UserError("{}: tokenizer '{}' has {} tokens, the model only {}", o->run, tok->name(), tok->vocab_size(),
                      run.cfg.model.vocab_size);
    auto ids = tok->encode(o->prompt);
    if (tok->bos_id() >= 0) ids.insert(ids.begin(), tok->bos_id());
    if (ids.empty()) ids.push_back(tok->eot_id());
    o->s.stop_token = tok->eot_id();
    o->s.max_context = run.cfg.train.seq_len;
    // A model whose vocabulary is padded past the tokenizer's never emits the padding's ids.
    o->s.vocab_limit = tok->vocab_size();
    GenerateStats st;
    if (o->samples == 1) {  // printed as it comes
      std::fputs(o->prompt.c_str(), stdout);
      generate(
          *run.model, ids, o->s,
          [&](int32_t id) {
            int32_t one[1] = {id};
            std::string piece = tok->decode(one);
            std::fputs(piece.c_str(), stdout);
            std::fflush(stdout);
          },
          &st);
      std::fputs("\n", stdout);
    } else {  // generated together, printed one after another
      const auto texts = generate_samples(*run.model, ids, o->s, o->samples, {}, &st);
      for (size_t i = 0; i < texts.size(); ++i)
        fmt::print("--- sample {} of {} ---\n{}{}\n", i + 1, texts.size(), o->prompt, tok->decode(texts[i]));
    }
    if (o->stats) {
      auto rate = [](int n, double s) { return s > 0 ? n / s : 0.0; };
      fmt::print(stderr, "prompt: {} tokens in {:.3f} s ({:.1f} tokens/s); ", st.prompt_tokens, st.prefill_s,
                 rate(st.prompt_tokens, st.prefill_s));
      fmt::print(stderr, "generated: {} tokens in {:.3f} s ({:.1f} tokens/s)\n", st.new_tokens, st.decode_s,
                 rate(st.new_tokens, st.decode_s));
    }
  });
}

}  // namespace lmf::cli
