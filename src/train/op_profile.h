#pragma once
// Where a training step's time goes, op by op, on any backend: a wrapper table around a backend
// (ops/backend.h) whose every op calls the real one, waits for it (Backend::synchronize) and adds
// the wall time to that op's account. On a GPU that serialises host and device, so the profiled
// step is slower than a plain one by the launch overlap it loses; each op's share is what its
// kernels cost, launch included. `lmforge bench --profile` prints the table.
#include <string>
#include <vector>

#include "ops/backend.h"

namespace lmf {

struct OpTime {
  std::string op;  // the Backend member, e.g. "matmul_forward"
  long calls = 0;
  double seconds = 0;
};

// The profiling table around `inner`. Its ops are static trampolines over one process-wide
// binding per number type: a later call rebinds them to its `inner` (profile one backend at a
// time; bf16 storage profiles its bf16 table and the float one beside it). The returned table has
// inner's name, memory and precision.
template <class F>
const ops::Backend<F>& profiled_backend(const ops::Backend<F>& inner);
// The ops called since the last reset, the most time first.
std::vector<OpTime> op_profile();
void reset_op_profile();

}  // namespace lmf
