#pragma once
// The behaviour of a PagedArray (core/paged_array.h) in a space with virtual memory, checked the
// same way for each space that has one: the guarded stand-in (tests/unit/test_backend.cpp) and
// CUDA's (tests/gpu/test_cuda_ops.cpp, also under the emulation). Values go in and out through
// the host copies only, so the space need not be host-accessible.
#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "core/paged_array.h"

namespace lmf::test {

// h with [lo, hi) zeroed.
inline std::vector<float> with_zeros(std::vector<float> h, size_t lo, size_t hi) {
  for (size_t i = lo; i < hi; ++i) h[i] = 0.0f;
  return h;
}

inline void expect_values(const PagedArray<float>& a, const std::vector<float>& want,
                          const std::string& what) {
  std::vector<float> got(a.size(), -1.0f);
  a.download(got.data(), got.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i] && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": first at " << first << ": " << got[first] << " vs "
                     << want[first];
}

inline void check_paged_array(const MemorySpace& space) {
  ASSERT_NE(space.virtual_memory, nullptr) << space.name;
  const size_t G = space.virtual_memory->granularity() / sizeof(float);  // values per granule
  const size_t n = 5 * G + 100;  // six granules, the last part-used
  PagedArray<float> a(space);
  a.resize(n);
  ASSERT_TRUE(a.paged());
  EXPECT_EQ(a.resident_bytes(), 6 * G * sizeof(float));
  expect_values(a, std::vector<float>(n, 0.0f),
                "fresh");  // zero, not the mapping's undefined contents

  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = float(i + 1);
  a.upload(h.data(), n);
  expect_values(a, h, "uploaded");

  // From inside granule 0 to inside granule 3: granules 1 and 2 go back, the edges are zeroed.
  a.release(G / 2, 3 * G + 7);
  EXPECT_EQ(a.resident_bytes(), 4 * G * sizeof(float));
  auto want = with_zeros(h, G / 2, 3 * G + 7);
  expect_values(a, want, "released");
  EXPECT_TRUE(a.committed(0, G));
  EXPECT_FALSE(a.committed(G - 1, G + 1));
  EXPECT_THROW(a.upload(h.data(), 1, G + 1), Error);  // writing released values needs commit first

  // One value committed: its granule is backed again, all zeros.
  a.commit(2 * G + 3, 2 * G + 4);
  EXPECT_EQ(a.resident_bytes(), 5 * G * sizeof(float));
  EXPECT_TRUE(a.committed(2 * G, 3 * G));
  expect_values(a, want, "one granule committed");
  a.upload(h.data() + 2 * G + 3, 1, 2 * G + 3);
  want[2 * G + 3] = h[2 * G + 3];
  expect_values(a, want, "a value written into it");

  // To the end: the last granule goes back although the array uses only part of it.
  a.release(4 * G + 50, n);
  EXPECT_EQ(a.resident_bytes(), 4 * G * sizeof(float));
  want = with_zeros(want, 4 * G + 50, n);
  expect_values(a, want, "tail released");

  // A range already released is released again without harm; zero() leaves released granules be.
  a.release(G, 2 * G);
  EXPECT_EQ(a.resident_bytes(), 4 * G * sizeof(float));
  a.zero();
  EXPECT_EQ(a.resident_bytes(), 4 * G * sizeof(float));
  expect_values(a, std::vector<float>(n, 0.0f), "zeroed");

  a.commit(0, n);
  EXPECT_EQ(a.resident_bytes(), 6 * G * sizeof(float));
  a.upload(h.data(), n);
  expect_values(a, h, "all committed and uploaded");
  a.release(0, n);
  EXPECT_EQ(a.resident_bytes(), 0u);
  expect_values(a, std::vector<float>(n, 0.0f), "all released");
}

}  // namespace lmf::test
