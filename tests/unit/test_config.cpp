#include <gtest/gtest.h>

#include "core/error.h"
#include "optim/schedule.h"
#include "train/config.h"

namespace lmf {

static std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsValidateAndRoundTrip) {
  RunConfig c = default_config();
  std::string text = config_to_toml(c);
  RunConfig d = config_from_toml_string(text, "resolved.toml");
  EXPECT_EQ(config_to_toml(d), text);
  // Every field carries a description line.
  size_t fields = 0, comments = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("#", 0) != 0 && line.find(" = ") != std::string::npos) ++fields;
    if (line.rfind("# ", 0) == 0) ++comments;
  }
  EXPECT_EQ(comments, fields + 1);  // the header, then one description line per field
  EXPECT_GT(fields, 30u);
}

TEST(Config, ValuesAndOverrides) {
  RunConfig c = config_from_toml_string("[model]\nn_layer = 7\n[optim]\nlr = 3e-4\n[log]\nrun_dir = \"runs/x\"\n", "a.toml");
  EXPECT_EQ(c.model.n_layer, 7);
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.log.run_dir, "runs/x");
  apply_override(c, "train.steps=42");
  apply_override(c, "log.run_dir=runs/y");  // bare word: a string
  apply_override(c, "data.shuffle=false");
  apply_override(c, "optim.lr=1");  // an integer where a float is expected is fine
  EXPECT_EQ(c.train.steps, 42);
  EXPECT_EQ(c.log.run_dir, "runs/y");
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_DOUBLE_EQ(c.optim.lr, 1.0);
}

TEST(Config, ErrorsNameFileSectionAndKey) {
  auto e1 = error_of([] { config_from_toml_string("[model]\nn_layers = 3\n", "cfg.toml"); });
  EXPECT_NE(e1.find("cfg.toml"), std::string::npos) << e1;
  EXPECT_NE(e1.find("n_layers"), std::string::npos) << e1;
  EXPECT_NE(e1.find("[model]"), std::string::npos) << e1;
  auto e2 = error_of([] { config_from_toml_string("[train]\nsteps = \"many\"\n", "cfg.toml"); });
  EXPECT_NE(e2.find("[train] steps"), std::string::npos) << e2;
  EXPECT_NE(e2.find("integer"), std::string::npos) << e2;
  auto e3 = error_of([] { config_from_toml_string("[model\nn_layer = 3\n", "bad.toml"); });
  EXPECT_NE(e3.find("bad.toml:1"), std::string::npos) << e3;
  auto e4 = error_of([] { config_from_toml_string("[modle]\n", "cfg.toml"); });
  EXPECT_NE(e4.find("unknown section [modle]"), std::string::npos) << e4;
  auto e5 = error_of([] { RunConfig c; apply_override(c, "train.steps=abc"); });
  EXPECT_NE(e5.find("--set train.steps"), std::string::npos) << e5;
  auto e6 = error_of([] { RunConfig c; apply_override(c, "train.nope=1"); });
  EXPECT_NE(e6.find("unknown key 'nope'"), std::string::npos) << e6;
  auto e7 = error_of([] { default_config({"model.n_embd=250", "model.n_head=4"}); });
  EXPECT_NE(e7.find("n_embd"), std::string::npos) << e7;
  auto e8 = error_of([] { load_config("/nonexistent/x.toml"); });
  EXPECT_NE(e8.find("/nonexistent/x.toml"), std::string::npos) << e8;
  auto e9 = error_of([] { RunConfig c; apply_override(c, "model.n_layer=99999999999"); });
  EXPECT_NE(e9.find("out of range"), std::string::npos) << e9;
  EXPECT_TRUE(default_config({"train.cuda_graphs=true", "train.device=\"cuda\""}).train.cuda_graphs);
  auto e11 = error_of([] { default_config({"train.cuda_graphs=true"}); });  // device cpu
  EXPECT_NE(e11.find("[train] cuda_graphs needs [train] device = \"cuda\""), std::string::npos) << e11;
  auto e12 = error_of([] { default_config({"train.cuda_graphs=1"}); });
  EXPECT_NE(e12.find("train.cuda_graphs"), std::string::npos) << e12;
  auto e10 = error_of([] { default_config({"train.matmul_precision=\"fp16\""}); });
  EXPECT_NE(e10.find("[train] matmul_precision"), std::string::npos) << e10;
  EXPECT_NE(e10.find("fp32, tf32 or bf16"), std::string::npos) << e10;
  EXPECT_EQ(default_config({"train.matmul_precision=\"bf16\""}).train.matmul_precision, "bf16");
  EXPECT_EQ(default_config({"train.precision=\"bf16\""}).train.precision, "bf16");
  for (const auto& [override_, field] : std::vector<std::pair<std::string, std::string>>{
           {"train.precision=\"fp16\"", "[train] precision"},
           {"train.matmul_precision=\"tf32\"", "[train] matmul_precision"},
           {"train.cuda_graphs=true", "[train] cuda_graphs"}}) {
    std::vector<std::string> o{override_};
    if (override_.find("train.precision") == std::string::npos) o.push_back("train.precision=\"bf16\"");
    const std::string e = error_of([&] { default_config(o); });
    EXPECT_NE(e.find(field), std::string::npos) << override_ << ": " << e;
  }
}

TEST(Schedule, CosineWarmupAndEnds) {
  OptimConfig c;
  c.lr = 1.0;
  c.min_lr_ratio = 0.1;
  c.warmup_steps = 10;
  c.schedule = "cosine";
  EXPECT_DOUBLE_EQ(lr_at(c, 0, 100), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(c, 9, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 10, 100), 1.0);
  EXPECT_NEAR(lr_at(c, 99, 100), 0.1, 1e-12);
  // Midpoint of the cosine span [10, 99]: halfway between lr and min_lr.
  EXPECT_NEAR(lr_at(c, 10 + 89 / 2.0, 100), 0.55, 0.02);
  for (long s = 11; s < 100; ++s) EXPECT_LE(lr_at(c, s, 100), lr_at(c, s - 1, 100));
}

TEST(Schedule, WsdIsFlatThenDecaysLinearly) {
  OptimConfig c;
  c.lr = 2.0;
  c.min_lr_ratio = 0.0;
  c.warmup_steps = 0;
  c.schedule = "wsd";
  c.decay_fraction = 0.2;
  for (long s = 0; s < 80; ++s) EXPECT_DOUBLE_EQ(lr_at(c, s, 100), 2.0) << s;
  EXPECT_DOUBLE_EQ(lr_at(c, 99, 100), 0.0);
  EXPECT_NEAR(lr_at(c, 80, 100) - lr_at(c, 81, 100), 2.0 / 19, 1e-12);
  c.schedule = "constant";
  EXPECT_DOUBLE_EQ(lr_at(c, 99, 100), 2.0);
}

}  // namespace lmf
