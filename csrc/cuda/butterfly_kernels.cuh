// CUDA kernels of the butterfly ops and their launchers, as templates over the element
// type. Only CUDA headers here (no torch), so `nvcc -c` compiles them anywhere; the
// same source also runs on the CPU under tests/cuda_sim (KALEIDOSCOPE_CUDA_SIM), which
// emulates blocks, threads, __syncthreads and shared memory.
//
// Scheme (geometry in butterfly_plan.h): a thread keeps E = 2^LOG_E values of each of its
// R rows in registers. Which E values it holds is a "window" of LOG_E consecutive index
// bits [c, c + LOG_E): value j of lane t is element
//     ((t >> c) << (c + LOG_E)) | (j << c) | (t & (2^c - 1)),
// so every factor whose stride bit k lies in the window pairs values of the same thread
// and runs in registers (twiddles read once per R rows). When the next factor's stride
// is outside the window, the tile goes through shared memory once (a "transpose") into
// the window containing it: about ceil(log2(n) / LOG_E) shared-memory round trips per
// butterfly instead of one per factor. All factors of all butterflies run in one launch.
//
// Backward: per tile, the inputs of butterflies 1..nb-1 are recomputed and kept in a
// small per-block global scratch (L2-resident); then the butterflies are walked backwards,
// each segment (run of factors in one window) recomputing its input from the saved
// butterfly input (recompute, not per-factor storage: no activation memory beyond one row
// per butterfly). Twiddle gradients: per thread summed over its R rows, then over the
// block's row groups in a shared-memory accumulator, then added (plain load/store, no
// atomics) into this block's own float32 slot of a (P, twiddle) buffer; the caller sums the
// P slots. Arithmetic is float32 for every element type.
#pragma once

#include "butterfly_plan.h"

#ifndef KALEIDOSCOPE_CUDA_SIM
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define KS_DYNAMIC_SMEM(type, name) \
  extern __shared__ float4 ks_dynamic_smem[]; /* float4: 16-byte aligned */ \
  type* name = reinterpret_cast<type*>(ks_dynamic_smem)
#define KS_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define KS_SET_MAX_SMEM(kernel, bytes) \
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes))
#define KS_UNROLL _Pragma("unroll")
#else
#define KS_LAUNCH(kernel, grid, block, smem, stream, ...) ((void)(stream), ks_sim::launch(grid, block, smem, kernel, __VA_ARGS__))
#define KS_SET_MAX_SMEM(kernel, bytes) cudaSuccess
#define KS_UNROLL
#endif

namespace kaleidoscope {
namespace cuda {
namespace detail {

// ---- element type <-> float ----------------------------------------------------------
template <typename T>
struct Io;

template <>
struct Io<float> {
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
  // The 2x2 twiddle [[a, b], [c, d]] of one pair; p is 16-byte aligned.
  static __device__ __forceinline__ void load4(const float* p, float& a, float& b, float& c, float& d) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    a = t.x, b = t.y, c = t.z, d = t.w;
  }
};

// (tests/cuda_sim emulates __half and __nv_bfloat16, so the simulation runs these too.)
template <>
struct Io<__half> {
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
  static __device__ __forceinline__ void load4(const __half* p, float& a, float& b, float& c, float& d) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);  // 8-byte aligned
    const float2 ab = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 cd = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    a = ab.x, b = ab.y, c = cd.x, d = cd.y;
  }
};

template <>
struct Io<__nv_bfloat16> {
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
  static __device__ __forceinline__ void load4(const __nv_bfloat16* p, float& a, float& b, float& c, float& d) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const float2 ab = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 cd = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    a = ab.x, b = ab.y, c = cd.x, d = cd.y;
  }
};

// ---- kernel arguments ------------------------------------------------------------------
struct Args {
  const void* input;
  Strides in_st;
  const void* twiddle;  // contiguous (nstacks, nb, log_n, n/2, 2, 2)
  const void* bias;     // forward: contiguous (nstacks, n) or nullptr
  void* out;            // forward: output; backward: grad_input (both contiguous)
  const void* grad;     // backward: contiguous (batch, nstacks, n)
  float* partial;       // backward: (P, nstacks, twiddle_per_stack)
  float* scratch;       // backward: (nstacks * P, nb - 1, RT, n)
  int64_t batch, nstacks;
  int log_n, nb;
  bool increasing;
  int64_t tiles, blocks_per_stack;
  int groups;
};

