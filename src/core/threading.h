#pragma once
// Thread count for OpenMP and OpenBLAS; one knob for both.
namespace lmf {
void set_num_threads(int n);  // n <= 0: leave the default (OMP_NUM_THREADS or all cores)
int num_threads();
}  // namespace lmf
