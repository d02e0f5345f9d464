// Loading cuBLAS and cuBLASLt on demand (cublas_api.h).
#include "ops/cuda/cublas_api.h"

#include <string>

#include "core/error.h"
#include "ops/cuda/ops_cuda.h"

#ifndef LMF_CUDA_EMU
#include <dlfcn.h>
#include <link.h>
#endif

namespace lmf::cuda {
namespace {

#define LMF_CUBLAS_NAME_(f) #f
#define LMF_CUBLAS_NAME(f) LMF_CUBLAS_NAME_(f)  // after cublas_v2.h's macros: cublasCreate_v2

// The entry points and where they came from (cublas_libraries).
struct Loaded {
  CublasApi api;
  std::string where;
};

#ifdef LMF_CUDA_EMU

Loaded load() {
  Loaded l;
  l.where = "the CPU emulation";
  CublasApi& a = l.api;
#define LMF_BIND(member, fn) a.member = &::fn;
  LMF_CUBLAS_ENTRIES(LMF_BIND)
#undef LMF_BIND
  a.GemmEx = static_cast<CublasGemmEx>(&::cublasGemmEx);
  return l;
}

#else

// libNAME.so.<cuBLAS major>, found as dlopen finds it, else in the build's CUDA library directory.
void* open_library(const char* stem, std::string& where) {
  const std::string name = std::string(stem) + ".so." + std::to_string(CUBLAS_VER_MAJOR);
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  std::string why = lib ? "" : dlerror();
#ifdef LMF_CUDA_LIBRARY_DIR
  if (!lib) lib = dlopen((std::string(LMF_CUDA_LIBRARY_DIR) + "/" + name).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
  if (!lib)
    throw UserError("the CUDA backend needs {}, which was not found ({}); install CUDA {}'s cuBLAS or add its "
                    "directory to LD_LIBRARY_PATH",
                    name, why, CUBLAS_VER_MAJOR);
  link_map* map = nullptr;
  if (dlinfo(lib, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name) {
    if (!where.empty()) where += ";";
    where += map->l_name;
  }
  return lib;
}

Loaded load() {
  Loaded l;
  void* lt = open_library("libcublasLt", l.where);  // libcublas needs it
  void* blas = open_library("libcublas", l.where);
  CublasApi& a = l.api;
  auto bind = [&](auto& fn, const char* name) {
    void* f = dlsym(std::string(name).rfind("cublasLt", 0) == 0 ? lt : blas, name);
    if (!f) throw UserError("the cuBLAS library loaded ({}) has no {}", l.where, name);
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(f);
  };
#define LMF_BIND(member, fn) bind(a.member, LMF_CUBLAS_NAME(fn));
  LMF_CUBLAS_ENTRIES(LMF_BIND)
#undef LMF_BIND
  bind(a.GemmEx, "cublasGemmEx");
  return l;
}

#endif

const Loaded& loaded() {
  static const Loaded l = load();  // a throw leaves it unset: the next call tries again
  return l;
}

}  // namespace

const CublasApi& cublas() { return loaded().api; }

std::string cublas_libraries() { return loaded().where; }

}  // namespace lmf::cuda
