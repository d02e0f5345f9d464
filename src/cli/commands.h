#pragma once
// One function per subcommand: registers its flags on the app and the callback that runs it.
#include <CLI/CLI.hpp>

namespace lmf::cli {
void add_train(CLI::App& app);
void add_sample(CLI::App& app);
void add_eval(CLI::App& app);
void add_prepare(CLI::App& app);
void add_bench(CLI::App& app);
void add_plot(CLI::App& app);
void add_config(CLI::App& app);
void add_init(CLI::App& app);
void add_corpus(CLI::App& app);
void add_tokenizer(CLI::App& app);
void add_convert(CLI::App& app);
void add_plan(CLI::App& app);
}  // namespace lmf::cli
