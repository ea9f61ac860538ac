// CUDA implementation of the butterfly ops behind the plain-C++ interface of
// butterfly_cuda.h: element-type dispatch onto the kernel templates of
// butterfly_kernels.cuh. Includes no torch header, so `nvcc -c` compiles it on any
// machine with the CUDA toolkit (scripts/check_cuda_compile.sh).
#include "butterfly_cuda.h"
#include "butterfly_kernels.cuh"

namespace kaleidoscope {
namespace cuda {

const char* unsupported_reason(const Shape& shape, const Device& dev) { return unsupported_reason_impl(shape, dev); }

BackwardWorkspace backward_workspace(const Shape& shape, const Device& dev) {
  return detail::backward_workspace_impl(shape, dev);
}

cudaError_t forward(DType dtype, const Shape& shape, const void* input, Strides input_strides, const void* twiddle,
                    const void* bias, void* out, const Device& dev, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return detail::forward_typed<float>(shape, input, input_strides, twiddle, bias, out, dev, stream);
    case DType::kFloat16:
      return detail::forward_typed<__half>(shape, input, input_strides, twiddle, bias, out, dev, stream);
    case DType::kBFloat16:
      return detail::forward_typed<__nv_bfloat16>(shape, input, input_strides, twiddle, bias, out, dev, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t backward(DType dtype, const Shape& shape, const void* grad, const void* input, Strides input_strides,
                     const void* twiddle, void* grad_input, float* partial, float* scratch, const Device& dev,
                     cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return detail::backward_typed<float>(shape, grad, input, input_strides, twiddle, grad_input, partial, scratch,
                                           dev, stream);
    case DType::kFloat16:
      return detail::backward_typed<__half>(shape, grad, input, input_strides, twiddle, grad_input, partial, scratch,
                                            dev, stream);
    case DType::kBFloat16:
      return detail::backward_typed<__nv_bfloat16>(shape, grad, input, input_strides, twiddle, grad_input, partial,
                                                   scratch, dev, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace kaleidoscope
