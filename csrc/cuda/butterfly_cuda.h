// Interface between the torch glue (butterfly_cuda_glue.cpp) and the CUDA kernels
// (butterfly_cuda.cu). Plain C++ on purpose: raw pointers, sizes, strides and a stream,
// so the kernels compile with nvcc alone (no torch headers) and the glue with any C++
// compiler. Conventions: fairseq_kaleidoscope/kmatrix/reference.py.
#pragma once
#include <cstdint>

#ifdef KALEIDOSCOPE_CUDA_SIM
#include "cuda_sim_runtime.h"  // CPU simulation of the CUDA runtime (tests/cuda_sim)
#else
#include <cuda_runtime_api.h>
#endif

namespace kaleidoscope {
namespace cuda {

// Element type of input, twiddle, bias and outputs (all the same). Arithmetic is float32.
enum class DType { kFloat32, kFloat16, kBFloat16 };

struct Shape {
  int64_t batch;      // input.size(0)
  int64_t nstacks;    // input.size(1)
  int log_n;          // n = 1 << log_n
  int nbutterflies;   // twiddle.size(1)
  bool increasing_stride;
  int64_t n() const { return int64_t{1} << log_n; }
};

// Element strides of input (batch, nstacks, n); any non-negative values (0 for expanded dims).
struct Strides {
  int64_t batch, stack, elem;
};

struct Device {
  int num_sms;               // multiProcessorCount
  int64_t max_smem_optin;    // sharedMemPerBlockOptin, bytes
};

// Largest supported n. Larger n needs more shared memory per row than a block can get.
constexpr int kMaxLogN = 13;

// nullptr if the kernels can run this shape on this device, else the reason.
const char* unsupported_reason(const Shape& shape, const Device& dev);

// out (batch, nstacks, n), contiguous = butterflies(input) + bias.
// twiddle: contiguous, 16-byte aligned. bias: contiguous (nstacks, n) or nullptr.
cudaError_t forward(DType dtype, const Shape& shape, const void* input, Strides input_strides, const void* twiddle,
                    const void* bias, void* out, const Device& dev, cudaStream_t stream);

// Float32 workspace the backward needs, allocated by the caller.
struct BackwardWorkspace {
  int64_t blocks_per_stack;  // P: thread blocks per stack (each owns one partial slot)
  int64_t partial_floats;    // (P, nstacks * twiddle_per_stack) twiddle-gradient partial sums; must be zeroed
  int64_t scratch_floats;    // butterfly inputs kept for the backward pass; uninitialised is fine
};
BackwardWorkspace backward_workspace(const Shape& shape, const Device& dev);

// grad: contiguous (batch, nstacks, n). Writes grad_input (contiguous, dtype) and accumulates
// twiddle-gradient partial sums into `partial`; grad_twiddle = partial.view(P, -1).sum(0).
cudaError_t backward(DType dtype, const Shape& shape, const void* grad, const void* input, Strides input_strides,
                     const void* twiddle, void* grad_input, float* partial, float* scratch, const Device& dev,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace kaleidoscope
