#include <fmt/core.h>

#include "cli/commands.h"
#include "data/prepare.h"
#include "train/progress.h"

namespace lmf::cli {

namespace {

// "\n", "\t" and "\\" as a shell passes them (two characters) to the characters they name.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[i + 1];
      if (c == 'n' || c == 't' || c == '\\') {
        out.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : '\\');
        ++i;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace

void add_prepare(CLI::App& app) {
  auto* cmd = app.add_subcommand("prepare",
                                 "Tokenize text (files, directories, or JSON lines) into train/val token shards");
  struct Opts {
    std::vector<std::string> inputs;
    data::PrepareOptions p;
    std::string out;
    std::string metadata_template = "{}\\n\\n";  // as typed: escapes not yet applied
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--input,-i", o->inputs,
                  "text file, directory (recursed: .txt .md .text .jsonl, also .gz/.zst), or .jsonl file; repeatable")
      ->required();
  cmd->add_option("--output,-o", o->out, "output directory for shards and manifest.json")->required();
  cmd->add_option("--tokenizer", o->p.tokenizer, "tokenizer: byte")->capture_default_str();
  cmd->add_option("--text-field", o->p.text_field, "JSON field holding the text in .jsonl inputs")
      ->capture_default_str();
  cmd->add_option("--val-fraction", o->p.val_fraction, "fraction of documents held out for validation")
      ->capture_default_str()->check(CLI::Range(0.0, 0.5));
  cmd->add_option("--shard-tokens", o->p.shard_tokens, "maximum tokens per shard")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--license", o->p.license, "licence of the inputs, recorded in manifest.json");
  cmd->add_option("--seed", o->p.seed, "seed for the validation split")->capture_default_str();
  cmd->add_option("--threads", o->p.threads, "threads; 0 = all")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--metadata-field", o->p.metadata_field,
                  "MeCo: also write OUT/meco/ train shards with each document prefixed by its metadata: "
                  "this JSON field in .jsonl inputs, the path under its input directory for text files");
  cmd->add_option("--metadata-template", o->metadata_template,
                  "MeCo: prefix of each document, {} replaced by the metadata; \\n and \\t are escapes")
      ->capture_default_str();
  cmd->callback([o]() {
    for (const auto& in : o->inputs) o->p.inputs.emplace_back(in);
    o->p.out_dir = o->out;
    o->p.metadata_template = unescape(o->metadata_template);
    // On a terminal, a bar in per-mille of the input bytes; in logs, only the summary below.
    Progress bar(1000, 0);
    auto rep = data::prepare(o->p, [&bar](uint64_t done, uint64_t total) {
      if (bar.is_terminal())
        bar.update(total ? long(1000 * done / total) : 1000,
                   {{"MB", fmt::format("{:.1f}/{:.1f}", done / 1e6, total / 1e6)}});
    });
    if (bar.is_terminal()) bar.finish();
    fmt::print("prepared {} documents ({} bytes) with tokenizer '{}': {} train tokens, {} val tokens\n",
               rep.documents, rep.bytes_read, o->p.tokenizer, rep.train_tokens, rep.val_tokens);
    for (const auto& s : rep.shards) fmt::print("  wrote {}\n", s.string());
    if (!o->p.metadata_field.empty()) {
      fmt::print("metadata-conditioned (MeCo) training set: {} tokens\n", rep.meco_train_tokens);
      for (const auto& s : rep.meco_shards) fmt::print("  wrote {}\n", s.string());
    }
  });
}

}  // namespace lmf::cli
