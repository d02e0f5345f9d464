// File formats and run I/O: safetensors, half conversions, checkpoint directories, metrics JSON
// lines, the progress bar and the loss plot.
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "core/half.h"
#include "core/safetensors.h"
#include "train/checkpoint_dir.h"
#include "train/metrics.h"
#include "train/plot.h"
#include "train/progress.h"

namespace lmf {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using TempDir = lmf::test::TempDir;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}

// A safetensors file built byte by byte: u64 header length (the real one unless overridden),
// header text, data bytes.
std::string st_bytes(const std::string& header, const std::string& data,
                     std::optional<uint64_t> header_len = std::nullopt) {
  const uint64_t n = header_len.value_or(header.size());
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s + header + data;
}

// Expects `fn` to throw a one-line UserError whose message names `file` and contains `what`.
void expect_user_error(const std::function<void()>& fn, const std::string& file, const std::string& what) {
  test::expect_user_error(fn, {file, what});
}

// ----------------------------------------------------------------------------------------------
// half.h

TEST(Half, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly between bf16 1.0 (0x3f80) and 1 + 2^-7 (0x3f81): ties go to even.
  EXPECT_EQ(float_to_bf16(1.00390625f), 0x3f80);
  // 1 + 3 * 2^-8 lies between 0x3f81 and 0x3f82: even is 0x3f82 (rounds up).
  EXPECT_EQ(float_to_bf16(1.01171875f), 0x3f82);
  // Just above the first tie rounds up; just below the second rounds down.
  EXPECT_EQ(float_to_bf16(std::nextafter(1.00390625f, 2.f)), 0x3f81);
  EXPECT_EQ(float_to_bf16(std::nextafter(1.01171875f, 0.f)), 0x3f81);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  // FLT_MAX is past the midpoint above bf16's largest finite value: rounds to +Inf, as PyTorch.
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
  // A NaN whose payload lives only in the low bits must stay a NaN, not become Inf.
  const float nan_low = std::bit_cast<float>(0x7f800001u);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(nan_low))));
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xc0490fdb >> 16), -3.140625f);
}

TEST(Half, Bf16EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f))));
      continue;
    }
    ASSERT_EQ(float_to_bf16(f), h) << std::hex << h;
  }
}

TEST(Half, F16KnownValuesAndRounding) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_f16(65504.f), 0x7bff);          // largest finite
  EXPECT_EQ(float_to_f16(65519.f), 0x7bff);          // below the midpoint to 65536
  EXPECT_EQ(float_to_f16(65520.f), 0x7c00);          // the midpoint ties to even: Inf
  EXPECT_EQ(float_to_f16(0x1p-24f), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_f16(0x1p-25f), 0x0000);         // half of it ties to even: zero
  EXPECT_EQ(float_to_f16(0x1.8p-24f), 0x0002);       // 1.5 ulp ties to even: 2
  EXPECT_EQ(float_to_f16(0x1p-14f), 0x0400);         // smallest normal
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f), 0x3c00);  // tie between 0x3c00 and 0x3c01: even
  EXPECT_EQ(float_to_f16(1.0f + 0x3p-11f), 0x3c02);  // tie between 0x3c01 and 0x3c02: even
  EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f16_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_float(0x0001), 0x1p-24f);
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(std::nanf("")))));
}

TEST(Half, F16EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(f))));
      continue;
    }
    ASSERT_EQ(float_to_f16(f), h) << std::hex << h;
  }
}

// ----------------------------------------------------------------------------------------------
// safetensors

