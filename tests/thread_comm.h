#pragma once
// N ranks as N threads of one process, for testing distributed code without mpirun:
//
//   ThreadGroup::run(3, [&](dist::Communicator& comm) { ... comm.all_reduce_sum(g, n); ... });
//
// runs the function on 3 threads, each with its own ThreadCommunicator (rank 0..2 of 3) over
// shared state, joins them, and rethrows the first exception any of them threw.
//
// Every collective is exact and deterministic: each rank sums in rank order 0..n-1, so every
// rank gets the same bits (not necessarily MPI's bits: there the library picks the order).
// Stats are counted as LocalCommunicator counts them. A rank that fails never leaves the others
// waiting: a collective whose ranks disagree (kind, sizes, root) throws on every rank; one that
// throws or returns makes its peers' next wait throw; any wait gives up after timeout_s.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

namespace lmf::test {

namespace thread_comm {

// What all the threads of one run share.
struct Job {
  explicit Job(int n) : returned(size_t(n)) {}
  std::mutex m;
  std::exception_ptr first;  // the first exception any rank threw
  std::atomic<bool> failed{false};
  std::vector<std::atomic<bool>> returned;  // (world) by world rank: its function returned

  void fail(std::exception_ptr e) {
    std::lock_guard lk(m);
    if (!first) first = std::move(e);
    failed = true;
  }
};

struct Group;

// One rank's part in the collective under way, posted before the first sync.
struct Slot {
  const char* what = "";
  const void* data = nullptr;  // this rank's buffer (input; all_gather's output too)
  size_t n = 0;                // values (bytes for broadcast)
  const std::vector<int>* counts = nullptr;
  int root = 0, color = 0, key = 0;
  std::shared_ptr<Group> group = nullptr;  // split: the new group, made by its first rank
};

// The ranks of one communicator (the world, or one split of it).
struct Group {
  Group(std::vector<int> world_ranks, std::shared_ptr<Job> job, double timeout_s)
      : world_ranks(std::move(world_ranks)),
        job(std::move(job)),
        timeout_s(timeout_s),
        slots(this->world_ranks.size()) {}
  const std::vector<int> world_ranks;  // (n) the world rank of each rank
  const std::shared_ptr<Job> job;
  const double timeout_s;
  std::vector<Slot> slots;  // (n)
  std::mutex m;
  std::condition_variable cv;
  uint64_t generation = 0;
  int arrived = 0;

  int size() const { return int(world_ranks.size()); }

  // A reusable barrier over the group's ranks. Its mutex also orders every rank's writes
  // before it with every rank's reads after it.
  void sync(const std::string& who, const char* what) {
    std::unique_lock lk(m);
    const uint64_t gen = generation;
    if (++arrived == size()) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s);
    while (generation == gen) {
      if (job->failed) throw Error(fmt::format("{}: {}: another rank failed", who, what));
      for (int w : world_ranks)
        if (job->returned[size_t(w)])
          throw Error(fmt::format("{}: {}: rank {} returned without taking part", who, what, w));
      if (clock::now() > deadline)
        throw Error(
            fmt::format("{}: {} got no answer from the other ranks in {} s", who, what, timeout_s));
      cv.wait_for(lk, std::chrono::milliseconds(10));  // short: failures are polled, not notified
    }
  }
};

// One rank's Communicator. Each collective: post this rank's slot, sync, check that the ranks
// agree and compute from every rank's slot, sync again (so no slot or buffer changes while a
// peer still reads it), then write the result.
class ThreadCommunicator final : public dist::Communicator {
 public:
  // Rank `rank` of `group`; a split one names itself by its world rank too.
  ThreadCommunicator(std::shared_ptr<Group> group, int rank, bool split = false)
      : g_(std::move(group)), rank_(rank), world_rank_(g_->world_ranks[size_t(rank)]) {
    who_ = split
               ? fmt::format("rank {} ({} of {} in a split group)", world_rank_, rank_, g_->size())
               : fmt::format("rank {}", world_rank_);
  }
  int rank() const override { return rank_; }
  int world() const override { return g_->size(); }
  std::string kind() const override { return "thread"; }