// Index bookkeeping of one thread. Everything here is uniform across the block except
// `lane` and `group`, so control flow (and every __syncthreads) is uniform.
template <int LOG_E, int R>
struct Ctx {
  static constexpr int E = 1 << LOG_E;
  int log_n, n, npad, nb;
  bool increasing;
  int lane, group;
  int tile_rows;
  float* tbuf;  // tile_rows x npad floats

  __device__ __forceinline__ static int pad(int i) { return i + (i >> 5); }

  // Stride bit k of the j-th factor of butterfly b.
  __device__ __forceinline__ int factor_k(int b, int j) const {
    const bool inc = increasing != ((b & 1) == 1);
    return inc ? j : log_n - 1 - j;
  }
  __device__ __forceinline__ int window_of(int k) const {
    const int c = (k / LOG_E) * LOG_E;  // windows [0, LOG_E), [LOG_E, 2 LOG_E), ..., last one clamped
    return c < log_n - LOG_E ? c : log_n - LOG_E;
  }
  __device__ __forceinline__ static bool in_window(int k, int c) { return k >= c && k < c + LOG_E; }
  __device__ __forceinline__ int elem(int j, int c) const {
    return ((lane >> c) << (c + LOG_E)) | (j << c) | (lane & ((1 << c) - 1));
  }

  // Shared-memory discipline: every write phase is bracketed by __syncthreads, so reads
  // need no barrier of their own and never race with a write.
  __device__ __forceinline__ void regs_from_tbuf(float (&v)[R][E], int c) const {
    KS_UNROLL
    for (int r = 0; r < R; ++r) {
      const float* row = tbuf + (group * R + r) * npad;
      KS_UNROLL
      for (int j = 0; j < E; ++j) v[r][j] = row[pad(elem(j, c))];
    }
  }
  __device__ __forceinline__ void regs_to_tbuf(const float (&v)[R][E], int c) const {
    __syncthreads();
    KS_UNROLL
    for (int r = 0; r < R; ++r) {
      float* row = tbuf + (group * R + r) * npad;
      KS_UNROLL
      for (int j = 0; j < E; ++j) row[pad(elem(j, c))] = v[r][j];
    }
    __syncthreads();
  }
  // Moves v from window c to the window containing stride bit k, if needed.
  __device__ __forceinline__ void ensure_window(float (&v)[R][E], int& c, int k) const {
    if (in_window(k, c)) return;
    regs_to_tbuf(v, c);
    c = window_of(k);
    regs_from_tbuf(v, c);
  }
  __device__ __forceinline__ void change_window(float (&v)[R][E], int& c, int c_new) const {
    if (c == c_new) return;
    regs_to_tbuf(v, c);
    c = c_new;
    regs_from_tbuf(v, c);
  }

  // Tile rows rr < rows_valid of a (rows, n) source, element (rr, i) at base[rr*row_st + i*elem_st],
  // into tbuf as float; rows past rows_valid are zero.
  template <typename S>
  __device__ __forceinline__ void stage_in(const S* base, int64_t row_st, int64_t elem_st, int64_t rows_valid) const {
    __syncthreads();
    const int total = tile_rows << log_n;
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
      const int rr = idx >> log_n, i = idx & (n - 1);
      float v = 0.f;
      if (rr < rows_valid) v = Io<S>::load(base + rr * row_st + i * elem_st);
      tbuf[rr * npad + pad(i)] = v;
    }
    __syncthreads();
  }
  // tbuf rows rr < rows_valid (plus bias[i] if given) to dst[rr*row_st + i].
  template <typename D>
  __device__ __forceinline__ void stage_out(D* base, int64_t row_st, int64_t rows_valid, const D* bias) const {
    const int total = tile_rows << log_n;
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
      const int rr = idx >> log_n, i = idx & (n - 1);
      if (rr >= rows_valid) continue;
      float v = tbuf[rr * npad + pad(i)];
      if (bias != nullptr) v += Io<D>::load(bias + i);
      Io<D>::store(base + rr * row_st + i, v);
    }
  }
};

// Pair index of element i (bit k clear) in a factor of stride 2^k.
__device__ __forceinline__ int pair_index(int i, int k) { return ((i >> (k + 1)) << k) | (i & ((1 << k) - 1)); }