TEST(Safetensors, RoundTripAllKinds) {
  TempDir dir;
  const fs::path p = dir / "model.safetensors";
  const std::vector<float> w = {1, -2, 3.5f, 4, 5, 6.25f};  // (2, 3)
  std::vector<uint16_t> b;                                  // (5,) bf16
  for (float v : {0.5f, -1.f, 3.f, 1e-3f, 7.f}) b.push_back(float_to_bf16(v));
  std::vector<uint16_t> h;  // (3,) f16
  for (float v : {0.25f, -8.f, 1000.f}) h.push_back(float_to_f16(v));
  const std::vector<int32_t> ids = {7, -1, 0, 123456789};  // (4,)
  const float scalar = 42.f;                               // shape []
  {
    SafetensorsWriter wr;
    wr.add("h.f16", DType::F16, {3}, h.data());
    wr.add("w", DType::F32, {2, 3}, w.data());
    wr.add("b", DType::BF16, {5}, b.data());
    wr.add("ids", DType::I32, {4}, ids.data());
    wr.add("scalar", DType::F32, {}, &scalar);
    wr.add("empty", DType::F32, {0, 3}, nullptr);
    wr.set_metadata("format", "pt");
    wr.set_metadata("step", "100");
    wr.write(p);
  }
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.tmp"));

  auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f.tensors().size(), 6u);
  for (size_t i = 1; i < f.tensors().size(); ++i)
    EXPECT_LE(f.tensors()[i - 1].offset, f.tensors()[i].offset) << "tensors() is in offset order";
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"step", "100"}}));
  EXPECT_EQ(f.find("nope"), nullptr);

  auto check = [&](const std::string& name, DType dt, const Shape& shape, const void* want,
                   size_t nbytes) {
    const StTensorInfo* t = f.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, dt) << name;
    EXPECT_TRUE(t->dtype_known) << name;
    EXPECT_EQ(t->st_dtype, dtype_name(dt)) << name;
    EXPECT_EQ(t->shape, shape) << name;
    EXPECT_EQ(t->nbytes, nbytes) << name;
    // Our writer keeps every tensor aligned to its element size.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data(*t)) % dtype_size(dt), 0u) << name;
    if (nbytes) {
      EXPECT_EQ(std::memcmp(f.data(*t), want, nbytes), 0) << name;
    }
  };
  check("w", DType::F32, {2, 3}, w.data(), 24);
  check("b", DType::BF16, {5}, b.data(), 10);
  check("h.f16", DType::F16, {3}, h.data(), 6);
  check("ids", DType::I32, {4}, ids.data(), 16);
  check("scalar", DType::F32, {}, &scalar, 4);
  check("empty", DType::F32, {0, 3}, nullptr, 0);

  // Moving keeps the mapping alive.
  SafetensorsFile g = std::move(f);
  float s = 0;
  g.read_as_float("scalar", {}, &s);
  EXPECT_EQ(s, 42.f);
}

TEST(Safetensors, HeaderIsPaddedTo8Bytes) {
  TempDir dir;
  const float v = 1;
  // Names of every length mod 8, so that some unpadded headers are misaligned.
  for (int len = 1; len <= 8; ++len) {
    const fs::path p = dir / fmt::format("pad{}.safetensors", len);
    SafetensorsWriter wr;
    wr.add(std::string(len, 'x'), DType::F32, {1}, &v);
    wr.write(p);
    const std::string bytes = slurp(p);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    EXPECT_EQ(n % 8, 0u) << len;
    EXPECT_EQ(bytes.size(), 8 + n + 4) << len;
    EXPECT_NO_THROW(json::parse(bytes.substr(8, n))) << "padding must keep the header valid JSON";
    float got = 0;
    SafetensorsFile::open(p).read_as_float(std::string(len, 'x'), {1}, &got);
    EXPECT_EQ(got, 1.f);
  }
}

TEST(Safetensors, ReadAsFloatConverts) {
  TempDir dir;
  const fs::path p = dir / "conv.safetensors";
  const std::vector<float> want = {1.f, -0.5f,   3.140625f,
                                   0.f, -1024.f, 0.0078125f};  // exact in bf16 and f16
  std::vector<uint16_t> bf, hf;
  for (float v : want) bf.push_back(float_to_bf16(v)), hf.push_back(float_to_f16(v));
  std::vector<double> d(want.begin(), want.end());
  const std::vector<int32_t> ints = {1, 2};
  SafetensorsWriter wr;
  wr.add("bf", DType::BF16, {2, 3}, bf.data());
  wr.add("hf", DType::F16, {2, 3}, hf.data());
  wr.add("d", DType::F64, {6}, d.data());
  wr.add("i", DType::I32, {2}, ints.data());
  wr.write(p);

  auto f = SafetensorsFile::open(p);
  for (const char* name : {"bf", "hf"}) {
    std::vector<float> got(6, NAN);
    f.read_as_float(name, {2, 3}, got.data());
    EXPECT_EQ(got, want) << name;
  }
  std::vector<float> got(6, NAN);
  f.read_as_float("d", {6}, got.data());
  EXPECT_EQ(got, want);

  expect_user_error(
      [&] {
        f.read_as_float("bf", {3, 2}, got.data());
      },
      "conv.safetensors", "tensor 'bf' has shape (2, 3), expected (3, 2)");
  expect_user_error([&] { f.read_as_float("missing", {1}, got.data()); }, "conv.safetensors",
                    "no tensor 'missing'");
  expect_user_error([&] { f.read_as_float("i", {2}, got.data()); }, "conv.safetensors",
                    "dtype I32");
}

