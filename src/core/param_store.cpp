#include "core/param_store.h"

namespace lmf {

template <class T>
size_t ParamStore<T>::add(std::string name, Shape shape, bool decay, Split split) {
  LMF_CHECK(params_.size() == 0, "ParamStore::add after allocate ({})", name);
  LMF_CHECK(!index_.contains(name), "duplicate parameter name {}", name);
  LMF_CHECK(split.dim < int(shape.size()) && split.chunks >= 1, "split of {}", name);
  ParamEntry e{std::move(name), std::move(shape), total_, 0, decay, split.dim, split.chunks};
  e.size = static_cast<size_t>(numel(e.shape));
  total_ += (e.size + kAlignElems - 1) / kAlignElems * kAlignElems;
  index_[e.name] = entries_.size();
  entries_.push_back(std::move(e));
  return entries_.size() - 1;
}

template <class T>
void ParamStore<T>::allocate() {
  params_.resize(total_);
  grads_.resize(total_);
}

template <class T>
void ParamStore<T>::place_on(const MemorySpace& space) {
  LMF_CHECK(allocated(), "ParamStore::place_on before allocate");
  if (space.host_accessible) return;  // the host buffers serve
  dparams_ = PagedArray<T>(space);
  dgrads_ = PagedArray<T>(space);
  dparams_.resize(total_);
  dgrads_.resize(total_);
  placed_ = true;
  upload_params();
}

template <class T>
long ParamStore<T>::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : static_cast<long>(it->second);
}

template <class T>
size_t ParamStore<T>::num_params() const {
  size_t n = 0;
  for (const auto& e : entries_) n += e.size;
  return n;
}

template class ParamStore<float>;
template class ParamStore<double>;

}  // namespace lmf
