#pragma once
// Collectives between the processes of one training job. One interface, two implementations:
// LocalCommunicator (one process; every collective is a copy or nothing) and, when the build
// finds MPI, MpiCommunicator (OpenMPI or any MPI-3 library; launched by mpirun or srun).
//
// Every collective waits at most timeout_s for the other ranks. Past that, the rank prints one
// line naming itself and the collective and ends the whole job (a peer died or hangs), so no
// rank waits forever. Payload bytes are counted per kind of collective, so that a cost model
// can be checked against what a run moved.
//
// split() cuts a communicator into sub-communicators (the process grid: tensor-parallel and
// data-parallel groups). A sub-communicator must be destroyed before the world communicator it
// came from, because the world one ends MPI: declare it after the world one (members and locals
// are destroyed in reverse order of declaration).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/half.h"

namespace lmf::dist {

// Payload bytes this rank handed to each kind of collective (its input size per call).
struct CommStats {
  uint64_t all_reduce = 0, reduce_scatter = 0, all_gather = 0, broadcast = 0;
  uint64_t calls = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string kind() const = 0;  // "local", "mpi" or "nccl"

  // data (n) = sum over ranks, on every rank.
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  virtual void all_reduce_sum(double* data, size_t n) = 0;
  // bf16 values (tensor parallelism's activations under bf16 storage): each rank's widened
  // exactly, summed in float, the sum rounded once to bf16. This one is for host memory: a float
  // copy through all_reduce_sum(float). A device communicator overrides it (NCCL: its bf16 sum).
  // Inline, as every other member here is pure: no translation unit owns the class's vtable.
  virtual void all_reduce_sum(bf16* data, size_t n) {
    std::vector<float> wide(n);
    for (size_t i = 0; i < n; ++i) wide[i] = float(data[i]);
    all_reduce_sum(wide.data(), n);
    for (size_t i = 0; i < n; ++i) data[i] = bf16(wide[i]);
  }
  virtual void all_reduce_max(int* data, size_t n) = 0;
  // Rank r's block of the sum: out (counts[r]) = sum over ranks of in[offset_r, offset_r +
  // counts[r]), offsets the prefix sums of counts; in holds sum(counts) values.
  virtual void reduce_scatter_sum(const float* in, float* out, const std::vector<int>& counts) = 0;
  // Concatenation in rank order, on every rank: data (sum(counts)) gets rank r's counts[r]
  // values, which it already holds at its own offset (in place).
  virtual void all_gather(float* data, const std::vector<int>& counts) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // Non-blocking all-reduce (sum) in place: it starts now (and earlier started ones are given a
  // chance to progress); finish_all() completes every started one, under the timeout. `data`
  // must not be touched in between. Counted as all_reduce.
  virtual void start_all_reduce_sum(float* data, size_t n) = 0;
  // Non-blocking all_gather (as all_gather), completed by finish_all(). Counted as all_gather.
  virtual void start_all_gather(float* data, const std::vector<int>& counts) = 0;
  virtual void finish_all() = 0;
  virtual void barrier() = 0;
  // The ranks that pass the same color form a new communicator, ordered by key (then by this
  // rank); collective over this communicator. Used for the process grid: tensor-parallel groups
  // and data-parallel groups. color >= 0. The new communicator has the same timeout, counts its
  // own stats (from zero; the split itself is counted nowhere), names the process by its world
  // rank in its messages, and its abort() still ends the whole job. Destroy it before the world
  // communicator (see the top of this file).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Ends every rank of the job with exit code `code` (after this rank's message is printed).
  [[noreturn]] virtual void abort(int code) = 0;

  const CommStats& stats() const { return stats_; }

 protected:
  CommStats stats_;
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  std::string kind() const override { return "local"; }
  void all_reduce_sum(float*, size_t n) override { count(stats_.all_reduce, n * 4); }
  void all_reduce_sum(double*, size_t n) override { count(stats_.all_reduce, n * 8); }
  void all_reduce_max(int*, size_t n) override { count(stats_.all_reduce, n * 4); }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<int>& counts) override;
  void all_gather(float*, const std::vector<int>& counts) override;
  void broadcast(void*, size_t bytes, int) override { count(stats_.broadcast, bytes); }
  void start_all_reduce_sum(float*, size_t n) override { count(stats_.all_reduce, n * 4); }
  void start_all_gather(float* data, const std::vector<int>& counts) override { all_gather(data, counts); }
  void finish_all() override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(int code) override;

 private:
  void count(uint64_t& what, uint64_t bytes) {
    what += bytes;
    ++stats_.calls;
  }
};

// True when this process was started by an MPI launcher (mpirun, srun with PMI/PMIx).
bool launched_by_mpi();
// This process's place among the job's processes on its node, from the launcher's environment
// (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, MPI_LOCALRANKID); 0 when none is set. Picks the
// GPU of a process.
int local_rank();

// The job's communicator: MPI when launched by an MPI launcher (UserError if this build has no
// MPI), else local. timeout_s bounds every collective's wait (see above).
std::unique_ptr<Communicator> make_communicator(double timeout_s);

// Splits n values into `world` contiguous blocks, each a multiple of `align` values except the
// last (which may also be empty): the shard of rank r is [offset(r), offset(r) + counts[r]).
struct Sharding {
  std::vector<int> counts, offsets;
  Sharding(size_t n, int world, size_t align = 16);
  size_t begin(int r) const { return size_t(offsets[r]); }
  size_t end(int r) const { return size_t(offsets[r]) + size_t(counts[r]); }
};

}  // namespace lmf::dist