// Reading a tensor out of the mapped file does not leave the file's pages resident besides the
// copy (a checkpoint's load peaks at its parameters, not twice that), and a second read still
// gets the same values (the pages come back from the file).
TEST(Safetensors, ReadingDoesNotKeepTheFilesPages) {
  TempDir dir;
  const fs::path p = dir / "big.safetensors";
  const size_t n = size_t(4) << 20;  // 16 MiB of F32, 8 MiB of BF16
  std::vector<float> w(n);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) {
    w[i] = float(i % 64) * 0.25f;  // exact in bf16
    h[i] = float_to_bf16(w[i]);
  }
  SafetensorsWriter wr;
  wr.add("w", DType::F32, {int64_t(n)}, w.data());
  wr.add("h", DType::BF16, {int64_t(n)}, h.data());
  wr.write(p);
  std::vector<float> got(n, -1.0f), got16(n, -1.0f);  // written: resident before the measure
  auto f = SafetensorsFile::open(p);
  const long before = test::resident_bytes();
  ASSERT_GT(before, 0);
  f.read_as_float("w", {int64_t(n)}, got.data());
  f.read_as_float("h", {int64_t(n)}, got16.data());
  EXPECT_LT(test::resident_bytes() - before, 4L << 20) << "the file's 24 MiB stayed resident";
  EXPECT_EQ(got, w);
  EXPECT_EQ(got16, w);
  std::fill(got.begin(), got.end(), -1.0f);
  f.read_as_float("w", {int64_t(n)}, got.data());
  EXPECT_EQ(got, w);
}

// A file from elsewhere may pack mixed dtypes so that an F32 tensor starts at an odd offset, and
// may use dtypes lmforge has no DType for.
TEST(Safetensors, ForeignFileUnalignedAndUnknownDtype) {
  TempDir dir;
  const fs::path p = dir / "foreign.safetensors";
  const std::string header = R"({"flag":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]},)"
                             R"("x":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
                             R"("pos":{"dtype":"I64","shape":[1],"data_offsets":[9,17]}})";
  std::string data(17, '\0');
  data[0] = 1;
  const float xs[2] = {2.5f, -7.f};
  std::memcpy(data.data() + 1, xs, 8);
  spit(p, st_bytes(header, data));
  auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.tensors()[0].name, "flag");
  EXPECT_FALSE(f.find("pos")->dtype_known);
  EXPECT_EQ(f.find("pos")->st_dtype, "I64");
  float got[2];
  f.read_as_float("x", {2}, got);
  EXPECT_EQ(got[0], 2.5f);
  EXPECT_EQ(got[1], -7.f);
  expect_user_error([&] { f.read_as_float("pos", {1}, got); }, "foreign.safetensors", "dtype I64");
}

struct BadFile {
  const char* label;
  std::string bytes;
  const char* what;  // expected in the message
};

