// lmforge: train, sample, evaluate and benchmark transformer language models.
// Exit codes: 0 success; 2 bad input (one line on stderr naming the file, field or flag);
// 1 any other failure.
#include <fmt/core.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"lmforge: train transformer language models, from one laptop core to GPU clusters.\n"
               "Run `lmforge <command> --help` for the flags of each command."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lmforge 0.1.0");
  lmf::cli::add_train(app);
  lmf::cli::add_sample(app);
  lmf::cli::add_eval(app);
  lmf::cli::add_prepare(app);
  lmf::cli::add_bench(app);
  lmf::cli::add_plot(app);
  lmf::cli::add_config(app);
  lmf::cli::add_init(app);
  lmf::cli::add_corpus(app);
  lmf::cli::add_tokenizer(app);
  lmf::cli::add_convert(app);
  lmf::cli::add_plan(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "lmforge: error: {}\n", e.what());
    return 2;
  } catch (const lmf::UserError& e) {
    fmt::print(stderr, "lmforge: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "lmforge: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
