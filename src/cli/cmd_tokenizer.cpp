#include <fmt/core.h>

#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/file_io.h"
#include "data/bpe_train.h"
#include "data/pretokenize.h"
#include "data/tokenizer.h"

namespace lmf::cli {

namespace {

std::string read_input(const std::string& path) { return path == "-" ? std::string(std::istreambuf_iterator<char>(std::cin), {}) : read_file(path); }

void write_output(const std::string& path, const std::string& text) {
  if (path.empty() || path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    write_file_atomic(path, text);
  }
}

}  // namespace

void add_tokenizer(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenizer", "Train a BPE vocabulary, or encode / decode text with any tokenizer");
  cmd->require_subcommand(1);
  const std::string tok_help =
      "tokenizer: byte | gpt2 | r50k_base | p50k_base | cl100k_base | o200k_base | bpe:PATH (tokenizer.json, "
      "GPT-2 dir, .tiktoken) | llama2c:PATH";
  struct Opts {
    std::string tokenizer, input = "-", output;
    std::vector<std::string> inputs;
    int vocab_size = 32000, threads = 0;
    std::string text_field = "text";
    bool specials = false;
  };
  auto o = std::make_shared<Opts>();

  auto* enc = cmd->add_subcommand("encode", "Print the token ids of a text file, space-separated");
  enc->add_option("--tokenizer,-t", o->tokenizer, tok_help)->required();
  enc->add_option("--input,-i", o->input, "text file; - for standard input")->capture_default_str();
  enc->add_option("--output,-o", o->output, "write the ids here instead of standard output");
  enc->callback([o]() {
    auto tok = data::make_tokenizer(o->tokenizer);
    auto ids = tok->encode(read_input(o->input));
    std::string out;
    out.reserve(ids.size() * 6);
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
    write_output(o->output, out + "\n");
  });

  auto* dec = cmd->add_subcommand("decode", "Turn space-separated token ids back into text");
  dec->add_option("--tokenizer,-t", o->tokenizer, tok_help)->required();
  dec->add_option("--input,-i", o->input, "file of ids; - for standard input")->capture_default_str();
  dec->add_option("--output,-o", o->output, "write the text here instead of standard output");
  dec->add_flag("--specials", o->specials, "show special tokens (e.g. <|endoftext|>) instead of dropping them");
  dec->callback([o]() {
    auto tok = data::make_tokenizer(o->tokenizer);
    std::istringstream in(read_input(o->input));
    std::vector<int32_t> ids;
    std::string w;
    while (in >> w) {
      size_t used = 0;
      long v = -1;
      try {
        v = std::stol(w, &used);
      } catch (const std::exception&) {
      }
      if (used != w.size() || v < 0 || v >= tok->vocab_size())
        throw UserError("{}: '{}' is not a token id of '{}' (0..{})", o->input, w, tok->name(), tok->vocab_size() - 1);
      ids.push_back(int32_t(v));
    }
    write_output(o->output, tok->decode(ids, o->specials ? data::Specials::kShow : data::Specials::kSkip));
  });

  auto* tr = cmd->add_subcommand("train", "Learn a byte-level BPE vocabulary (GPT-2 pre-tokenization) from text");
  tr->add_option("--input,-i", o->inputs, "text files, directories or .jsonl files (repeatable)")->required();
  tr->add_option("--vocab-size,-n", o->vocab_size, "vocabulary size: 256 bytes + merges + <|endoftext|>")
      ->capture_default_str()->check(CLI::Range(257, 1 << 24));
  tr->add_option("--output,-o", o->output, "tokenizer.json to write (Hugging Face format)")->required();
  tr->add_option("--text-field", o->text_field, "JSON field of .jsonl inputs")->capture_default_str();
  tr->add_option("--threads", o->threads, "counting threads; 0 = all")->capture_default_str();
  tr->callback([o]() {
    data::BpeTrainOptions opt;
    opt.text_field = o->text_field;
    opt.threads = o->threads;
    // The GPT-2 pattern, so that encoding with the saved file splits text the same way.
    auto pre = std::make_shared<data::PreTokenizer>(data::SplitPattern::kGpt2);
    opt.pretokenize = [pre](std::string_view t, std::vector<std::string_view>& out) { pre->split(t, out); };
    opt.log = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };
    std::vector<std::filesystem::path> in(o->inputs.begin(), o->inputs.end());
    auto r = data::train_bpe(in, o->vocab_size, opt);
    data::save_hf_tokenizer_json(r, o->output);
    fmt::print("trained {} tokens ({} merges) on {} bytes from {} files in {:.1f} s; wrote {}\n", r.vocab_size(),
               r.merges.size(), r.stats.bytes, r.stats.files, r.stats.count_seconds + r.stats.merge_seconds,
               o->output);
  });
}

}  // namespace lmf::cli
