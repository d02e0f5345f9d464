#include "dist/tensor_parallel.h"

#include <cstring>
#include <limits>

#include "core/error.h"

namespace lmf::dist {

namespace {

// Calls fn(whole_offset, part_offset, count) for each contiguous run that rank's part of
// tensor i shares with the whole tensor (offsets into the flat buffers).
template <class T, class Fn>
void for_each_run(const ParamStore<T>& whole, const ParamStore<T>& part, int size, int rank, Fn&& fn) {
  LMF_CHECK(whole.entries().size() == part.entries().size(), "registries of {} and {} tensors",
            whole.entries().size(), part.entries().size());
  LMF_CHECK(rank >= 0 && rank < size, "rank {} of {}", rank, size);
  for (size_t i = 0; i < whole.entries().size(); ++i) {
    const ParamEntry& w = whole.entry(i);
    const ParamEntry& p = part.entry(i);
    LMF_CHECK(w.name == p.name && w.shape.size() == p.shape.size(), "tensor {}: {} in the part", w.name, p.name);
    if (p.split_dim < 0) {
      LMF_CHECK(w.shape == p.shape, "replicated tensor {} has another shape in the part", w.name);
      fn(w.offset, p.offset, w.size);
      continue;
    }
    const int d = p.split_dim;
    const int64_t k = p.split_chunks, D = w.shape[size_t(d)];
    LMF_CHECK(D % (k * size) == 0 && p.shape[size_t(d)] == D / size, "tensor {}: dimension {} of {} over {} ranks",
              w.name, d, D, size);
    int64_t outer = 1, inner = 1;
    for (int j = 0; j < d; ++j) outer *= w.shape[size_t(j)];
    for (size_t j = size_t(d) + 1; j < w.shape.size(); ++j) inner *= w.shape[j];
    const int64_t c = D / k / size;  // this rank's rows of each chunk
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < k; ++j)
        fn(w.offset + size_t((o * D + j * size * c + rank * c) * inner), p.offset + size_t((o * k * c + j * c) * inner),
           size_t(c * inner));
  }
}

}  // namespace

template <class T>
void tp_slice(const ParamStore<T>& whole, const T* whole_flat, const ParamStore<T>& part, T* part_flat, int size,
              int rank) {
  for_each_run(whole, part, size, rank, [&](size_t wo, size_t po, size_t n) {
    std::memcpy(part_flat + po, whole_flat + wo, n * sizeof(T));
  });
}

template <class T>
void tp_place(const ParamStore<T>& whole, T* whole_flat, const ParamStore<T>& part, const T* part_flat, int size,
              int rank) {
  for_each_run(whole, part, size, rank, [&](size_t wo, size_t po, size_t n) {
    std::memcpy(whole_flat + wo, part_flat + po, n * sizeof(T));
  });
}

template void tp_slice(const ParamStore<float>&, const float*, const ParamStore<float>&, float*, int, int);
template void tp_slice(const ParamStore<double>&, const double*, const ParamStore<double>&, double*, int, int);
template void tp_place(const ParamStore<float>&, float*, const ParamStore<float>&, const float*, int, int);
template void tp_place(const ParamStore<double>&, double*, const ParamStore<double>&, const double*, int, int);

std::vector<float> tp_gather(const ParamStore<float>& whole, const ParamStore<float>& part, const float* part_flat,
                             Communicator& group) {
  const int size = group.world();
  const size_t n = part.flat_size();
  std::vector<float> out(whole.flat_size(), 0.0f);
  if (size == 1) {
    tp_place(whole, out.data(), part, part_flat, 1, 0);
    return out;
  }
  LMF_CHECK(n <= size_t(std::numeric_limits<int>::max()), "a rank's part of {} values is too large to gather", n);
  std::vector<float> all(n * size_t(size));
  std::memcpy(all.data() + n * size_t(group.rank()), part_flat, n * sizeof(float));
  group.all_gather(all.data(), std::vector<int>(size_t(size), int(n)));
  // Rank 0 last, so that replicated tensors are its copy.
  for (int r = size - 1; r >= 0; --r) tp_place(whole, out.data(), part, all.data() + n * size_t(r), size, r);
  return out;
}

}  // namespace lmf::dist
