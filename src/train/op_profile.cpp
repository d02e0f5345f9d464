#include "train/op_profile.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <type_traits>

#include "core/timer.h"

namespace lmf {
namespace {

template <class F>
using Be = ops::Backend<F>;

// Every op of the table, once: the enum of accounts, the names and the wrapping below all expand
// this list, and the static_assert checks it against the struct's size.
#define LMF_BACKEND_OPS(X)                                                                               \
  X(matmul_forward) X(matmul_backward) X(encoder_forward) X(encoder_backward) X(layernorm_forward)     \
  X(layernorm_backward) X(gelu_forward) X(gelu_backward) X(matmul_gelu_forward) X(matmul_dgelu_backward)  \
  X(residual_forward)                                                                                  \
  X(residual_layernorm_forward) X(residual_rmsnorm_forward) X(attention_forward) X(attention_backward) \
  X(classifier_ce_forward) X(classifier_logits) X(rmsnorm_forward) X(rmsnorm_backward) X(rope_forward) \
  X(rope_backward) X(swiglu_forward) X(swiglu_backward) X(attention_gqa_forward)                       \
  X(attention_gqa_backward) X(attention_decode) X(fill) X(fill_stat) X(copy) X(to_compute)            \
  X(adamw_update) X(adamw_chunks) X(sum_squares) X(scale)

enum Account {
#define LMF_ACCOUNT(name) k_##name,
  LMF_BACKEND_OPS(LMF_ACCOUNT)
#undef LMF_ACCOUNT
  kAccounts
};
constexpr const char* kNames[kAccounts] = {
#define LMF_NAME(name) #name,
    LMF_BACKEND_OPS(LMF_NAME)
#undef LMF_NAME
};
// The ops, plus name, memory, matmul_precision (padded to a pointer), synchronize,
// peak_memory_bytes and the five of graphs: an op added to ops::Backend and not to the list fails
// here.
static_assert(sizeof(Be<float>) == (kAccounts + 10) * sizeof(void*),
              "ops::Backend changed: add the op to LMF_BACKEND_OPS");

struct Accounts {
  std::mutex mu;
  std::array<long, kAccounts> calls{};
  std::array<double, kAccounts> seconds{};
};
Accounts& accounts() {
  static Accounts a;
  return a;
}

void add(int account, double s) {
  Accounts& a = accounts();
  std::lock_guard lock(a.mu);
  ++a.calls[account];
  a.seconds[account] += s;
}

// The trampoline for op Member (account I): call the bound backend's op, wait for it, account.
// The table the trampolines of number type F call (bf16 storage profiles two: the layers' bf16
// table and the optimizer's float one, into the same accounts).
template <class F>
const Be<F>*& inner_of() {
  static const Be<F>* inner = nullptr;
  return inner;
}

template <class F, int I, auto Member, class T = decltype(Member)>
struct Timed;
template <class F, int I, auto Member, class R, class... A>
struct Timed<F, I, Member, R (*Be<F>::*)(A...)> {
  static R call(A... a) {
    const Be<F>& inner = *inner_of<F>();
    Timer t;
    if constexpr (std::is_void_v<R>) {
      (inner.*Member)(a...);
      inner.synchronize();
      add(I, t.seconds());
    } else {
      R r = (inner.*Member)(a...);
      inner.synchronize();
      add(I, t.seconds());
      return r;
    }
  }
};

}  // namespace

template <class F>
const ops::Backend<F>& profiled_backend(const ops::Backend<F>& inner) {
  static Be<F> table;
  {
    Accounts& a = accounts();
    std::lock_guard lock(a.mu);
    inner_of<F>() = &inner;
  }
  table = inner;  // name, memory, precision, synchronize, peak_memory_bytes
#define LMF_WRAP(name) table.name = &Timed<F, k_##name, &Be<F>::name>::call;
  LMF_BACKEND_OPS(LMF_WRAP)
#undef LMF_WRAP
  // Each op waits for its work to time it, which a graph's capture forbids: no graphs here.
  table.capture_begin = nullptr;
  table.capture_end = nullptr;
  table.graph_launch = nullptr;
  table.graph_free = nullptr;
  table.classifier_ce_last_sum = nullptr;
  return table;
}
template const ops::Backend<float>& profiled_backend(const ops::Backend<float>&);
template const ops::Backend<bf16>& profiled_backend(const ops::Backend<bf16>&);

std::vector<OpTime> op_profile() {
  Accounts& a = accounts();
  std::lock_guard lock(a.mu);
  std::vector<OpTime> r;
  for (int i = 0; i < kAccounts; ++i)
    if (a.calls[i] > 0) r.push_back({kNames[i], a.calls[i], a.seconds[i]});
  std::stable_sort(r.begin(), r.end(), [](const OpTime& x, const OpTime& y) { return x.seconds > y.seconds; });
  return r;
}

void reset_op_profile() {
  Accounts& a = accounts();
  std::lock_guard lock(a.mu);
  a.calls.fill(0);
  a.seconds.fill(0.0);
}

}  // namespace lmf
