#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unistd.h>

#include "core/error.h"
#include "core/file_io.h"
#include "data/corpus.h"

namespace lmf::data {
namespace {

TEST(FictionalCorpus, DeterministicAndAnswersAreInTheText) {
  std::set<std::string> styles, titles;
  for (uint64_t i = 0; i < 300; ++i) {
    auto a = fictional_document(7, i);
    auto b = fictional_document(7, i);
    ASSERT_EQ(a.text, b.text);
    ASSERT_GE(a.qa.size(), 4u);
    for (const auto& q : a.qa) {
      EXPECT_NE(a.text.find(q.answer), std::string::npos) << "doc " << i << ": " << q.question << " -> " << q.answer;
      EXPECT_EQ(q.question.back(), '?');
    }
    EXPECT_EQ(a.text.find(" a engineer"), std::string::npos);
    styles.insert(a.style);
    titles.insert(a.title);
  }
  EXPECT_EQ(styles.size(), 3u);
  EXPECT_GT(titles.size(), 290u);  // invented names rarely collide
  EXPECT_NE(fictional_document(7, 3).text, fictional_document(8, 3).text);
}

// Evaluates "a op b = c" and checks it.
void check_work_line(const std::string& line, int64_t& result) {
  std::istringstream in(line);
  int64_t a, b, c;
  char op, eq;
  ASSERT_TRUE(in >> a >> op >> b >> eq >> c) << line;
  ASSERT_EQ(eq, '=');
  int64_t want = op == '+' ? a + b : op == '-' ? a - b : a * b;
  ASSERT_EQ(c, want) << line;
  result = c;
}

TEST(ArithmeticCorpus, WorkedStepsAreCorrectAndChained) {
  for (int steps = 1; steps <= 6; ++steps) {
    for (uint64_t i = 0; i < 200; ++i) {
      auto p = arithmetic_problem(3, i, steps, 3);
      ASSERT_EQ(int(p.work.size()), steps);
      int64_t prev = -1, r = 0;
      for (const auto& w : p.work) {
        check_work_line(w, r);
        if (prev >= 0) {
          EXPECT_EQ(std::stoll(w), prev) << "steps must chain: " << p.text;
        }
        EXPECT_GE(r, 0);
        prev = r;
      }
      EXPECT_EQ(p.answer, r);
      EXPECT_NE(p.text.find("Answer: " + std::to_string(p.answer) + "\n"), std::string::npos);
      EXPECT_EQ(p.text, arithmetic_problem(3, i, steps, 3).text);
    }
  }
}

TEST(Corpus, JsonLinesFilesAndBadArguments) {
  auto dir = std::filesystem::temp_directory_path() / ("lmf_corpus_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  write_fictional_corpus(dir / "f.jsonl", 1, 20);
  write_arithmetic_corpus(dir / "a.jsonl", 1, 30, 2, 4, 2);
  std::istringstream f(read_file(dir / "f.jsonl")), a(read_file(dir / "a.jsonl"));
  int n = 0;
  for (std::string line; std::getline(f, line); ++n) {
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["text"], fictional_document(1, n).text);
    EXPECT_FALSE(j["qa"].empty());
  }
  EXPECT_EQ(n, 20);
  n = 0;
  for (std::string line; std::getline(a, line); ++n) {
    auto j = nlohmann::json::parse(line);
    int steps = j["steps"];
    EXPECT_GE(steps, 2);
    EXPECT_LE(steps, 4);
  }
  EXPECT_EQ(n, 30);
  EXPECT_THROW(write_arithmetic_corpus(dir / "b.jsonl", 1, 3, 3, 2, 2), UserError);
  EXPECT_THROW(write_arithmetic_corpus(dir / "b.jsonl", 1, 3, 1, 2, 12), UserError);
  EXPECT_FALSE(std::filesystem::exists(dir / "b.jsonl"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace lmf::data
