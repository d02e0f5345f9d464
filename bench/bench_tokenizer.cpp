// BPE encode speed (lmf::data::BpeTokenizer, encode_ordinary) on a corpus of documents, one and
// several OpenMP threads, beside js-tiktoken (tools/tiktoken_bench.mjs) on the same documents.
//   ./bench_tokenizer CORPUS [--encodings gpt2,cl100k_base,o200k_base] [--threads 1,2]
//                            [--runs 3] [--tokref DIR] [--json OUT]
// CORPUS: documents separated by NUL bytes (scripts/bench_tokenizer.sh builds it).
// MB/s = UTF-8 input bytes / 1e6 / wall seconds of the whole pass; a pass encodes every
// document, on exactly --threads threads (encode itself is serial, so 1 is OMP_NUM_THREADS=1;
// the variable is ignored), dynamic schedule over documents. Each figure is the median of
// --runs passes; loading the ranks is not timed.
//  - cold: a fresh tokenizer for each pass, so every thread's piece cache starts empty (the
//    primary figure; js-tiktoken has no such cache);
//  - warm: the same tokenizer again after one untimed pass, every repeated piece a cache hit.
// The machine may be shared: beside wall time each pass records the process's CPU time
// ("cpu MB/s" = bytes / CPU seconds of all threads), and before the passes on T > 1 threads a
// "machine check" times a pure compute loop on 1 and T threads: the speedup the free cores
// allow at that moment, the ceiling for encode's.
// Pre-tokenize only (one thread): the regex split alone over the documents, so that "the rest"
// (whole-piece lookups, cache, merges) is a cold pass minus it.
// The ids are checked to be the same for every thread count; their count and a 32-bit FNV-1a
// hash over all of them (document order) go to the JSON, for the script to compare with
// js-tiktoken's.
#include <time.h>  // clock_gettime

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/timer.h"
#include "data/bpe.h"

namespace {

using lmf::data::BpeTokenizer;
using Ids = std::vector<std::vector<int32_t>>;  // (documents, ids of each)

struct Args {
  std::string corpus;
  std::vector<std::string> encodings = {"gpt2", "cl100k_base", "o200k_base"};
  std::vector<int> threads = {1, 2};
  int runs = 3;
  std::string tokref;  // empty: default_tokref_dir()
  std::string json_out;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw lmf::UserError("bench_tokenizer: {} needs a value", k);
      return argv[++i];
    };
    if (k == "--encodings") {
      a.encodings = split_list(value());
    } else if (k == "--threads") {
      a.threads.clear();
      for (const auto& t : split_list(value())) a.threads.push_back(std::stoi(t));
    } else if (k == "--runs") {
      a.runs = std::max(1, std::stoi(value()));
    } else if (k == "--tokref") {
      a.tokref = value();
    } else if (k == "--json") {
      a.json_out = value();
    } else if (!k.starts_with("--") && a.corpus.empty()) {
      a.corpus = k;
    } else {
      throw lmf::UserError("bench_tokenizer: unknown argument {}", k);
    }
  }
  if (a.corpus.empty())
    throw lmf::UserError(
        "usage: bench_tokenizer CORPUS [--encodings a,b] [--threads 1,2] [--runs N] "
        "[--tokref DIR] [--json OUT]");
  return a;
}

std::vector<std::string_view> split_documents(std::string_view text) {
  std::vector<std::string_view> docs;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\0', start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) docs.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return docs;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// What the machine gives us now: the speedup of a pure compute loop (no memory, no locks) on
// `threads` threads over one. Below `threads`, other processes hold cores, and encode cannot
// scale further than this either.
double compute_speedup(int threads) {
  auto pass = [](int th) {
    double acc = 0;
    lmf::Timer t;
#pragma omp parallel for schedule(dynamic, 1) num_threads(th) reduction(+ : acc)
    for (int i = 0; i < 32; ++i) {
      double x = i;
      for (int k = 0; k < 2'000'000; ++k) x = x * 1.0000001 + 1e-9;
      acc += x;
    }
    const double s = t.seconds();
    if (acc < 0) std::printf("%g\n", acc);  // keeps the loop
    return s;
  };
  return pass(1) / pass(threads);
}

struct PassTime {
  double wall_s = 0, cpu_s = 0;
};

// One pass over the documents. They differ in length by up to 40x (SOTU: 5.5 to 217 KB), so a
// dynamic schedule keeps every thread busy to the end.
PassTime encode_pass(const BpeTokenizer& tok, const std::vector<std::string_view>& docs,
                     int threads, Ids& ids) {
  ids.assign(docs.size(), {});
  const int n = static_cast<int>(docs.size());
  const double c0 = cpu_seconds();
  lmf::Timer t;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int i = 0; i < n; ++i)
    ids[static_cast<size_t>(i)] = tok.encode_ordinary(docs[static_cast<size_t>(i)]);
  const double wall = t.seconds();
  return {wall, cpu_seconds() - c0};
}