// One factor (stride bit k = c + B) on register values.
template <typename T, int LOG_E, int R, int B>
__device__ __forceinline__ void apply_factor(const Ctx<LOG_E, R>& cx, float (&v)[R][1 << LOG_E], const T* tw, int c) {
  constexpr int E = 1 << LOG_E;
  const int k = c + B;
  KS_UNROLL
  for (int j = 0; j < E; ++j) {
    if (j & (1 << B)) continue;
    const int j2 = j | (1 << B);
    const int p = pair_index(cx.elem(j, c), k);
    float a, b, cc, d;
    Io<T>::load4(tw + 4 * p, a, b, cc, d);
    KS_UNROLL
    for (int r = 0; r < R; ++r) {
      const float u = v[r][j], w = v[r][j2];
      v[r][j] = a * u + b * w;
      v[r][j2] = cc * u + d * w;
    }
  }
}

// Backward of one factor: g (grad of its output) becomes the grad of its input x;
// twiddle gradients summed over this thread's rows go into the shared accumulator.
template <typename T, int LOG_E, int R, int B>
__device__ __forceinline__ void backward_factor(const Ctx<LOG_E, R>& cx, const float (&x)[R][1 << LOG_E],
                                                float (&g)[R][1 << LOG_E], const T* tw, int c, float* acc,
                                                bool shared_pairs) {
  constexpr int E = 1 << LOG_E;
  const int k = c + B;
  KS_UNROLL
  for (int j = 0; j < E; ++j) {
    if (j & (1 << B)) continue;
    const int j2 = j | (1 << B);
    const int p = pair_index(cx.elem(j, c), k);
    float a, b, cc, d;
    Io<T>::load4(tw + 4 * p, a, b, cc, d);
    float da = 0.f, db = 0.f, dc = 0.f, dd = 0.f;
    KS_UNROLL
    for (int r = 0; r < R; ++r) {
      const float u = x[r][j], w = x[r][j2], gi = g[r][j], gj = g[r][j2];
      da += gi * u;
      db += gi * w;
      dc += gj * u;
      dd += gj * w;
      g[r][j] = a * gi + cc * gj;
      g[r][j2] = b * gi + d * gj;
    }
    float* ap = acc + 4 * p;
    if (shared_pairs) {  // other row groups of the block hold the same pairs
      atomicAdd(ap + 0, da);
      atomicAdd(ap + 1, db);
      atomicAdd(ap + 2, dc);
      atomicAdd(ap + 3, dd);
    } else {
      ap[0] += da, ap[1] += db, ap[2] += dc, ap[3] += dd;
    }
  }
}

// Runtime stride bit -> compile-time register indexing (bits >= LOG_E never occur).
template <typename T, int LOG_E, int R>
__device__ __forceinline__ void apply_factor_at(const Ctx<LOG_E, R>& cx, float (&v)[R][1 << LOG_E], const T* tw,
                                                int c, int k) {
  switch (k - c) {
    case 0:
      apply_factor<T, LOG_E, R, 0>(cx, v, tw, c);
      break;
    case 1:
      if constexpr (LOG_E > 1) apply_factor<T, LOG_E, R, 1>(cx, v, tw, c);
      break;
    case 2:
      if constexpr (LOG_E > 2) apply_factor<T, LOG_E, R, 2>(cx, v, tw, c);
      break;
    case 3:
      if constexpr (LOG_E > 3) apply_factor<T, LOG_E, R, 3>(cx, v, tw, c);
      break;
    default:
      break;
  }
}

template <typename T, int LOG_E, int R>
__device__ __forceinline__ void backward_factor_at(const Ctx<LOG_E, R>& cx, const float (&x)[R][1 << LOG_E],
                                                   float (&g)[R][1 << LOG_E], const T* tw, int c, int k, float* acc,
                                                   bool shared_pairs) {
  switch (k - c) {
    case 0:
      backward_factor<T, LOG_E, R, 0>(cx, x, g, tw, c, acc, shared_pairs);
      break;
    case 1:
      if constexpr (LOG_E > 1) backward_factor<T, LOG_E, R, 1>(cx, x, g, tw, c, acc, shared_pairs);
      break;
    case 2:
      if constexpr (LOG_E > 2) backward_factor<T, LOG_E, R, 2>(cx, x, g, tw, c, acc, shared_pairs);
      break;
    case 3:
      if constexpr (LOG_E > 3) backward_factor<T, LOG_E, R, 3>(cx, x, g, tw, c, acc, shared_pairs);
      break;
    default:
      break;
  }
}