TEST(Safetensors, EveryValidationFailureNamesTheFile) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data8(8, '\0');
  auto entry = [](const std::string& fields) { return "{\"a\":{" + fields + "}}"; };
  const std::vector<BadFile> cases = {
      {"short", std::string("\x05\x00\x00", 3), "too short"},
      {"header_past_eof", st_bytes("{}", "", 1000), "larger than the rest of the file"},
      {"header_over_100mb", st_bytes("{}", "", uint64_t{1} << 40), "100 MB"},
      {"bad_json", st_bytes(R"({"a": {"dtype": )", ""), "not valid JSON"},
      {"not_object", st_bytes("[1, 2]", ""), "not a JSON object"},
      {"entry_not_object", st_bytes(R"({"a": 5})", ""), "not a JSON object"},
      {"no_dtype", st_bytes(entry(R"("shape":[2],"data_offsets":[0,8])"), data8), "no \"dtype\""},
      {"no_shape", st_bytes(entry(R"("dtype":"F32","data_offsets":[0,8])"), data8), "no \"shape\""},
      {"no_offsets", st_bytes(entry(R"("dtype":"F32","shape":[2])"), data8), "no \"data_offsets\""},
      {"dtype_not_string", st_bytes(entry(R"("dtype":4,"shape":[2],"data_offsets":[0,8])"), data8),
       "\"dtype\" is not a string"},
      {"shape_not_array", st_bytes(entry(R"("dtype":"F32","shape":2,"data_offsets":[0,8])"), data8),
       "\"shape\" is not an array"},
      {"shape_float_dim",
       st_bytes(entry(R"("dtype":"F32","shape":[2.5],"data_offsets":[0,8])"), data8),
       "non-integer dimension"},
      {"offsets_not_pair",
       st_bytes(entry(R"("dtype":"F32","shape":[2],"data_offsets":[0])"), data8),
       "\"data_offsets\" is not an array of two integers"},
      {"unknown_dtype", st_bytes(entry(R"("dtype":"F33","shape":[2],"data_offsets":[0,8])"), data8),
       "unknown dtype \"F33\""},
      {"negative_dim", st_bytes(entry(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), data8),
       "negative"},
      {"end_before_begin",
       st_bytes(entry(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"), data8),
       "end before they begin"},
      {"wrong_shape_product",
       st_bytes(entry(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), data8),
       "needs 12 bytes"},
      {"huge_shape_product",
       st_bytes(entry(R"("dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8])"),
                data8),
       "needs too many bytes"},
      {"offsets_out_of_range",
       st_bytes(entry(R"("dtype":"F32","shape":[2],"data_offsets":[16,24])"), data8),
       "past the end of the data section"},
      {"truncated_data", st_bytes("{" + ok_entry + "}", std::string(5, '\0')), "file truncated"},
      {"overlap",
       st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                std::string(12, '\0')),
       "overlap"},
      {"metadata_not_object", st_bytes(R"({"__metadata__": [1]})", ""),
       "\"__metadata__\" is not a JSON object"},
      {"metadata_value_not_string", st_bytes(R"({"__metadata__": {"k": 1}})", ""),
       "is not a string"},
      // Found by tests/fuzz/fuzz_safetensors: the JSON library reports this number with an
      // exception that is not a parse_error, which escaped as an internal error.
      {"number_out_of_range",
       st_bytes(entry(R"("dtype":"F32","shape":[1e999],"data_offsets":[0,8])"), data8),
       "a number out of range"},
      // Found by tests/fuzz/fuzz_safetensors: dumping this shape for the message overflowed
      // the stack (a segfault, not an error).
      {"deep_nesting",
       st_bytes(entry(R"("dtype":"F32","data_offsets":[0,0],"shape":)" +
                      std::string(100'000, '[') + std::string(100'000, ']')),
                ""),
       "header nests deeper than 128 levels"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string name = std::string(c.label) + ".safetensors";
    spit(dir / name, c.bytes);
    expect_user_error([&] { SafetensorsFile::open(dir / name); }, name, c.what);
  }
  expect_user_error([&] { SafetensorsFile::open(dir / "missing.safetensors"); },
                    "missing.safetensors", "cannot open");
  // The same bytes with the data intact open fine: the checks above fail for the stated reason.
  spit(dir / "good.safetensors", st_bytes("{" + ok_entry + "}", data8));
  EXPECT_NO_THROW(SafetensorsFile::open(dir / "good.safetensors"));
}

// ----------------------------------------------------------------------------------------------
// checkpoint directories

void write_marker(const fs::path& dir, long step) {
  spit(dir / "state.json", json{{"step", step}}.dump());
}

std::vector<long> steps_of(const fs::path& run) {
  std::vector<long> s;
  for (const auto& c : list_checkpoints(run)) s.push_back(c.step);
  return s;
}

TEST(CheckpointDir, KeepLastRemovesOldest) {
  TempDir run;
  for (long step : {100, 200, 300}) {
    const fs::path d = write_checkpoint(run.path(), step, 2,
                                        [&](const fs::path& dir) { write_marker(dir, step); });
    EXPECT_EQ(d, run / "checkpoints" / checkpoint_dir_name(step));
  }
  EXPECT_EQ(steps_of(run.path()), (std::vector<long>{200, 300}));
  EXPECT_EQ(checkpoint_dir_name(100), "step_0000100");
  EXPECT_TRUE(fs::is_directory(run / "checkpoints" / "step_0000300"));
  EXPECT_EQ(json::parse(read_file(run / "checkpoints" / "step_0000300" / "state.json"))["step"],
            300);
  // No temporary directories are left behind.
  for (const auto& e : fs::directory_iterator(run / "checkpoints"))
    EXPECT_TRUE(e.path().filename().string().starts_with("step_")) << e.path();
}

TEST(CheckpointDir, KeepAllAndNewestWrittenIsNeverPruned) {
  TempDir run;
  for (long step : {1, 2, 3, 4})
    write_checkpoint(run.path(), step, 0, [&](const fs::path& d) { write_marker(d, step); });
  EXPECT_EQ(steps_of(run.path()), (std::vector<long>{1, 2, 3, 4}));
  // A run resumed from step 2 writes step 3 again, then 5... and with keep_last 2 the one just
  // written survives even though step 4 (from the abandoned timeline) is higher.
  write_checkpoint(run.path(), 3, 2,
                   [&](const fs::path& d) { spit(d / "state.json", "rewritten"); });
  EXPECT_EQ(steps_of(run.path()), (std::vector<long>{3, 4}));
  EXPECT_EQ(read_file(run / "checkpoints" / "step_0000003" / "state.json"), "rewritten");
}

TEST(CheckpointDir, FailedFillLeavesPreviousCheckpointsUntouched) {
  TempDir run;
  write_checkpoint(run.path(), 10, 1, [&](const fs::path& d) { write_marker(d, 10); });
  EXPECT_THROW(write_checkpoint(run.path(), 20, 1,
                                [&](const fs::path& d) {
                                  write_marker(d, 20);
                                  throw std::runtime_error("disk full");
                                }),
               std::runtime_error);
  EXPECT_EQ(steps_of(run.path()), (std::vector<long>{10}));
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step_0000020"));
  EXPECT_EQ(json::parse(read_file(run / "checkpoints" / "step_0000010" / "state.json"))["step"],
            10);
  ASSERT_TRUE(latest_checkpoint(run.path()).has_value());
  EXPECT_EQ(latest_checkpoint(run.path())->step, 10);
}

TEST(CheckpointDir, ListingIgnoresTemporaryAndForeignEntries) {
  TempDir run;
  EXPECT_TRUE(list_checkpoints(run.path()).empty());  // no checkpoints/ yet
  EXPECT_FALSE(latest_checkpoint(run.path()).has_value());
  write_checkpoint(run.path(), 5, 0, [&](const fs::path& d) { write_marker(d, 5); });
  // Debris of a crash mid-write, and things that only look like checkpoints.
  fs::create_directories(run / "checkpoints" / ".tmp_step_0000900");
  fs::create_directories(run / "checkpoints" / "step_12x");
  fs::create_directories(run / "checkpoints" / "step_");
  spit(run / "checkpoints" / "step_0000700", "a file, not a directory");
  const auto latest = latest_checkpoint(run.path());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 5);
  EXPECT_EQ(latest->dir, run / "checkpoints" / "step_0000005");
  // A stale temporary directory for the same step is replaced, not merged into.
  fs::create_directories(run / "checkpoints" / ".tmp_step_0000006");
  spit(run / "checkpoints" / ".tmp_step_0000006" / "junk", "x");
  const fs::path d6 =
      write_checkpoint(run.path(), 6, 0, [&](const fs::path& d) { write_marker(d, 6); });
  EXPECT_FALSE(fs::exists(d6 / "junk"));
  EXPECT_EQ(latest_checkpoint(run.path())->step, 6);
}