  void all_reduce_sum(float* data, size_t n) override {
    all_reduce("all_reduce_sum(float)", data, n, [](float a, float b) { return a + b; });
  }
  void all_reduce_sum(double* data, size_t n) override {
    all_reduce("all_reduce_sum(double)", data, n, [](double a, double b) { return a + b; });
  }
  void all_reduce_max(int* data, size_t n) override {
    all_reduce("all_reduce_max", data, n, [](int a, int b) { return std::max(a, b); });
  }
  void reduce_scatter_sum(const float* in, float* out, const std::vector<int>& counts) override {
    const char* what = "reduce_scatter_sum";
    check_counts(what, counts);
    const size_t total = size_t(std::accumulate(counts.begin(), counts.end(), int64_t(0)));
    count(stats_.reduce_scatter, total * 4);
    post({.what = what, .data = in, .n = total, .counts = &counts});
    enter(what);
    const size_t off = offset(counts, rank_), len = size_t(counts[size_t(rank_)]);
    const float* x0 = static_cast<const float*>(g_->slots[0].data) + off;
    std::vector<float> acc(x0, x0 + len);  // then the other ranks', in rank order
    for (int q = 1; q < world(); ++q) {
      const float* x = static_cast<const float*>(g_->slots[size_t(q)].data) + off;
      for (size_t i = 0; i < len; ++i) acc[i] += x[i];
    }
    g_->sync(who_, what);
    std::copy(acc.begin(), acc.end(), out);
  }
  void all_gather(float* data, const std::vector<int>& counts) override {
    const char* what = "all_gather";
    check_counts(what, counts);
    const size_t total = size_t(std::accumulate(counts.begin(), counts.end(), int64_t(0)));
    count(stats_.all_gather, uint64_t(counts[size_t(rank_)]) * 4);
    post({.what = what, .data = data, .n = total, .counts = &counts});
    enter(what);
    // Rank q's block of q's buffer is read by all and written by none.
    for (int q = 0; q < world(); ++q)
      if (q != rank_) {
        const size_t off = offset(counts, q);
        std::memcpy(data + off, static_cast<const float*>(g_->slots[size_t(q)].data) + off,
                    sizeof(float) * size_t(counts[size_t(q)]));
      }
    g_->sync(who_, what);
  }
  void broadcast(void* data, size_t bytes, int root) override {
    const char* what = "broadcast";
    LMF_CHECK(root >= 0 && root < world(), "{}: broadcast from root {} of {}", who_, root, world());
    count(stats_.broadcast, bytes);
    post({.what = what, .data = data, .n = bytes, .root = root});
    enter(what);
    if (rank_ != root) std::memcpy(data, g_->slots[size_t(root)].data, bytes);
    g_->sync(who_, what);
  }
  // Done at once: nothing here overlaps anyway.
  void start_all_reduce_sum(float* data, size_t n) override { all_reduce_sum(data, n); }
  void start_all_gather(float* data, const std::vector<int>& counts) override { all_gather(data, counts); }
  void finish_all() override {}
  void barrier() override {
    post({.what = "barrier"});
    enter("barrier");
    g_->sync(who_, "barrier");
  }
  std::unique_ptr<dist::Communicator> split(int color, int key) override {
    const char* what = "split";
    LMF_CHECK(color >= 0, "{}: split: color {}", who_, color);
    post({.what = what, .color = color, .key = key});
    enter(what);
    std::vector<int> members;  // ranks here with this color, ordered by (key, rank)
    for (int q = 0; q < world(); ++q)
      if (g_->slots[size_t(q)].color == color) members.push_back(q);
    std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
      return g_->slots[size_t(a)].key < g_->slots[size_t(b)].key;
    });
    const int new_rank = int(std::find(members.begin(), members.end(), rank_) - members.begin());
    if (new_rank == 0) {  // the first member makes the group; the others pick it up
      std::vector<int> world_ranks;
      for (int q : members) world_ranks.push_back(g_->world_ranks[size_t(q)]);
      g_->slots[size_t(rank_)].group =
          std::make_shared<Group>(std::move(world_ranks), g_->job, g_->timeout_s);
    }
    g_->sync(who_, what);
    auto group = g_->slots[size_t(members[0])].group;
    g_->sync(who_, what);
    return std::make_unique<ThreadCommunicator>(std::move(group), new_rank, true);
  }
  // Not the whole process: the thread throws, and its peers' waits then throw too.
  [[noreturn]] void abort(int code) override {
    throw Error(fmt::format("{}: abort({})", who_, code));
  }

 private:
  template <class T, class Op>
  void all_reduce(const char* what, T* data, size_t n, Op op) {
    count(stats_.all_reduce, n * sizeof(T));
    post({.what = what, .data = data, .n = n});
    enter(what);
    // Rank order, the same on every rank: the same bits everywhere.
    const T* x0 = static_cast<const T*>(g_->slots[0].data);
    std::vector<T> acc(x0, x0 + n);
    for (int q = 1; q < world(); ++q) {
      const T* x = static_cast<const T*>(g_->slots[size_t(q)].data);
      for (size_t i = 0; i < n; ++i) acc[i] = op(acc[i], x[i]);
    }
    g_->sync(who_, what);
    std::copy(acc.begin(), acc.end(), data);
  }

  void post(Slot s) { g_->slots[size_t(rank_)] = std::move(s); }

  // The first sync, then: every rank is in the same collective with the same sizes. Where two
  // slots differ, every rank finds one unlike its own, so all throw (after one more sync: a peer
  // unwinding would free the counts this rank still reads) or none.
  void enter(const char* what) {
    g_->sync(who_, what);
    const Slot& me = g_->slots[size_t(rank_)];
    std::string bad;
    for (int q = 0; q < world() && bad.empty(); ++q) {
      const Slot& s = g_->slots[size_t(q)];
      if (std::strcmp(s.what, me.what) != 0 || s.n != me.n || s.root != me.root ||
          (s.counts && me.counts && *s.counts != *me.counts))
        bad = fmt::format(
            "{}: {} of {} values (root {}), but rank {} of its group called {} of {} values (root "
            "{})",
            who_, me.what, me.n, me.root, q, s.what, s.n, s.root);
    }
    if (bad.empty()) return;
    g_->sync(who_, what);
    throw Error(bad);
  }

  void check_counts(const char* what, const std::vector<int>& counts) const {
    LMF_CHECK(int(counts.size()) == world(), "{}: {}: {} counts for {} ranks", who_, what,
              counts.size(), world());
    for (int c : counts) LMF_CHECK(c >= 0, "{}: {}: count {}", who_, what, c);
  }
  static size_t offset(const std::vector<int>& counts, int r) {
    return size_t(std::accumulate(counts.begin(), counts.begin() + r, int64_t(0)));
  }
  void count(uint64_t& what, uint64_t bytes) {
    what += bytes;
    ++stats_.calls;
  }

  std::shared_ptr<Group> g_;
  int rank_;        // in g_
  int world_rank_;  // in the whole run, for messages
  std::string who_;
};

}  // namespace thread_comm

using thread_comm::ThreadCommunicator;

class ThreadGroup {
 public:
  // Runs fn(comm) on n threads, where comm is rank r of n on thread r; returns once every thread
  // has returned, rethrowing the first exception any of them threw. A collective waits at most
  // timeout_s for its peers.
  static void run(int n, const std::function<void(dist::Communicator&)>& fn,
                  double timeout_s = 60) {
    LMF_CHECK(n >= 1, "ThreadGroup of {} ranks", n);
    auto job = std::make_shared<thread_comm::Job>(n);
    std::vector<int> ranks(static_cast<size_t>(n));
    std::iota(ranks.begin(), ranks.end(), 0);
    auto world = std::make_shared<thread_comm::Group>(std::move(ranks), job, timeout_s);
    {
      std::vector<std::jthread> threads;
      for (int r = 0; r < n; ++r)
        threads.emplace_back([&, r] {
          try {
            ThreadCommunicator comm(world, r);
            fn(comm);
          } catch (...) {
            job->fail(std::current_exception());
          }
          job->returned[size_t(r)] = true;
        });
    }  // joined
    if (job->first) std::rethrow_exception(job->first);
  }
};

}  // namespace lmf::test
