// A CPU stand-in for the few CUDA runtime features the butterfly kernels use, so that
// csrc/cuda/butterfly_kernels.cuh can be executed and checked without a GPU: shared memory
// is one buffer per block, blocks run one after another, and the CUDA threads of a block run
// in one of two modes:
//  * Mode::kFibers (default): each CUDA thread is a ucontext fiber on one OS thread; between
//    two __syncthreads the fibers run one after another, in increasing or (kFibersReversed)
//    decreasing thread order. A missing barrier then shows as a wrong result in at least one
//    of the two orders; divergent barriers are reported. Fast and deterministic.
//  * Mode::kThreads: each CUDA thread is a std::thread and __syncthreads a std::barrier: real
//    concurrency, so unsynchronised read-modify-writes (a missing atomicAdd) can show. Slow.
// Warp-level behaviour (shuffles, warp-synchronous code) is not modelled; the kernels use none.
#pragma once
#include <ucontext.h>

#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
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
struct float2 {
  float x, y;
};
struct uint2 {
  unsigned x, y;
};

// Emulated CUDA half types: the storage format (16 bits) and the conversions the kernels use,
// rounding to nearest even like __float2half_rn / __float2bfloat16_rn, so that the simulation
// executes the kernels' half load/store code with the same rounding as the GPU.
struct __half {
  _Float16 v;
};
struct __half2 {
  __half x, y;
};
struct __nv_bfloat16 {
  unsigned short bits;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }  // IEEE: nearest even
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float __bfloat162float(__nv_bfloat16 b) {
  const unsigned bits = static_cast<unsigned>(b.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  unsigned bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return {static_cast<unsigned short>((bits >> 16) | 0x40u)};  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return {static_cast<unsigned short>(bits >> 16)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {__bfloat162float(b.x), __bfloat162float(b.y)}; }

namespace ks_sim {
enum class Mode { kFibers, kFibersReversed, kThreads };
inline Mode mode = Mode::kFibers;

inline thread_local dim3 thread_idx;
inline dim3 block_idx, block_dim, grid_dim;
inline std::vector<float4> shared_mem;  // float4: the alignment CUDA gives dynamic shared memory

// Threads mode.
inline std::barrier<>* block_barrier = nullptr;

// Fibers mode.
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};
inline ucontext_t scheduler_ctx;
inline std::vector<Fiber> fibers;
inline unsigned current_fiber = 0;
inline std::function<void()> fiber_body;

inline void fiber_entry() {
  fiber_body();
  fibers[current_fiber].done = true;  // returns to uc_link = scheduler
}

inline void new_block_shared_memory(size_t smem_bytes) {
  // Exact size (out-of-bounds shows under ASan) and garbage, not zeros: kernels must not
  // rely on shared memory starting cleared.
  std::vector<float4>((smem_bytes + 15) / 16, float4{1e30f, -7.f, 3.f, 1e-30f}).swap(shared_mem);
}

inline void sync_threads() {
  if (mode == Mode::kThreads) {
    block_barrier->arrive_and_wait();
  } else {
    swapcontext(&fibers[current_fiber].ctx, &scheduler_ctx);
  }
}

// Runs kernel(args...) on every thread of every block.
template <typename... P, typename... A>
void launch(dim3 grid, dim3 block, size_t smem_bytes, void (*kernel)(P...), const A&... args) {
  grid_dim = grid;
  block_dim = block;
  const unsigned nthreads = block.x * block.y * block.z;
  if (mode == Mode::kThreads) {
    // One std::thread per CUDA thread, reused for all blocks in turn.
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
            new_block_shared_memory(smem_bytes);
          }
          bar.arrive_and_wait();
          kernel(args...);
          bar.arrive_and_wait();
        }
      });
    }
    for (auto& th : threads) th.join();
    return;
  }
  fiber_body = [&] { kernel(args...); };
  for (unsigned b = 0; b < grid.x; ++b) {
    block_idx = dim3(b);
    new_block_shared_memory(smem_bytes);
    fibers.assign(nthreads, Fiber{});
    for (Fiber& f : fibers) {
      f.stack.resize(256 * 1024);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &scheduler_ctx;
      makecontext(&f.ctx, fiber_entry, 0);
    }
    // One round = every fiber runs up to its next __syncthreads (or its end).
    for (;;) {
      unsigned finished = 0;
      for (unsigned i = 0; i < nthreads; ++i) {
        const unsigned t = mode == Mode::kFibersReversed ? nthreads - 1 - i : i;
        if (fibers[t].done) {
          ++finished;
          continue;
        }
        current_fiber = t;
        thread_idx = dim3(t);
        swapcontext(&scheduler_ctx, &fibers[t].ctx);
        finished += fibers[t].done;
      }
      if (finished == nthreads) break;
      if (finished != 0) {
        std::fprintf(stderr, "cuda_sim: threads of block %u reached different numbers of __syncthreads\n", b);
        std::abort();
      }
    }
  }
}

inline cudaError_t last_error() { return cudaSuccess; }
}  // namespace ks_sim

#define threadIdx ks_sim::thread_idx
#define blockIdx ks_sim::block_idx
#define blockDim ks_sim::block_dim
#define gridDim ks_sim::grid_dim
#define KS_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(ks_sim::shared_mem.data())

inline void __syncthreads() { ks_sim::sync_threads(); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