template <int LOG_E, int R>
__device__ __forceinline__ Ctx<LOG_E, R> make_ctx(const Args& a, float* smem) {
  Ctx<LOG_E, R> cx;
  cx.log_n = a.log_n;
  cx.n = 1 << a.log_n;
  cx.npad = cx.n + (cx.n >> 5);
  cx.nb = a.nb;
  cx.increasing = a.increasing;
  const int lanes_log = a.log_n - LOG_E;  // T = 2^lanes_log threads per row group
  cx.lane = static_cast<int>(threadIdx.x) & ((1 << lanes_log) - 1);
  cx.group = static_cast<int>(threadIdx.x) >> lanes_log;
  cx.tile_rows = a.groups * R;
  cx.tbuf = smem;
  return cx;
}

// Twiddles of butterfly b, stride bit k, stack s: (n/2, 2, 2) values.
template <typename T>
__device__ __forceinline__ const T* factor_twiddle(const Args& a, int64_t s, int b, int k) {
  const int64_t n = int64_t{1} << a.log_n;
  return static_cast<const T*>(a.twiddle) + ((s * a.nb + b) * a.log_n + k) * n * 2;
}

// ---- forward ---------------------------------------------------------------------------
template <typename T, int LOG_E, int R, int MAXT>
__global__ void __launch_bounds__(MAXT) butterfly_forward_kernel(const Args a) {
  KS_DYNAMIC_SMEM(float, smem);
  const Ctx<LOG_E, R> cx = make_ctx<LOG_E, R>(a, smem);
  const int64_t s = blockIdx.x / a.blocks_per_stack;
  const int64_t n = cx.n;
  const T* in = static_cast<const T*>(a.input);
  T* out = static_cast<T*>(a.out);
  const T* bias = a.bias != nullptr ? static_cast<const T*>(a.bias) + s * n : nullptr;
  float x[R][1 << LOG_E];
  for (int64_t q = blockIdx.x % a.blocks_per_stack; q < a.tiles; q += a.blocks_per_stack) {
    const int64_t row0 = q * cx.tile_rows;
    cx.stage_in(in + row0 * a.in_st.batch + s * a.in_st.stack, a.in_st.batch, a.in_st.elem, a.batch - row0);
    int c = cx.window_of(cx.factor_k(0, 0));
    cx.regs_from_tbuf(x, c);
    for (int b = 0; b < a.nb; ++b) {
      for (int j = 0; j < a.log_n; ++j) {
        const int k = cx.factor_k(b, j);
        cx.ensure_window(x, c, k);
        apply_factor_at<T, LOG_E, R>(cx, x, factor_twiddle<T>(a, s, b, k), c, k);
      }
    }
    cx.regs_to_tbuf(x, c);
    cx.stage_out(out + (row0 * a.nstacks + s) * n, a.nstacks * n, a.batch - row0, bias);
  }
}