TEST(CheckpointDir, AtomicFileWriteAndRead) {
  TempDir dir;
  const fs::path p = dir / "config.toml";
  write_file_atomic(p, "a = 1\n");
  write_file_atomic(p, std::string("b = 2\n\0binary", 14));
  EXPECT_EQ(read_file(p), std::string("b = 2\n\0binary", 14));
  EXPECT_FALSE(fs::exists(dir / "config.toml.tmp"));
  write_file_atomic(dir / "empty", "");
  EXPECT_EQ(read_file(dir / "empty"), "");
  expect_user_error([&] { read_file(dir / "absent.json"); }, "absent.json", "cannot read");
  expect_user_error([&] { read_file(dir.path()); }, dir.path().filename().string(),
                    "is a directory");
  expect_user_error([&] { write_file_atomic(dir / "no_such_dir" / "x.json", "{}"); }, "x.json",
                    "cannot create");
}

// ----------------------------------------------------------------------------------------------
// metrics

TEST(Metrics, WriteReadAppend) {
  TempDir dir;
  const fs::path p = dir / "run" / "metrics.jsonl";  // parent created on demand
  {
    MetricsLog log(p, false);
    log.write({{"step", 1}, {"train_loss", 3.5}});
    log.write({{"step", 2}, {"train_loss", NAN}, {"note", "nan becomes null"}});
    // Written and flushed per record: readable while the log is still open.
    EXPECT_EQ(read_metrics(p).size(), 2u);
  }
  {
    MetricsLog log(p, true);
    log.write({{"step", 3}, {"val_loss", 2.25}});
  }
  const auto recs = read_metrics(p);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0]["train_loss"], 3.5);
  EXPECT_TRUE(recs[1]["train_loss"].is_null());
  EXPECT_EQ(recs[2]["val_loss"], 2.25);
  // One record per line.
  const std::string text = read_file(p);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3);
  // append = false starts over.
  { MetricsLog log(p, false); }
  EXPECT_TRUE(read_metrics(p).empty());
}

