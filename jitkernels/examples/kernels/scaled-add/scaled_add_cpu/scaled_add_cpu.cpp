#include <torch/torch.h>

#include "scaled_add_cpu.hpp"

#ifndef SCALED_ADD_OPENMP
#error "cxx-flags of [kernel.scaled_add_cpu] were not applied"
#endif
#ifdef SCALED_ADD_CUDA
#error "cuda-flags of another kernel leaked into a C++ file"
#endif

namespace scaled_add_cpu {
void scaled_add_float(float *out, const float *x, const float *y, float alpha, int64_t n) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) {
    out[i] = x[i] + alpha * y[i];
  }
}
}  // namespace scaled_add_cpu

void scaled_add(torch::Tensor &out, torch::Tensor const &x, torch::Tensor const &y, double alpha) {
  TORCH_CHECK(x.sizes() == y.sizes() && x.sizes() == out.sizes(), "scaled_add: shapes differ");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && out.is_contiguous(), "scaled_add: needs contiguous tensors");
  if (x.scalar_type() == torch::kFloat) {
    scaled_add_cpu::scaled_add_float(out.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(),
                                     static_cast<float>(alpha), x.numel());
  } else {
    out.copy_(x + alpha * y);
  }
}
