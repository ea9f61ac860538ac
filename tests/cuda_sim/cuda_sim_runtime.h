// A CPU stand-in for the few CUDA runtime features the butterfly kernels use, so that
// csrc/cuda/butterfly_kernels.cuh can be executed and checked without a GPU:
// every CUDA thread of a block is a std::thread, __syncthreads is a std::barrier, shared
// memory is one buffer per block, blocks run one after another. Warp-level behaviour
// (shuffles, warp-synchronous code) is not modelled; the kernels use none.
#pragma once
#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstring>
#include <thread>
#include <vector>

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float4 {
  float x, y, z, w;
};

namespace ks_sim {
inline thread_local dim3 thread_idx;
inline dim3 block_idx, block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<float4> shared_mem;  // float4: the alignment CUDA gives dynamic shared memory

// Runs kernel(args...) on every thread of every block. One std::thread per CUDA thread of a
// block, reused for all blocks in turn (the kernel's __syncthreads share the block barrier).
template <typename... P, typename... A>
void launch(dim3 grid, dim3 block, size_t smem_bytes, void (*kernel)(P...), const A&... args) {
  grid_dim = grid;
  block_dim = block;
  const unsigned nthreads = block.x * block.y * block.z;
  std::barrier<> bar(nthreads);
  block_barrier = &bar;
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    threads.emplace_back([&, t] {
      thread_idx = dim3(t);
      for (unsigned b = 0; b < grid.x; ++b) {
        if (t == 0) {
          block_idx = dim3(b);
          // Exact size (out-of-bounds shows under ASan) and garbage, not zeros: kernels must
          // not rely on shared memory starting cleared.
          std::vector<float4>((smem_bytes + 15) / 16, float4{1e30f, -7.f, 3.f, 1e-30f}).swap(shared_mem);
        }
        bar.arrive_and_wait();
        kernel(args...);
        bar.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
}

inline cudaError_t last_error() { return cudaSuccess; }
}  // namespace ks_sim

#define threadIdx ks_sim::thread_idx
#define blockIdx ks_sim::block_idx
#define blockDim ks_sim::block_dim
#define gridDim ks_sim::grid_dim
#define KS_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(ks_sim::shared_mem.data())

inline void __syncthreads() { ks_sim::block_barrier->arrive_and_wait(); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