TEST(Metrics, TruncatedLastLineIsSkippedAndDroppedOnAppend) {
  TempDir dir;
  const fs::path p = dir / "metrics.jsonl";
  spit(p, "{\"step\": 1, \"train_loss\": 3.0}\n{\"step\": 2, \"train_lo");
  auto recs = read_metrics(p);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0]["step"], 1);
  {
    MetricsLog log(p, true);
    log.write({{"step", 2}, {"train_loss", 2.5}});
  }
  recs = read_metrics(p);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1]["train_loss"], 2.5);
}

TEST(Metrics, MalformedMiddleLineIsAnErrorWithLineNumber) {
  TempDir dir;
  const fs::path p = dir / "metrics.jsonl";
  spit(p, "{\"step\": 1}\n{\"step\": oops}\n{\"step\": 3}\n");
  expect_user_error([&] { read_metrics(p); }, "metrics.jsonl:2", "malformed JSON");
  spit(p, "{\"step\": 1}\n[1, 2]\n{\"step\": 3}\n");
  expect_user_error([&] { read_metrics(p); }, "metrics.jsonl:2", "expected a JSON object");
  spit(p, "\n{\"step\": 1}\n\n{\"step\": 2}\n");  // blank lines are fine
  EXPECT_EQ(read_metrics(p).size(), 2u);
  expect_user_error([&] { read_metrics(dir / "none.jsonl"); }, "none.jsonl", "cannot read");
}

// ----------------------------------------------------------------------------------------------
// progress

TEST(Progress, FormatDuration) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(12.3), "12s");
  EXPECT_EQ(format_duration(59.7), "1m00s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3599.4), "59m59s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(90000), "25h00m");
  EXPECT_EQ(format_duration(NAN), "?");
  EXPECT_EQ(format_duration(-1), "?");
}

TEST(Progress, FormatCount) {
  EXPECT_EQ(format_count(0), "0");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(12.34), "12.3");
  EXPECT_EQ(format_count(12345), "12.3k");
  EXPECT_EQ(format_count(999.6), "1.00k");
  EXPECT_EQ(format_count(1'050'000), "1.05M");
  EXPECT_EQ(format_count(999'999), "1.00M");
  EXPECT_EQ(format_count(2.5e9), "2.50G");
  EXPECT_EQ(format_count(-12345), "-12.3k");
}

std::vector<std::string> lines_of(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::vector<std::string> out;
  char buf[1024];
  while (std::fgets(buf, sizeof buf, f)) {
    std::string s(buf);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    out.push_back(s);
  }
  return out;
}

TEST(Progress, PlainLinesAreThrottledAndEndWithTheLastStep) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    Progress p(1000, 0, /*force_plain=*/true, f);
    EXPECT_FALSE(p.is_terminal());
    for (long s = 1; s <= 1000; ++s) {
      p.update(s, {{"loss", "3.2134"}, {"tok/s", "12.3k"}});
      if (s == 500) p.message("eval: val_loss 2.9");
    }
  }
  const auto lines = lines_of(f);
  std::fclose(f);
  // One line every total/100 = 10 steps (plus the first and the message): no flood.
  EXPECT_GE(lines.size(), 100u);
  EXPECT_LE(lines.size(), 103u);
  const std::regex re(R"(step \d+/1000 \| loss 3\.2134 \| tok/s 12\.3k \| (ETA \S+|time \S+))");
  size_t steps = 0;
  for (const auto& l : lines) {
    if (l == "eval: val_loss 2.9") continue;
    EXPECT_TRUE(std::regex_match(l, re)) << l;
    ++steps;
  }
  EXPECT_EQ(steps + 1, lines.size()) << "the message is printed once";
  EXPECT_TRUE(lines.back().starts_with("step 1000/1000 |")) << lines.back();
  EXPECT_NE(lines.back().find("time "), std::string::npos) << lines.back();
}

