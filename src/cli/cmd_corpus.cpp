#include <fmt/core.h>

#include "cli/commands.h"
#include "data/corpus.h"

namespace lmf::cli {

void add_corpus(CLI::App& app) {
  auto* cmd = app.add_subcommand("corpus", "Generate a synthetic corpus as JSON lines (then `lmforge prepare` it)");
  cmd->require_subcommand(1);
  struct Opts {
    std::string out;
    uint64_t seed = 0, count = 1000;
    int min_steps = 1, max_steps = 4, max_digits = 3;
  };
  auto o = std::make_shared<Opts>();
  auto* fic = cmd->add_subcommand(
      "fictional", "News, blog and encyclopedia pages about invented people, places and events, with QA pairs");
  auto* ari = cmd->add_subcommand("arithmetic", "Arithmetic and multi-step word problems with worked steps");
  for (auto* c : {fic, ari}) {
    c->add_option("--output,-o", o->out, "JSON lines file to write")->required();
    c->add_option("--seed", o->seed, "seed; document i depends only on (seed, i)")->capture_default_str();
    c->add_option("--count,-n", o->count, "documents to generate")->capture_default_str()->check(CLI::PositiveNumber);
  }
  ari->add_option("--min-steps", o->min_steps, "fewest operations per problem")->capture_default_str();
  ari->add_option("--max-steps", o->max_steps, "most operations per problem")->capture_default_str();
  ari->add_option("--max-digits", o->max_digits, "digits per operand, 1..9")->capture_default_str();
  fic->callback([o]() {
    data::write_fictional_corpus(o->out, o->seed, o->count);
    fmt::print("wrote {} fictional documents to {} (text field: \"text\", QA pairs: \"qa\")\n", o->count, o->out);
  });
  ari->callback([o]() {
    data::write_arithmetic_corpus(o->out, o->seed, o->count, o->min_steps, o->max_steps, o->max_digits);
    fmt::print("wrote {} arithmetic problems to {} (text field: \"text\")\n", o->count, o->out);
  });
}

}  // namespace lmf::cli
