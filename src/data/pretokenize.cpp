#include "data/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

namespace lmf::data {

namespace {

// js-tiktoken 1.0.21, dist/ranks/{gpt2,r50k_base,p50k_base}.js, cl100k_base.js, o200k_base.js.
constexpr std::string_view kGpt2Js =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kCl100kJs =
    R"(('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)|)"
    R"([^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kO200kJs =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
    R"(('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)?|)"
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)"
    R"(('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)?|)"
    R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Per-thread match state: match data (only group 0 is read) and a JIT stack that may grow to
// 8 MiB, so that long runs of one character class never hit the 32 KiB default.
struct MatchState {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* mc = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  MatchState() {
    LMF_CHECK(md && mc, "pcre2: out of memory");
    if (js) pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~MatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    if (js) pcre2_jit_stack_free(js);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

}  // namespace

struct PreTokenizer::Code {
  pcre2_code* re = nullptr;
  ~Code() { pcre2_code_free(re); }
};

std::string_view split_pattern_js(SplitPattern p) {
  switch (p) {
    case SplitPattern::kGpt2:
      return kGpt2Js;
    case SplitPattern::kCl100k:
      return kCl100kJs;
    case SplitPattern::kO200k:
      return kO200kJs;
  }
  LMF_CHECK(false, "unknown SplitPattern {}", static_cast<int>(p));
  return {};
}

std::string js_regex_to_pcre(std::string_view js) {
  // ECMAScript's WhiteSpace and LineTerminator code points (\s in a /u regex): PCRE2's \s
  // differs (it has U+0085 and lacks U+FEFF), so the set is spelled out.
  constexpr std::string_view kJsSpace =
      R"(\t\n\x{0B}\f\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F})"
      R"(\x{3000}\x{FEFF})";
  std::string out;
  out.reserve(js.size() + 256);
  bool in_class = false;
  for (size_t i = 0; i < js.size(); ++i) {
    const char c = js[i];
    if (c == '\\' && i + 1 < js.size()) {
      const char n = js[++i];
      if (n == 's') {
        if (!in_class) out += '[';
        out += kJsSpace;
        if (!in_class) out += ']';
      } else if (n == 'S') {
        LMF_CHECK(!in_class, "js_regex_to_pcre: \\S inside a character class is not supported");
        out += "[^";
        out += kJsSpace;
        out += ']';
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (c == '[' && !in_class)
      in_class = true;
    else if (c == ']' && in_class)
      in_class = false;
    out += c;
  }
  return out;
}

PreTokenizer::PreTokenizer(std::string_view pattern, std::string_view what)
    : code_(std::make_unique<Code>()), pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  code_->re =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
  if (!code_->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw UserError("{}: the split regex does not compile at offset {}: {}", what, err_off,
                    reinterpret_cast<const char*>(msg));
  }
  // JIT is an optimisation only: the interpreter gives the same matches.
  jit_ = pcre2_jit_compile(code_->re, PCRE2_JIT_COMPLETE) == 0;
}

PreTokenizer::PreTokenizer(SplitPattern p)
    : PreTokenizer(js_regex_to_pcre(split_pattern_js(p)), "built-in split pattern") {}

PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  MatchState& st = match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0;
  while (pos < n) {
    // NOTEMPTY: a user pattern that can match "" must not stall the loop.
    const int rc = pcre2_match(code_->re, subject, n, pos, PCRE2_NOTEMPTY, st.md, st.mc);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      LMF_CHECK(false, "pcre2_match failed at byte {}: {}", pos,
                reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    // Bytes the regex skipped (invalid UTF-8, or characters a user pattern does not cover).
    if (ov[0] > pos) out.push_back(text.substr(pos, ov[0] - pos));
    out.push_back(text.substr(ov[0], ov[1] - ov[0]));
    pos = ov[1];
  }
  if (pos < n) out.push_back(text.substr(pos));
}

}  // namespace lmf::data