uint32_t fnv1a(const Ids& ids, size_t* count) {
  uint32_t h = 2166136261u;
  size_t c = 0;
  for (const auto& d : ids)
    for (int32_t id : d) {
      h = (h ^ static_cast<uint32_t>(id)) * 16777619u;
      ++c;
    }
  *count = c;
  return h;
}

struct Stat {
  double median_s = 0, min_s = 0, max_s = 0;
};
Stat stat_of(const std::vector<double>& s) {
  return {median(s), *std::min_element(s.begin(), s.end()), *std::max_element(s.begin(), s.end())};
}

int run(const Args& a) {
  std::ifstream f(a.corpus, std::ios::binary);
  if (!f) throw lmf::UserError("file {}: cannot open", a.corpus);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto docs = split_documents(text);
  size_t bytes = 0;
  for (auto d : docs) bytes += d.size();
  const double mb = static_cast<double>(bytes) / 1e6;
  const auto tokref =
      a.tokref.empty() ? lmf::data::default_tokref_dir() : std::filesystem::path(a.tokref);
  std::printf("corpus %s: %zu documents, %zu bytes; %d runs per figure (median [min, max])\n",
              a.corpus.c_str(), docs.size(), bytes, a.runs);

  nlohmann::json out = {{"corpus", a.corpus},
                        {"documents", docs.size()},
                        {"bytes", bytes},
                        {"runs", a.runs},
                        {"encodings", nlohmann::json::array()}};
  for (const auto& enc : a.encodings) {
    lmf::Timer lt;
    auto tok = lmf::data::make_named_bpe(enc, tokref);
    const double load_s = lt.seconds();
    std::printf("\n%s (load %.2f s, regex JIT %s)\n", enc.c_str(), load_s,
                tok->pretokenizer().jit() ? "on" : "off");

    // Pre-tokenizer alone, one thread.
    std::vector<double> split_s;
    size_t pieces = 0;
    std::vector<std::string_view> p;  // reused per document, as encode does
    for (int r = 0; r < a.runs; ++r) {
      pieces = 0;
      lmf::Timer t;
      for (auto d : docs) {
        p.clear();
        tok->pretokenizer().split(d, p);
        pieces += p.size();
      }
      split_s.push_back(t.seconds());
    }

    Ids ref_ids;
    nlohmann::json jenc = {{"encoding", enc}, {"load_s", load_s}, {"pieces", pieces}};
    jenc["results"] = nlohmann::json::array();
    const Stat split = stat_of(split_s);
    jenc["split_median_s"] = split.median_s;
    for (int th : a.threads) {
      if (th > 1) {
        const double c = compute_speedup(th);
        std::printf("  machine check: a pure compute loop runs %.2fx faster on %d threads\n", c,
                    th);
        jenc["compute_speedup_" + std::to_string(th)] = c;
      }
      for (const bool warm : {false, true}) {
        std::vector<double> s, cpu;
        Ids ids;
        if (warm) encode_pass(*tok, docs, th, ids);  // fills every thread's cache
        for (int r = 0; r < a.runs; ++r) {
          // A new instance id makes each thread's cache clear itself on first use.
          if (!warm) tok = lmf::data::make_named_bpe(enc, tokref);
          const PassTime pt = encode_pass(*tok, docs, th, ids);
          s.push_back(pt.wall_s);
          cpu.push_back(pt.cpu_s);
        }
        if (ref_ids.empty()) ref_ids = ids;
        LMF_CHECK(ids == ref_ids, "{}: the ids with {} threads differ from the first pass's", enc,
                  th);
        const Stat st = stat_of(s);
        const double cpu_s = median(cpu);
        std::printf(
            "  %-4s %d thread%s: %7.2f MB/s  (%.3f s [%.3f, %.3f]; cpu %.3f s, %.2f MB/s)\n",
            warm ? "warm" : "cold", th, th == 1 ? " " : "s", mb / st.median_s, st.median_s,
            st.min_s, st.max_s, cpu_s, mb / cpu_s);
        jenc["results"].push_back(nlohmann::json{{"cache", warm ? "warm" : "cold"},
                                                 {"threads", th},
                                                 {"median_s", st.median_s},
                                                 {"min_s", st.min_s},
                                                 {"max_s", st.max_s},
                                                 {"mb_per_s", mb / st.median_s},
                                                 {"cpu_median_s", cpu_s},
                                                 {"cpu_mb_per_s", mb / cpu_s}});
      }
    }
    size_t count = 0;
    const uint32_t hash = fnv1a(ref_ids, &count);
    std::printf("  pre-tokenize only, 1 thread: %.3f s [%.3f, %.3f] (%zu pieces)\n", split.median_s,
                split.min_s, split.max_s, pieces);
    std::printf("  tokens %zu, fnv1a %08x\n", count, hash);
    jenc["tokens"] = count;
    jenc["fnv1a"] = hash;
    out["encodings"].push_back(jenc);
  }
  if (!a.json_out.empty()) {
    std::ofstream j(a.json_out);
    j << out.dump(1) << "\n";
    if (!j) throw lmf::UserError("file {}: cannot write", a.json_out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
}
