// Torch side of the CUDA butterfly ops: argument checks, dtype mapping, allocation,
// device guard and current stream, registration under the CUDA dispatch key. The
// kernels themselves (butterfly_cuda.cu) see only raw pointers. Compiled only in CUDA
// builds (setup.py, KALEIDOSCOPE_CUDA).
// Only c10/cuda headers (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE): the
// glue then compiles against torch's headers and the bare CUDA runtime headers.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>

#include "../butterfly_checks.h"
#include "butterfly_cuda.h"

namespace kaleidoscope {
namespace {

// Twiddle, bias and input share one dtype (check_butterfly_args); arithmetic is float32.
cuda::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return cuda::DType::kFloat32;
    case at::kHalf:
      return cuda::DType::kFloat16;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "butterfly_multiply (CUDA): dtype ", t.scalar_type(),
                       " is not supported; use float32, float16 or bfloat16");
  }
}

cuda::Device device_info(c10::DeviceIndex index) {
  int sms = 0, smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, index));
  return {sms, smem};
}

cuda::Shape shape_of(const at::Tensor& twiddle, const at::Tensor& input, bool increasing_stride) {
  return {input.size(0), input.size(1), static_cast<int>(twiddle.size(2)), static_cast<int>(twiddle.size(1)),
          increasing_stride};
}

cuda::Strides strides_of(const at::Tensor& input) { return {input.stride(0), input.stride(1), input.stride(2)}; }

// The kernels read each 2x2 twiddle with one 16-byte (float) or 8-byte (half) load.
at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<std::uintptr_t>(c.const_data_ptr()) % 16 != 0) c = c.clone(at::MemoryFormat::Contiguous);
  return c;
}

void check_supported(const cuda::Shape& shape, const cuda::Device& dev) {
  const char* why = cuda::unsupported_reason(shape, dev);
  TORCH_CHECK_VALUE(why == nullptr, "butterfly_multiply (CUDA): ", why, " (n = ", shape.n(),
                    ", nstacks = ", shape.nstacks, ")");
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA): kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor butterfly_multiply_cuda(const at::Tensor& twiddle, const at::Tensor& input,
                                   const std::optional<at::Tensor>& bias, bool increasing_stride) {
  check_butterfly_args(twiddle, input, bias);
  TORCH_CHECK(input.is_cuda(), "butterfly_multiply (CUDA): input must be a CUDA tensor");
  const cuda::DType dtype = dtype_of(input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const cuda::Shape shape = shape_of(twiddle, input, increasing_stride);
  const cuda::Device dev = device_info(input.device().index());
  check_supported(shape, dev);
  const at::Tensor tw = aligned_contiguous(twiddle);
  const at::Tensor bs = bias.has_value() ? bias->contiguous() : at::Tensor();
  check_launch(cuda::forward(dtype, shape, input.const_data_ptr(), strides_of(input), tw.const_data_ptr(),
                             bs.defined() ? bs.const_data_ptr() : nullptr, out.mutable_data_ptr(), dev,
                             c10::cuda::getCurrentCUDAStream()),
               "butterfly_multiply");
  return out;
}

std::tuple<at::Tensor, at::Tensor> butterfly_multiply_backward_cuda(const at::Tensor& grad, const at::Tensor& twiddle,
                                                                    const at::Tensor& input, bool increasing_stride) {
  check_butterfly_backward_args(grad, twiddle, input);
  TORCH_CHECK(input.is_cuda(), "butterfly_multiply_backward (CUDA): input must be a CUDA tensor");
  const cuda::DType dtype = dtype_of(input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_input.numel() == 0) return {at::zeros_like(twiddle, at::MemoryFormat::Contiguous), grad_input};
  const cuda::Shape shape = shape_of(twiddle, input, increasing_stride);
  const cuda::Device dev = device_info(input.device().index());
  check_supported(shape, dev);
  const cuda::BackwardWorkspace ws = cuda::backward_workspace(shape, dev);
  const at::TensorOptions f32 = input.options().dtype(at::kFloat);
  at::Tensor partial = at::zeros({ws.partial_floats}, f32);
  at::Tensor scratch = at::empty({std::max<int64_t>(ws.scratch_floats, 1)}, f32);
  const at::Tensor go = grad.contiguous();
  const at::Tensor tw = aligned_contiguous(twiddle);
  check_launch(cuda::backward(dtype, shape, go.const_data_ptr(), input.const_data_ptr(), strides_of(input),
                              tw.const_data_ptr(), grad_input.mutable_data_ptr(), partial.mutable_data_ptr<float>(),
                              scratch.mutable_data_ptr<float>(), dev, c10::cuda::getCurrentCUDAStream()),
               "butterfly_multiply_backward");
  // One float32 sum over the per-block partial sums, rounded once to the twiddle dtype.
  at::Tensor grad_twiddle =
      partial.view({ws.blocks_per_stack, -1}).sum(0).view(twiddle.sizes()).to(twiddle.scalar_type());
  return {grad_twiddle, grad_input};
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CUDA, m) {
  m.impl("butterfly_multiply", &butterfly_multiply_cuda);
  m.impl("butterfly_multiply_backward", &butterfly_multiply_backward_cuda);
}

}  // namespace kaleidoscope