TEST(Progress, FinishPrintsAnUnshownLastUpdate) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  Progress p(1000, 0, true, f);
  p.update(1, {});
  p.update(2, {{"loss", "1.0"}});  // throttled
  p.finish();
  p.finish();  // idempotent
  const auto lines = lines_of(f);
  std::fclose(f);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1].substr(0, 25), "step 2/1000 | loss 1.0 | ");
  EXPECT_TRUE(lines[1].find("ETA ") != std::string::npos) << lines[1];
}

TEST(Progress, BarLineLayoutAndWidth) {
  std::FILE* f = std::tmpfile();
  Progress p(1000, 100, true, f);
  const ProgressFields fields = {{"loss", "3.2134"}, {"tok/s", "12.3k"}};
  const std::string line = p.bar_line(120, fields, 100);
  EXPECT_LE(line.size(), 99u);
  EXPECT_TRUE(line.starts_with("step  120/1000 [")) << line;
  const std::regex re(R"(step  120/1000 \[(#*)(\.*)\]  12%  loss 3\.2134  tok/s 12\.3k  ETA \?)");
  std::smatch m;
  ASSERT_TRUE(std::regex_match(line, m, re)) << line;
  const size_t bar = m[1].length() + m[2].length();
  EXPECT_GE(bar, 10u);
  EXPECT_EQ(m[1].length(), bar * 12 / 100);
  // A narrow terminal drops the bar and then clips, so the line never wraps.
  const std::string narrow = p.bar_line(120, fields, 40);
  EXPECT_LE(narrow.size(), 39u);
  EXPECT_EQ(narrow.find('['), std::string::npos) << narrow;
  EXPECT_TRUE(p.bar_line(1000, fields, 100).find("100%") != std::string::npos);
  std::fclose(f);
}

TEST(Progress, EtaComesFromTheStepRate) {
  std::FILE* f = std::tmpfile();
  Progress p(100, 0, true, f);
  EXPECT_EQ(p.seconds_per_step(), 0);
  p.update(1, {});
  ::usleep(20'000);
  p.update(2, {});
  EXPECT_GT(p.seconds_per_step(), 0);
  const std::string line = p.plain_line(2, {});
  EXPECT_TRUE(std::regex_match(line, std::regex(R"(step 2/100 \| ETA \d+s)"))) << line;
  std::fclose(f);
}

// ----------------------------------------------------------------------------------------------
// plot

// Tags balance (ignoring <?...?> and self-closing ones): enough to catch a broken writer.
void expect_well_formed_svg(const std::string& svg) {
  ASSERT_TRUE(svg.starts_with("<?xml")) << svg.substr(0, 40);
  std::vector<std::string> stack;
  size_t pos = 0, roots = 0;
  while ((pos = svg.find('<', pos)) != std::string::npos) {
    const size_t end = svg.find('>', pos);
    ASSERT_NE(end, std::string::npos);
    const std::string tag = svg.substr(pos + 1, end - pos - 1);
    pos = end + 1;
    if (tag.starts_with("?")) continue;
    if (tag.starts_with("/")) {
      ASSERT_FALSE(stack.empty()) << tag;
      EXPECT_EQ(stack.back(), tag.substr(1));
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" />"));
    EXPECT_EQ(std::count(tag.begin(), tag.end(), '"') % 2, 0) << tag;
    if (tag.ends_with("/")) continue;
    if (stack.empty()) ++roots;
    stack.push_back(name);
  }
  EXPECT_TRUE(stack.empty());
  EXPECT_EQ(roots, 1u);
}

// The points of <polyline class="cls">, as (x, y) pairs.
std::vector<std::pair<double, double>> polyline_points(const std::string& svg,
                                                       const std::string& cls) {
  const size_t at = svg.find("<polyline class=\"" + cls + "\"");
  if (at == std::string::npos) return {};
  const size_t p = svg.find("points=\"", at) + 8;
  std::istringstream in(svg.substr(p, svg.find('"', p) - p));
  std::vector<std::pair<double, double>> out;
  std::string tok;
  while (in >> tok) {
    const size_t c = tok.find(',');
    out.push_back({std::stod(tok.substr(0, c)), std::stod(tok.substr(c + 1))});
  }
  return out;
}

