#pragma once
// Pre-tokenization: split text into the pieces that BPE encodes one at a time, with a PCRE2
// regex (UTF + UCP, JIT when available).
//
// The patterns are the ones js-tiktoken 1.0.21 ships (our reference), not Python tiktoken's:
// JavaScript has no possessive quantifiers, so js-tiktoken's cl100k pattern is the older
// `\s*[\r\n]+|\s+(?!\S)|\s+` form and spells the contractions out case by case (a `(?i:...)`
// group would also let PCRE fold U+017F and U+212A onto s and k). JavaScript's \s also matches
// U+FEFF and not U+0085, unlike PCRE2's, so `js_regex_to_pcre` spells \s out as JavaScript's
// set of code points.
//
// Invalid UTF-8 never fails: the regex is compiled with PCRE2_MATCH_INVALID_UTF, it matches
// only valid characters, and the bytes between two matches become a piece of their own. So the
// pieces always concatenate to the input, byte for byte.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lmf::data {

enum class SplitPattern { kGpt2, kCl100k, kO200k };

// The pattern text exactly as js-tiktoken's rank modules carry it (`pat_str`).
std::string_view split_pattern_js(SplitPattern p);

// Rewrites a JavaScript (/u) pattern for PCRE2: \s and \S (also inside a character class)
// become explicit sets of JavaScript's white-space code points. The rest is the same syntax.
std::string js_regex_to_pcre(std::string_view js);

class PreTokenizer {
 public:
  // `pattern` is PCRE2 syntax; a pattern that does not compile is a UserError naming `what`.
  PreTokenizer(std::string_view pattern, std::string_view what);
  explicit PreTokenizer(SplitPattern p);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Appends the pieces of `text` to `out` (views into `text`); they concatenate to `text`.
  // Thread-safe: match state is per thread.
  void split(std::string_view text, std::vector<std::string_view>& out) const;
  std::vector<std::string_view> split(std::string_view text) const {
    std::vector<std::string_view> out;
    split(text, out);
    return out;
  }
  const std::string& pattern() const { return pattern_; }
  bool jit() const { return jit_; }

 private:
  struct Code;
  std::unique_ptr<Code> code_;
  std::string pattern_;
  bool jit_ = false;
};

}  // namespace lmf::data