// ---- backward --------------------------------------------------------------------------
template <typename T, int LOG_E, int R, int MAXT>
__global__ void __launch_bounds__(MAXT) butterfly_backward_kernel(const Args a) {
  constexpr int E = 1 << LOG_E;
  KS_DYNAMIC_SMEM(float, smem);
  const Ctx<LOG_E, R> cx = make_ctx<LOG_E, R>(a, smem);
  const int64_t s = blockIdx.x / a.blocks_per_stack;
  const int64_t qb = blockIdx.x % a.blocks_per_stack;
  const int64_t n = cx.n;
  const int L = a.log_n;
  float* acc = smem + cx.tile_rows * cx.npad;  // (n/2, 2, 2) twiddle gradient of one factor
  const bool shared_pairs = a.groups > 1;
  const T* in = static_cast<const T*>(a.input);
  const T* grad = static_cast<const T*>(a.grad);
  T* grad_in = static_cast<T*>(a.out);
  const int64_t twps = int64_t{a.nb} * L * n * 2;
  float* slot = a.partial + (qb * a.nstacks + s) * twps;
  float* scratch = a.scratch + (s * a.blocks_per_stack + qb) * (a.nb - 1) * cx.tile_rows * n;
  for (int idx = threadIdx.x; idx < 2 * n; idx += blockDim.x) acc[idx] = 0.f;  // first stage_in syncs

  float x[R][E], y[R][E], g[R][E];
  for (int64_t q = qb; q < a.tiles; q += a.blocks_per_stack) {
    const int64_t row0 = q * cx.tile_rows;
    const int64_t rows_valid = a.batch - row0;
    const T* in_tile = in + row0 * a.in_st.batch + s * a.in_st.stack;

    // Inputs of butterflies 1..nb-1, recomputed, into scratch (row-major tile, float).
    if (a.nb > 1) {
      cx.stage_in(in_tile, a.in_st.batch, a.in_st.elem, rows_valid);
      int c = cx.window_of(cx.factor_k(0, 0));
      cx.regs_from_tbuf(x, c);
      for (int b = 0; b + 1 < a.nb; ++b) {
        for (int j = 0; j < L; ++j) {
          const int k = cx.factor_k(b, j);
          cx.ensure_window(x, c, k);
          apply_factor_at<T, LOG_E, R>(cx, x, factor_twiddle<T>(a, s, b, k), c, k);
        }
        cx.regs_to_tbuf(x, c);
        float* dst = scratch + int64_t{b} * cx.tile_rows * n;
        cx.stage_out(dst, n, cx.tile_rows, static_cast<const float*>(nullptr));
      }
    }

    // g = grad of the last factor's output.
    cx.stage_in(grad + (row0 * a.nstacks + s) * n, a.nstacks * n, int64_t{1}, rows_valid);
    int gc = cx.window_of(cx.factor_k(a.nb - 1, L - 1));
    cx.regs_from_tbuf(g, gc);

    for (int b = a.nb - 1; b >= 0; --b) {
      // Segments of butterfly b: maximal runs of factors inside one window, chosen greedily
      // from the first factor (the same rule the recompute below follows).
      int nseg = 1;
      {
        int c = cx.window_of(cx.factor_k(b, 0));
        for (int j = 1; j < L; ++j) {
          const int k = cx.factor_k(b, j);
          if (!cx.in_window(k, c)) c = cx.window_of(k), ++nseg;
        }
      }
      for (int sg = nseg - 1; sg >= 0; --sg) {
        // x = input of segment sg: reload the butterfly's input, replay segments 0..sg-1.
        if (b == 0) {
          cx.stage_in(in_tile, a.in_st.batch, a.in_st.elem, rows_valid);
        } else {
          cx.stage_in(static_cast<const float*>(scratch + int64_t{b - 1} * cx.tile_rows * n), n, int64_t{1},
                      static_cast<int64_t>(cx.tile_rows));
        }
        int c = cx.window_of(cx.factor_k(b, 0));
        cx.regs_from_tbuf(x, c);
        int start = 0;
        for (int seg = 0;; ++start) {
          const int k = cx.factor_k(b, start);
          if (!cx.in_window(k, c)) {
            ++seg;
            cx.change_window(x, c, cx.window_of(k));
          }
          if (seg == sg) break;
          apply_factor_at<T, LOG_E, R>(cx, x, factor_twiddle<T>(a, s, b, k), c, k);
        }
        int end = start + 1;
        while (end < L && cx.in_window(cx.factor_k(b, end), c)) ++end;
        cx.change_window(g, gc, c);

        // Factors end-1 .. start of the segment, each input recomputed from x in registers.
        for (int f = end - 1; f >= start; --f) {
          KS_UNROLL
          for (int r = 0; r < R; ++r) {
            KS_UNROLL
            for (int j = 0; j < E; ++j) y[r][j] = x[r][j];
          }
          for (int j = start; j < f; ++j) {
            const int k = cx.factor_k(b, j);
            apply_factor_at<T, LOG_E, R>(cx, y, factor_twiddle<T>(a, s, b, k), c, k);
          }
          const int k = cx.factor_k(b, f);
          backward_factor_at<T, LOG_E, R>(cx, y, g, factor_twiddle<T>(a, s, b, k), c, k, acc, shared_pairs);
          __syncthreads();  // accumulator complete
          float* dst = slot + (int64_t{b} * L + k) * n * 2;
          for (int idx = threadIdx.x; idx < 2 * n; idx += blockDim.x) {
            dst[idx] += acc[idx];  // this block's own slot: no other block writes it
            acc[idx] = 0.f;
          }
          __syncthreads();  // accumulator cleared before the next factor adds to it
        }
      }
    }

    cx.regs_to_tbuf(g, gc);
    cx.stage_out(grad_in + (row0 * a.nstacks + s) * n, a.nstacks * n, rows_valid, static_cast<const T*>(nullptr));
  }
}

