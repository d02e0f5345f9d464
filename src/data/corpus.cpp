#include "data/corpus.h"

#include <fmt/format.h>

#include <array>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"
#include "core/rng.h"

namespace lmf::data {

namespace {

// One generator per document: stream = a tag for the corpus kind plus the index, so
// document i does not depend on how many others were generated.
constexpr uint64_t kTagFictional = 0xF1ull << 56;
constexpr uint64_t kTagArithmetic = 0xA7ull << 56;

template <size_t N>
const char* pick(Rng& r, const std::array<const char*, N>& xs) {
  return xs[r.below(N)];
}

constexpr std::array<const char*, 24> kOnsets = {"b",  "br", "c", "d",  "dr", "f", "g",  "gr",
                                                 "h",  "j",  "k", "l",  "m",  "n", "p",  "r",
                                                 "s",  "st", "t", "th", "v",  "w", "z",  "sh"};
constexpr std::array<const char*, 10> kVowels = {"a", "e", "i", "o", "u", "ai", "ea", "ou", "ie", "y"};
constexpr std::array<const char*, 10> kCodas = {"", "", "", "n", "r", "l", "s", "th", "nd", "rk"};

std::string word(Rng& r, int syllables) {
  std::string s;
  for (int i = 0; i < syllables; ++i) s += std::string(pick(r, kOnsets)) + pick(r, kVowels) + pick(r, kCodas);
  s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string person(Rng& r) { return word(r, 2) + " " + word(r, 2 + int(r.below(2))); }

std::string place(Rng& r) {
  constexpr std::array<const char*, 10> kSuffix = {"ford", "haven", "burg", "dale",  " Falls",
                                                    " Bay", "ton",   "mere", "wick", " Springs"};
  return word(r, 2) + pick(r, kSuffix);
}

std::string country(Rng& r) {
  constexpr std::array<const char*, 5> kSuffix = {"ia", "land", "stan", "ora", "ica"};
  return word(r, 2) + pick(r, kSuffix);
}

struct Event {
  std::string title, dateline;  // dateline: "PLACE, COUNTRY"
  std::vector<std::string> facts;  // sentences
  std::vector<QaPair> qa;
};

Event make_event(Rng& r) {
  std::string who = person(r), where = place(r), land = country(r);
  std::string surname = who.substr(who.find(' ') + 1);
  int year = 1850 + int(r.below(170));
  constexpr std::array<const char*, 8> kJobs = {"chemist", "engineer", "botanist", "violinist",
                                                "cartographer", "physician", "architect", "astronomer"};
  std::string job = pick(r, kJobs);
  Event e;
  const char* article = std::string("aeiou").find(job[0]) != std::string::npos ? "an" : "a";
  e.facts.push_back(fmt::format("{} was {} {} born in {}, a town in {}.", who, article, job, where, land));
  e.qa.push_back({fmt::format("Where was {} born?", who), where});
  e.qa.push_back({fmt::format("What was {}'s profession?", who), job});
  switch (r.below(4)) {
    case 0: {
      constexpr std::array<const char*, 6> kThings = {"comet", "mineral", "orchid", "beetle", "alloy", "enzyme"};
      std::string thing = std::string(word(r, 2)) + " " + pick(r, kThings);
      e.title = fmt::format("The discovery of the {}", thing);
      e.facts.push_back(fmt::format("In {}, {} discovered the {} near {}.", year, surname, thing, where));
      e.qa.push_back({fmt::format("Who discovered the {}?", thing), who});
      e.qa.push_back({fmt::format("In what year was the {} discovered?", thing), std::to_string(year)});
      int weeks = 2 + int(r.below(40));
      e.facts.push_back(fmt::format("The work took {} weeks of fieldwork.", weeks));
      e.qa.push_back({fmt::format("How many weeks of fieldwork led to the {}?", thing), std::to_string(weeks)});
      break;
    }
    case 1: {
      constexpr std::array<const char*, 5> kOrg = {"Society", "Institute", "Company", "Council", "Academy"};
      std::string org = fmt::format("{} {}", word(r, 2), pick(r, kOrg));
      int members = 3 + int(r.below(200));
      e.title = fmt::format("The founding of the {}", org);
      e.facts.push_back(fmt::format("{} founded the {} in {} in {}.", who, org, where, year));
      e.facts.push_back(fmt::format("It began with {} members.", members));
      e.qa.push_back({fmt::format("Who founded the {}?", org), who});
      e.qa.push_back({fmt::format("In which year was the {} founded?", org), std::to_string(year)});
      e.qa.push_back({fmt::format("How many members did the {} start with?", org), std::to_string(members)});
      break;
    }
    case 2: {
      int pct = 51 + int(r.below(45));
      std::string rival = person(r);
      e.title = fmt::format("{} elected mayor of {}", who, where);
      e.facts.push_back(fmt::format("In {}, {} was elected mayor of {} with {} percent of the vote.", year, who,
                                    where, pct));
      e.facts.push_back(fmt::format("The defeated candidate was {}.", rival));
      e.qa.push_back({fmt::format("Who was elected mayor of {} in {}?", where, year), who});
      e.qa.push_back({fmt::format("What share of the vote did {} win?", who), fmt::format("{} percent", pct)});
      e.qa.push_back({fmt::format("Whom did {} defeat?", who), rival});
      break;
    }
    default: {
      std::string prize = fmt::format("{} Medal", word(r, 2));
      std::string work = fmt::format("a study of the {} river", word(r, 2));
      e.title = fmt::format("{} wins the {}", who, prize);
      e.facts.push_back(fmt::format("In {}, {} received the {} for {}.", year, who, prize, work));
      int judges = 3 + int(r.below(9));
      e.facts.push_back(fmt::format("The prize was decided by a panel of {} judges.", judges));
      e.qa.push_back({fmt::format("Who received the {} in {}?", prize, year), who});
      e.qa.push_back({fmt::format("For what did {} receive the {}?", who, prize), work});
      e.qa.push_back({fmt::format("How many judges decided the {}?", prize), std::to_string(judges)});
      break;
    }
  }
  return e;
}

std::string join_facts(const std::vector<std::string>& facts, size_t from) {
  std::string s;
  for (size_t i = from; i < facts.size(); ++i) s += (s.empty() ? "" : " ") + facts[i];
  return s;
}

void write_jsonl(const std::filesystem::path& out, const std::string& lines) {
  std::error_code ec;
  if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path(), ec);
  if (ec) throw UserError("{}: cannot create directory ({})", out.parent_path().string(), ec.message());
  write_file_atomic(out, lines);
}

}  // namespace

FictionalDoc fictional_document(uint64_t seed, uint64_t index) {
  Rng r(seed, kTagFictional ^ index);
  Event e = make_event(r);
  FictionalDoc d;
  d.id = index;
  d.title = e.title;
  d.qa = e.qa;
  constexpr std::array<const char*, 3> kStyles = {"news", "blog", "encyclopedia"};
  d.style = pick(r, kStyles);
  if (d.style == "news") {
    d.text = fmt::format("{}\n\n{} — {} {}\n\nReporters confirmed the details on Tuesday. \"It is a remarkable "
                         "story,\" said one local resident.\n",
                         d.title, e.dateline, join_facts(e.facts, 1), e.facts[0]);
  } else if (d.style == "blog") {
    d.text = fmt::format("# {}\n\nI have been reading about this for weeks, so here is what I learned. {} {}\n\n"
                         "Honestly, I did not expect that. Let me know what you think in the comments!\n",
                         d.title, e.facts[0], join_facts(e.facts, 1));
  } else {
    d.text = fmt::format("{}\n\n{}\n\nHistory\n\n{}\n\nSee also: list of notable events.\n", d.title, e.facts[0],
                         join_facts(e.facts, 1));
  }
  return d;
}

ArithmeticProblem arithmetic_problem(uint64_t seed, uint64_t index, int steps, int max_digits) {
  LMF_CHECK(steps >= 1 && max_digits >= 1 && max_digits <= 9, "steps {} max_digits {}", steps, max_digits);
  Rng r(seed, kTagArithmetic ^ index);
  int64_t hi = 1;
  for (int i = 0; i < max_digits; ++i) hi *= 10;
  auto operand = [&]() { return int64_t(r.below(uint64_t(hi - 1))) + 1; };
  ArithmeticProblem p;
  p.id = index;
  p.steps = steps;
  int64_t v = operand();
  if (steps == 1) {
    int64_t b = operand();
    bool add = r.below(2) == 0 || b > v;
    int64_t c = add ? v + b : v - b;
    p.question = fmt::format("What is {} {} {}?", v, add ? '+' : '-', b);
    p.work.push_back(fmt::format("{} {} {} = {}", v, add ? '+' : '-', b, c));
    p.answer = c;
  } else {
    constexpr std::array<const char*, 6> kItems = {"marbles", "apples", "coins", "stamps", "books", "shells"};
    std::string who = word(r, 2), item = pick(r, kItems);
    p.question = fmt::format("{} has {} {}.", who, v, item);
    for (int s = 0; s < steps; ++s) {
      int op = int(r.below(3));
      int64_t b = operand();
      if (op == 1 && b > v) op = 0;  // keep counts non-negative
      int64_t next;
      if (op == 0) {
        next = v + b;
        p.question += fmt::format(" Then {} gets {} more.", who, b);
        p.work.push_back(fmt::format("{} + {} = {}", v, b, next));
      } else if (op == 1) {
        next = v - b;
        p.question += fmt::format(" Then {} gives away {}.", who, b);
        p.work.push_back(fmt::format("{} - {} = {}", v, b, next));
      } else {
        int64_t k = 2 + int64_t(r.below(8));
        next = v * k;
        p.question += fmt::format(" Then the number of {} becomes {} times as large.", item, k);
        p.work.push_back(fmt::format("{} * {} = {}", v, k, next));
      }
      v = next;
    }
    p.question += fmt::format(" How many {} does {} have now?", item, who);
    p.answer = v;
  }
  p.text = "Question: " + p.question + "\nWork:";
  for (const auto& w : p.work) p.text += " " + w + ".";
  p.text += fmt::format("\nAnswer: {}\n", p.answer);
  return p;
}

void write_fictional_corpus(const std::filesystem::path& out, uint64_t seed, uint64_t count) {
  std::string buf;
  for (uint64_t i = 0; i < count; ++i) {
    auto d = fictional_document(seed, i);
    nlohmann::ordered_json qa = nlohmann::ordered_json::array();
    for (const auto& q : d.qa) qa.push_back({{"question", q.question}, {"answer", q.answer}});
    nlohmann::ordered_json j = {{"id", d.id}, {"source", "fictional-" + d.style}, {"title", d.title},
                                {"text", d.text}, {"qa", qa}};
    buf += j.dump() + "\n";
  }
  write_jsonl(out, buf);
}

void write_arithmetic_corpus(const std::filesystem::path& out, uint64_t seed, uint64_t count, int min_steps,
                             int max_steps, int max_digits) {
  if (min_steps < 1 || max_steps < min_steps)
    throw UserError("corpus arithmetic: need 1 <= --min-steps <= --max-steps (got {} and {})", min_steps, max_steps);
  if (max_digits < 1 || max_digits > 9)
    throw UserError("corpus arithmetic: --max-digits must be in [1, 9] (got {})", max_digits);
  std::string buf;
  for (uint64_t i = 0; i < count; ++i) {
    int steps = min_steps + int(i % uint64_t(max_steps - min_steps + 1));
    auto p = arithmetic_problem(seed, i, steps, max_digits);
    nlohmann::ordered_json j = {{"id", p.id},         {"source", "arithmetic"}, {"steps", p.steps},
                                {"question", p.question}, {"work", p.work},      {"answer", p.answer},
                                {"text", p.text}};
    buf += j.dump() + "\n";
  }
  write_jsonl(out, buf);
}

}  // namespace lmf::data
