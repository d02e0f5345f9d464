#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>

#include "core/error.h"
#include "data/mixture.h"
#include "data/shard.h"

namespace lmf::data {
namespace {

namespace fs = std::filesystem;

struct Dirs {
  fs::path root = fs::temp_directory_path() / ("lmf_mix_" + std::to_string(::getpid()));
  fs::path a = root / "a", b = root / "b";
  Dirs() {
    fs::create_directories(a);
    fs::create_directories(b);
    // Source a holds tokens 0..9, source b tokens 100..109: a row tells where it came from.
    std::vector<int32_t> ta(5000), tb(5000);
    for (size_t i = 0; i < ta.size(); ++i) {
      ta[i] = int32_t(i % 10);
      tb[i] = int32_t(100 + i % 10);
    }
    write_shard(a / "train_000000.bin", ta, 257);
    write_shard(b / "train_000000.bin", tb, 257);
  }
  ~Dirs() { fs::remove_all(root); }
};

TEST(Mixture, ParseSpec) {
  auto m = parse_mixture("x/y=0.7,z=0.3", "[data] mixture");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].first, "x/y");
  EXPECT_DOUBLE_EQ(m[1].second, 0.3);
  EXPECT_TRUE(parse_mixture("", "m").empty());
  for (const char* bad : {"x", "x=abc", "x=-1", "x=0,y=0", "=1", "x=1,", "x=1e"})
    EXPECT_THROW(parse_mixture(bad, "[data] mixture"), UserError) << bad;
}

TEST(Mixture, WeightsCooldownAndExactResume) {
  Dirs d;
  const int B = 8, T = 16;
  const long steps = 400;
  auto make = [&] {
    return MixtureLoader({{d.a, 3, 0}, {d.b, 1, 1}}, B, T, 7, true, steps, 0.25, 1);
  };
  MixtureLoader m = make();
  std::vector<int32_t> x(B * T), y(B * T);
  long from_a = 0, rows = 0;
  nlohmann::json saved;
  std::vector<int32_t> after_save;
  for (long s = 0; s < steps; ++s) {
    if (s == 123) saved = m.state();
    m.next(x.data(), y.data(), s, 0);
    if (s == 123) after_save = x;
    for (int r = 0; r < B; ++r) {
      bool a = x[r * T] < 100;
      for (int t = 0; t < T; ++t) ASSERT_EQ(x[r * T + t] < 100, a);  // rows are not mixed
      if (s < 300) {
        from_a += a;
        ++rows;
      } else {
        ASSERT_FALSE(a) << "cooldown (last 25%) draws only from b";
      }
    }
  }
  // 2400 rows, p = 0.75: standard error 0.0088; allow 5 of them.
  EXPECT_NEAR(double(from_a) / rows, 0.75, 5 * std::sqrt(0.75 * 0.25 / rows));
  MixtureLoader r = make();
  r.restore(saved);
  r.next(x.data(), y.data(), 123, 0);
  EXPECT_EQ(x, after_save);
  EXPECT_THROW(r.restore(nlohmann::json::array()), UserError);
}

}  // namespace
}  // namespace lmf::data
