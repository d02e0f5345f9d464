#pragma once
// Where an attention op's heads live: shared by the kernels of attention.cu and attention_tiled.cu.

namespace lmf::cuda::detail {

// As ops/cpu/attention.cpp: batch b starts T * ld further on, head h at h * hs within a row.
struct Heads {
  int B, T, NH, KVH, hs;
  int ldq, ldkv, ldo;  // row strides of q (and dq), k and v (and dk, dv), out (and dout)
  float scale;
};

}  // namespace lmf::cuda::detail
