#include <fmt/core.h>

#include "cli/commands.h"
#include "data/prepare.h"
#include "train/progress.h"

namespace lmf::cli {

void add_prepare(CLI::App& app) {
  auto* cmd = app.add_subcommand("prepare",
                                 "Tokenize text (files, directories, or JSON lines) into train/val token shards");
  struct Opts {
    std::vector<std::string> inputs;
    data::PrepareOptions p;
    std::string out;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--input,-i", o->inputs,
                  "text file, directory (recursed: .txt .md .text .jsonl), or .jsonl file; repeatable")
      ->required();
  cmd->add_option("--output,-o", o->out, "output directory for shards and manifest.json")->required();
  cmd->add_option("--tokenizer", o->p.tokenizer, "tokenizer: byte")->capture_default_str();
  cmd->add_option("--text-field", o->p.text_field, "JSON field holding the text in .jsonl inputs")
      ->capture_default_str();
  cmd->add_option("--val-fraction", o->p.val_fraction, "fraction of documents held out for validation")
      ->capture_default_str()->check(CLI::Range(0.0, 0.5));
  cmd->add_option("--shard-tokens", o->p.shard_tokens, "maximum tokens per shard")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->p.seed, "seed for the validation split")->capture_default_str();
  cmd->add_option("--threads", o->p.threads, "threads; 0 = all")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o]() {
    for (const auto& in : o->inputs) o->p.inputs.emplace_back(in);
    o->p.out_dir = o->out;
    auto rep = data::prepare(o->p);
    fmt::print("prepared {} documents ({} bytes) with tokenizer '{}': {} train tokens, {} val tokens\n",
               rep.documents, rep.bytes_read, o->p.tokenizer, rep.train_tokens, rep.val_tokens);
    for (const auto& s : rep.shards) fmt::print("  wrote {}\n", s.string());
  });
}

}  // namespace lmf::cli
