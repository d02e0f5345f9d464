#include "dist/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace lmf::dist {

void LocalCommunicator::reduce_scatter_sum(const float* in, float* out, const std::vector<int>& counts) {
  LMF_CHECK(counts.size() == 1, "local reduce_scatter over {} ranks", counts.size());
  if (out != in) std::memmove(out, in, sizeof(float) * size_t(counts[0]));
  count(stats_.reduce_scatter, uint64_t(counts[0]) * 4);
}

void LocalCommunicator::all_gather(float*, const std::vector<int>& counts) {
  LMF_CHECK(counts.size() == 1, "local all_gather over {} ranks", counts.size());
  count(stats_.all_gather, uint64_t(counts[0]) * 4);
}

std::unique_ptr<Communicator> LocalCommunicator::split(int color, int) {
  LMF_CHECK(color >= 0, "split: color {}", color);
  return std::make_unique<LocalCommunicator>();
}

void LocalCommunicator::abort(int code) { std::exit(code); }

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

int local_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"})
    if (const char* s = std::getenv(v)) {
      char* end = nullptr;
      const long r = std::strtol(s, &end, 10);
      if (end != s && *end == '\0' && r >= 0 && r < (1L << 20)) return int(r);
    }
  return 0;
}

#ifndef LMF_HAVE_MPI
std::unique_ptr<Communicator> make_communicator(double) {
  if (launched_by_mpi())
    throw UserError("started by an MPI launcher, but this lmforge was built without MPI (install libopenmpi-dev, rebuild)");
  return std::make_unique<LocalCommunicator>();
}
#endif

Sharding::Sharding(size_t n, int world, size_t align) : counts(world), offsets(world) {
  LMF_CHECK(world >= 1, "world {}", world);
  size_t per = (n + world - 1) / world;
  per = (per + align - 1) / align * align;
  for (int r = 0; r < world; ++r) {
    size_t lo = std::min(n, per * r), hi = std::min(n, per * (r + 1));
    offsets[r] = int(lo);
    counts[r] = int(hi - lo);
  }
  LMF_CHECK(n < size_t(1) << 31, "{} values: sharding uses int counts", n);
}

}  // namespace lmf::dist
