// MPI implementation of Communicator (compiled when CMake finds MPI). Each collective is the
// non-blocking MPI-3 call (MPI_Iallreduce, ...) completed by polling MPI_Test against a
// deadline, so that a rank whose peer died or hangs gives up after timeout_s with one line
// instead of blocking forever.
// The C API only: no MPI C++ bindings (deprecated, and a separate library in OpenMPI).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <numeric>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

namespace lmf::dist {

namespace {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s) : timeout_s_(timeout_s) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owns_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string kind() const override { return "mpi"; }

  void all_reduce_sum(float* data, size_t n) override {
    stats_.all_reduce += n * 4;
    run("all_reduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, r);
    });
  }
  void all_reduce_sum(double* data, size_t n) override {
    stats_.all_reduce += n * 8;
    run("all_reduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, r);
    });
  }
  void all_reduce_max(int* data, size_t n) override {
    stats_.all_reduce += n * 4;
    run("all_reduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_INT, MPI_MAX, MPI_COMM_WORLD, r);
    });
  }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<int>& counts) override {
    LMF_CHECK(int(counts.size()) == world_, "reduce_scatter: {} counts for {} ranks", counts.size(), world_);
    stats_.reduce_scatter += uint64_t(std::accumulate(counts.begin(), counts.end(), int64_t(0))) * 4;
    run("reduce_scatter", [&](MPI_Request* r) {
      return MPI_Ireduce_scatter(in, out, counts.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, r);
    });
  }
  void all_gather(float* data, const std::vector<int>& counts) override {
    LMF_CHECK(int(counts.size()) == world_, "all_gather: {} counts for {} ranks", counts.size(), world_);
    std::vector<int> displs(world_, 0);
    for (int r = 1; r < world_; ++r) displs[r] = displs[r - 1] + counts[r - 1];
    stats_.all_gather += uint64_t(counts[rank_]) * 4;
    run("all_gather", [&](MPI_Request* r) {
      return MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), displs.data(), MPI_FLOAT,
                             MPI_COMM_WORLD, r);
    });
  }
  void broadcast(void* data, size_t bytes, int root) override {
    stats_.broadcast += bytes;
    run("broadcast", [&](MPI_Request* r) { return MPI_Ibcast(data, int(bytes), MPI_BYTE, root, MPI_COMM_WORLD, r); });
  }
  void start_all_reduce_sum(float* data, size_t n) override {
    stats_.all_reduce += n * 4;
    ++stats_.calls;
    MPI_Request req;
    if (MPI_Iallreduce(MPI_IN_PLACE, data, int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req) != MPI_SUCCESS) {
      std::fprintf(stderr, "lmforge: error: rank %d: MPI all_reduce failed\n", rank_);
      abort(3);
    }
    pending_.push_back(req);
    int done = 0;  // MPI progresses only inside MPI calls: let the earlier ones move
    MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE);
  }
  void finish_all() override {
    if (pending_.empty()) return;
    wait("all_reduce", [&] {
      int done = 0;
      MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE);
      return done != 0;
    });
    pending_.clear();
  }
  void barrier() override {
    run("barrier", [&](MPI_Request* r) { return MPI_Ibarrier(MPI_COMM_WORLD, r); });
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  // Starts a non-blocking collective and polls it to completion or the deadline.
  template <class Start>
  void run(const char* what, Start&& start) {
    ++stats_.calls;
    MPI_Request req;
    if (start(&req) != MPI_SUCCESS) {
      std::fprintf(stderr, "lmforge: error: rank %d: MPI %s failed\n", rank_, what);
      abort(3);
    }
    wait(what, [&] {
      int done = 0;
      MPI_Test(&req, &done, MPI_STATUS_IGNORE);
      return done != 0;
    });
  }

  // Polls `done` until it is true, or ends the job past the deadline.
  template <class Done>
  void wait(const char* what, Done&& done) {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s_);
    for (long polls = 0;; ++polls) {
      if (done()) return;
      // Spin briefly (collectives on a quiet job finish in microseconds), then yield the core.
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 100000 ? 1000 : 50));
      if (clock::now() > deadline) {
        std::fprintf(stderr,
                     "lmforge: error: rank %d of %d: %s got no answer from the other ranks in %.0f s "
                     "([dist] timeout_s): a rank died or hangs\n",
                     rank_, world_, what, timeout_s_);
        abort(3);
      }
    }
  }

  double timeout_s_;
  std::vector<MPI_Request> pending_;  // started by start_all_reduce_sum
  int rank_ = 0, world_ = 1;
  bool owns_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_communicator(double timeout_s) {
  if (!launched_by_mpi()) return std::make_unique<LocalCommunicator>();
  return std::make_unique<MpiCommunicator>(timeout_s);
}

}  // namespace lmf::dist
