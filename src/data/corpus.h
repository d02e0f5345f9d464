#pragma once
// Synthetic corpora, deterministic from a seed, written as JSON lines that `prepare` reads.
//
// fictional: webtext-like pages (news report, blog post, encyclopedia entry) about invented
//   people, places and events. Each document states a handful of facts about one event and
//   carries question-answer pairs whose answers appear verbatim in its text: material for
//   memorisation studies (is a fact recalled after training? after goldfish loss?), with no
//   chance that the facts were already in anyone's pretraining data.
// arithmetic: problems with worked steps and answers, from one-operation sums to multi-step
//   word problems: a controllable reasoning-depth dial for recurrence studies.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lmf::data {

struct QaPair {
  std::string question, answer;
};

struct FictionalDoc {
  uint64_t id;
  std::string style;  // news | blog | encyclopedia
  std::string title;
  std::string text;
  std::vector<QaPair> qa;
};

// Document `index` of the corpus for `seed` (a pure function of both).
FictionalDoc fictional_document(uint64_t seed, uint64_t index);

struct ArithmeticProblem {
  uint64_t id;
  int steps;  // operations in the chain
  std::string question;
  std::vector<std::string> work;  // one line per operation
  int64_t answer;
  std::string text;  // question, worked steps and answer, as one training document
};

// Problem `index` for `seed`: `steps` operations (1 = a single sum), operands up to
// `max_digits` digits.
ArithmeticProblem arithmetic_problem(uint64_t seed, uint64_t index, int steps, int max_digits);

// Writes `count` documents as JSON lines: {"id", "text", ...} with the generator's fields.
void write_fictional_corpus(const std::filesystem::path& out, uint64_t seed, uint64_t count);
void write_arithmetic_corpus(const std::filesystem::path& out, uint64_t seed, uint64_t count, int min_steps,
                             int max_steps, int max_digits);

}  // namespace lmf::data
