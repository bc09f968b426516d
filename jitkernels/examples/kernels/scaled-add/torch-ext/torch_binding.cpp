#include <torch/library.h>

#include "registration.h"
#include "torch_binding.h"

TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, ops) {
  ops.def("scaled_add(Tensor! out, Tensor x, Tensor y, float alpha) -> ()");
#if defined(CPU_KERNEL)
  ops.impl("scaled_add", torch::kCPU, &scaled_add);
#elif defined(CUDA_KERNEL)
  ops.impl("scaled_add", torch::kCUDA, &scaled_add);
#endif
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
