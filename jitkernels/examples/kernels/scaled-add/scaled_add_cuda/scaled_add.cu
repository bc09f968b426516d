#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/all.h>

#include "dispatch_utils.h"

#ifndef SCALED_ADD_CUDA
#error "cuda-flags of [kernel.scaled_add] were not applied"
#endif

template <typename scalar_t>
__global__ void scaled_add_kernel(scalar_t *__restrict__ out, const scalar_t *__restrict__ x,
                                  const scalar_t *__restrict__ y, float alpha, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    // half/bfloat16 arithmetic needs the __CUDA_NO_HALF_OPERATORS__ defines removed, as kernel-builder does.
    out[i] = x[i] + static_cast<scalar_t>(alpha) * y[i];
  }
}

void scaled_add(torch::Tensor &out, torch::Tensor const &x, torch::Tensor const &y, double alpha) {
  TORCH_CHECK(x.is_cuda() && y.is_cuda() && out.is_cuda(), "scaled_add: CUDA tensors expected");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && out.is_contiguous(), "scaled_add: needs contiguous tensors");
  const int64_t n = x.numel();
  if (n == 0) return;
  const at::cuda::OptionalCUDAGuard device_guard(device_of(x));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  SCALED_ADD_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scaled_add_kernel", [&] {
    scaled_add_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), static_cast<float>(alpha), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
