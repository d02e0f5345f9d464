#pragma once
// One flat parameter buffer and one flat gradient buffer, described by a registry of
// (name, shape, offset). Layers hold pointers into it; optimizers, clipping, checkpoints and
// (later) sharding walk the registry. Offsets are rounded up to 16 elements (64 bytes for
// float) so that every tensor starts on a cache line.
#include <string>
#include <unordered_map>
#include <vector>

#include "core/memory.h"
#include "core/page_buffer.h"
#include "core/paged_array.h"
#include "core/tensor.h"

namespace lmf {

struct ParamEntry {
  std::string name;  // Hugging Face style name, e.g. "transformer.h.0.attn.c_attn.weight"
  Shape shape;
  size_t offset = 0;  // in elements, into the flat buffers
  size_t size = 0;    // numel(shape)
  bool decay = true;  // AdamW weight decay applies (matrices); not for biases, norms
  // Tensor parallelism: a model built for a tensor-parallel group registers each rank's part of
  // the tensor, and `shape` is that part's. split_dim < 0: the whole tensor, the same on every
  // rank of the group (norms, embeddings, row-parallel biases). Otherwise dimension split_dim of
  // the whole tensor is split_chunks equal consecutive chunks (3 for GPT-2's packed q|k|v), and
  // rank r holds the r-th of the group's equal parts of every chunk, chunk after chunk.
  int split_dim = -1;
  int split_chunks = 1;
};

// How a tensor is divided among tensor-parallel ranks (see ParamEntry::split_dim).
struct Split {
  int dim = -1;
  int chunks = 1;
};

template <class T>
class ParamStore {
 public:
  static constexpr size_t kAlignElems = 16;

  // Registers a tensor; valid until allocate(). Returns its index in the registry.
  size_t add(std::string name, Shape shape, bool decay, Split split = {});
  // Allocates params and grads (zeroed). After this, no more add().
  void allocate();

  bool allocated() const { return params_.size() > 0 || entries_.empty(); }
  const std::vector<ParamEntry>& entries() const { return entries_; }
  const ParamEntry& entry(size_t i) const { return entries_[i]; }
  // Index of `name`, or -1.
  long find(const std::string& name) const;

  T* param(size_t i) { return params_.data() + entries_[i].offset; }
  const T* param(size_t i) const { return params_.data() + entries_[i].offset; }
  T* grad(size_t i) { return grads_.data() + entries_[i].offset; }

  // The copy the ops compute on. By default the host buffers above; after place_on() with a
  // device's memory, a second pair of buffers there, which the model's layers are bound to.
  // The host buffers stay the copy that initialisation, loading, saving and the collectives
  // use: upload_params() after writing the host parameters, download_params() (or
  // download_grads()) before reading them.
  void place_on(const MemorySpace& space);
  bool on_device() const { return placed_; }
  T* dev_param(size_t i) { return dev_params() + entries_[i].offset; }
  const T* dev_param(size_t i) const { return dev_params() + entries_[i].offset; }
  T* dev_grad(size_t i) { return dev_grads() + entries_[i].offset; }
  T* dev_params() { return placed_ ? dparams_.data() : params_.data(); }
  const T* dev_params() const { return placed_ ? dparams_.data() : params_.data(); }
  T* dev_grads() { return placed_ ? dgrads_.data() : grads_.data(); }
  const T* dev_grads() const { return placed_ ? dgrads_.data() : grads_.data(); }
  // upload_params commits the whole device copy first (ZeRO 3 releases it again);
  // download_params and download_grads bring released values as zeros.
  void upload_params() {
    if (!placed_) return;
    dparams_.commit(0, total_);
    dparams_.upload(params_.data(), total_);
  }
  void download_params() {
    if (placed_) dparams_.download(params_.data(), total_);
  }
  void download_grads() {
    if (placed_) dgrads_.download(grads_.data(), total_);
  }

  T* params() { return params_.data(); }
  const T* params() const { return params_.data(); }
  T* grads() { return grads_.data(); }
  const T* grads() const { return grads_.data(); }
  size_t flat_size() const { return total_; }  // including alignment padding
  size_t num_params() const;                   // sum of numel, no padding
  void zero_grad() {  // the gradients the ops accumulate into (dev_grads)
    if (placed_)
      dgrads_.zero();
    else
      grads_.zero();
  }
  // ZeRO stage 3: values [lo, hi) of the parameters / gradients become zero (in the host copy
  // and the device copy alike), and the pages (device: granules, core/paged_array.h) wholly
  // inside go back until next written (host) or committed (device).
  void release_params(size_t lo, size_t hi) {
    params_.release(lo, hi);
    if (placed_) dparams_.release(lo, hi);
  }
  void release_grads(size_t lo, size_t hi) {
    grads_.release(lo, hi);
    if (placed_) dgrads_.release(lo, hi);
  }
  // Before the ops write or read a released range of the compute copy: a device cannot fault
  // memory in on first touch as the host does (nothing to do on the host).
  void commit_params(size_t lo, size_t hi) {
    if (placed_) dparams_.commit(lo, hi);
  }
  void commit_grads(size_t lo, size_t hi) {
    if (placed_) dgrads_.commit(lo, hi);
  }
  // Bytes of the compute copy's parameter and gradient buffers resident in memory now.
  size_t resident_bytes() const {
    if (placed_) return dparams_.resident_bytes() + dgrads_.resident_bytes();
    return (params_.resident_pages() + grads_.resident_pages()) * PageBuffer<T>::page();
  }

 private:
  std::vector<ParamEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
  size_t total_ = 0;
  PageBuffer<T> params_, grads_;
  bool placed_ = false;
  PagedArray<T> dparams_, dgrads_;  // place_on()'s copies
};

extern template class ParamStore<float>;
extern template class ParamStore<double>;

}  // namespace lmf