TEST(Plot, TrainEmaAndValSeries) {
  std::vector<json> m;
  for (int s = 1; s <= 300; ++s) {
    json r = {{"step", s}, {"train_loss", 5.0 / std::sqrt(s) + 0.1 * (s % 3)}};
    if (s == 77) r["train_loss"] = NAN;  // skipped, not drawn as 0
    m.push_back(r);
    if (s % 50 == 0) m.push_back({{"step", s}, {"val_loss", 5.0 / std::sqrt(s) + 0.2}});
  }
  m.push_back({{"lr", 1e-3}});  // no step: ignored
  TempDir dir;
  const fs::path p = dir / "loss.svg";
  write_loss_plot(m, p);
  const std::string svg = read_file(p);
  EXPECT_FALSE(fs::exists(dir / "loss.svg.tmp"));
  expect_well_formed_svg(svg);
  EXPECT_NE(svg.find("width=\"800\" height=\"500\""), std::string::npos);
  for (const char* bad : {"\"nan", "nan,", ",nan", ">nan", "inf,", ",inf"})
    EXPECT_EQ(svg.find(bad), std::string::npos) << bad;

  const auto train = polyline_points(svg, "train");
  const auto ema = polyline_points(svg, "train-ema");
  const auto val = polyline_points(svg, "val");
  EXPECT_EQ(train.size(), 299u);  // 300 minus the NaN
  EXPECT_EQ(ema.size(), 299u);
  EXPECT_EQ(val.size(), 6u);
  for (const auto* s : {&train, &ema, &val}) {
    for (size_t i = 0; i < s->size(); ++i) {
      EXPECT_TRUE(std::isfinite((*s)[i].first) && std::isfinite((*s)[i].second));
      EXPECT_GE((*s)[i].first, 0);
      EXPECT_LE((*s)[i].first, 800);
      EXPECT_GE((*s)[i].second, 0);
      EXPECT_LE((*s)[i].second, 500);
      if (i) {
        EXPECT_GT((*s)[i].first, (*s)[i - 1].first) << "x increases with step";
      }
    }
  }
  // Loss falls, so y (downwards in SVG) grows from first to last point; the EMA is smoother: its
  // total vertical travel is smaller than the raw line's.
  EXPECT_LT(train.front().second, train.back().second);
  auto travel = [](const auto& pts) {
    double t = 0;
    for (size_t i = 1; i < pts.size(); ++i) t += std::abs(pts[i].second - pts[i - 1].second);
    return t;
  };
  EXPECT_LT(travel(ema), 0.5 * travel(train));
  // Markers on the validation points, and a legend entry per series.
  size_t circles = 0;
  for (size_t at = 0; (at = svg.find("<circle", at)) != std::string::npos; ++at) ++circles;
  EXPECT_EQ(circles, 6u + 1u);  // 6 validation points + the legend's marker
  for (const char* label : {">train<", ">train (EMA)<", ">val<", ">step<", ">loss<"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
}

TEST(Plot, NiceTickLabels) {
  std::vector<json> m = {{{"step", 0}, {"train_loss", 2.0}}, {{"step", 1000}, {"train_loss", 4.0}}};
  const std::string svg = loss_plot_svg(m);
  // x ticks every 100 or 200 steps and y ticks every 0.2 or 0.5, including the ends.
  EXPECT_NE(svg.find(">1000</text>"), std::string::npos);
  EXPECT_NE(svg.find(">0</text>"), std::string::npos);
  EXPECT_NE(svg.find(">2.0</text>"), std::string::npos);
  EXPECT_NE(svg.find(">4.0</text>"), std::string::npos);
  EXPECT_EQ(svg.find(">-0"), std::string::npos);
}

TEST(Plot, SinglePointLongRunsAndNoData) {
  const std::string one = loss_plot_svg({{{"step", 5}, {"train_loss", 3.0}}});
  expect_well_formed_svg(one);
  EXPECT_EQ(polyline_points(one, "train").size(), 1u);
  EXPECT_NE(one.find("<circle"), std::string::npos) << "a lone point is still visible";

  // More points than pixels are reduced per pixel column, keeping the extremes.
  std::vector<json> many;
  for (int s = 0; s < 100000; ++s)
    many.push_back({{"step", s}, {"train_loss", s == 54321 ? 50.0 : 3.0}});
  const std::string big = loss_plot_svg(many);
  expect_well_formed_svg(big);
  const auto pts = polyline_points(big, "train");
  EXPECT_LT(pts.size(), 2000u);
  double top = 1e9;
  for (const auto& [x, y] : pts) top = std::min(top, y);
  EXPECT_LT(top, 60) << "the spike survives downsampling";

  const std::string none = loss_plot_svg({});
  expect_well_formed_svg(none);
  EXPECT_NE(none.find("no loss values yet"), std::string::npos);
  EXPECT_EQ(none.find("<polyline"), std::string::npos);
}

}  // namespace
}  // namespace lmf