// ---- launchers -------------------------------------------------------------------------
inline Args make_args(const Shape& shape, const Plan& plan) {
  Args a{};
  a.batch = shape.batch;
  a.nstacks = shape.nstacks;
  a.log_n = shape.log_n;
  a.nb = shape.nbutterflies;
  a.increasing = shape.increasing_stride;
  a.tiles = plan.tiles;
  a.blocks_per_stack = plan.blocks_per_stack;
  a.groups = static_cast<int>(plan.groups);
  return a;
}

template <typename Kernel>
cudaError_t launch(Kernel kernel, const Plan& plan, const Shape& shape, const Args& a, cudaStream_t stream) {
  if (plan.smem_bytes > 48 * 1024) {
    const cudaError_t err = KS_SET_MAX_SMEM(kernel, plan.smem_bytes);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(plan.grid() * shape.nstacks));
  const dim3 block(static_cast<unsigned>(plan.block_threads()));
  KS_LAUNCH(kernel, grid, block, static_cast<size_t>(plan.smem_bytes), stream, a);
  return cudaGetLastError();
}

// The instantiations must match forward_config / backward_config in butterfly_plan.h.
template <typename T, bool BACKWARD>
cudaError_t launch_config(const Plan& plan, const Shape& shape, const Args& a, cudaStream_t stream) {
  const KernelConfig& c = plan.cfg;
#define KS_CASE(LE, R, MAXT)                                                                            \
  if (c.log_e == LE && c.rows == R && c.max_threads == MAXT) {                                          \
    if constexpr (BACKWARD) return launch(&butterfly_backward_kernel<T, LE, R, MAXT>, plan, shape, a, stream); \
    else return launch(&butterfly_forward_kernel<T, LE, R, MAXT>, plan, shape, a, stream);              \
  }
  if constexpr (BACKWARD) {
    KS_CASE(1, 2, 256)
    KS_CASE(2, 2, 256)
    KS_CASE(3, 2, 512)
    KS_CASE(3, 1, 1024)
  } else {
    KS_CASE(1, 4, 256)
    KS_CASE(2, 4, 256)
    KS_CASE(3, 4, 256)
    KS_CASE(4, 2, 256)
    KS_CASE(4, 2, 512)
  }
#undef KS_CASE
  return cudaErrorInvalidConfiguration;
}

template <typename T>
cudaError_t forward_typed(const Shape& shape, const void* input, Strides st, const void* twiddle, const void* bias,
                          void* out, const Device& dev, cudaStream_t stream) {
  if (shape.batch == 0) return cudaSuccess;
  const Plan plan = forward_plan(shape, dev);
  Args a = make_args(shape, plan);
  a.input = input;
  a.in_st = st;
  a.twiddle = twiddle;
  a.bias = bias;
  a.out = out;
  return launch_config<T, false>(plan, shape, a, stream);
}

inline BackwardWorkspace backward_workspace_impl(const Shape& shape, const Device& dev) {
  const Plan plan = backward_plan(shape, dev);
  BackwardWorkspace ws;
  ws.blocks_per_stack = plan.blocks_per_stack;
  ws.partial_floats = plan.blocks_per_stack * shape.nstacks * twiddle_per_stack(shape);
  ws.scratch_floats = shape.nstacks * plan.blocks_per_stack * (shape.nbutterflies - 1) * plan.tile_rows * shape.n();
  return ws;
}

template <typename T>
cudaError_t backward_typed(const Shape& shape, const void* grad, const void* input, Strides st, const void* twiddle,
                           void* grad_input, float* partial, float* scratch, const Device& dev,
                           cudaStream_t stream) {
  if (shape.batch == 0) return cudaSuccess;
  const Plan plan = backward_plan(shape, dev);
  Args a = make_args(shape, plan);
  a.input = input;
  a.in_st = st;
  a.twiddle = twiddle;
  a.out = grad_input;
  a.grad = grad;
  a.partial = partial;
  a.scratch = scratch;
  return launch_config<T, true>(plan, shape, a, stream);
}

}  // namespace detail
}  // namespace cuda
}  // namespace kaleidoscope
