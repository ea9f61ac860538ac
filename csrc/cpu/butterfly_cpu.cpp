// CPU implementation of the butterfly ops: argument checks, choice of instruction set
// and code path, threading and allocation. The arithmetic lives in the per-ISA kernels
// (butterfly_simd_impl.h). Conventions: fairseq_kaleidoscope/kmatrix/reference.py.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <string>
#include <vector>

#include "../butterfly_checks.h"
#include "../kmatrix_plumbing.h"
#include "butterfly_kernels.h"

namespace kaleidoscope {
namespace {

enum Isa : int { kAutoIsa = 0, kAvx512, kAvx2, kNeon, kPortable };
enum Path : int { kAutoPath = 0, kTiles, kSmall };

// Set by kaleidoscope::set_cpu_kernel (tests force every path in turn).
std::atomic<int> forced_isa{kAutoIsa};
std::atomic<int> forced_path{kAutoPath};

bool isa_supported(int isa) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == kAvx512) return __builtin_cpu_supports("avx512f");
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  if (isa == kAvx512 || isa == kAvx2) return false;
#endif
  if (isa == kNeon) {
#if defined(__aarch64__)
    return true;  // every aarch64 CPU has NEON
#else
    return false;
#endif
  }
  return isa == kPortable;
}

int active_isa() {
  const int forced = forced_isa.load();
  if (forced != kAutoIsa) return forced;
  for (int isa : {kAvx512, kAvx2, kNeon})
    if (isa_supported(isa)) return isa;
  return kPortable;
}

const char* isa_name(int isa) {
  return isa == kAvx512 ? "avx512"
         : isa == kAvx2 ? "avx2"
         : isa == kNeon ? "neon"
         : isa == kPortable ? "portable"
                            : "auto";
}

const char* path_name(int path) { return path == kTiles ? "tiles" : path == kSmall ? "small" : "auto"; }

template <typename T>
const cpu::Kernels<T>& kernels();
template <>
const cpu::Kernels<float>& kernels<float>() {
  [[maybe_unused]] const int isa = active_isa();
#if defined(__x86_64__) || defined(__i386__)
  if (isa == kAvx512) return cpu::avx512::kernels_f32;
  if (isa == kAvx2) return cpu::avx2::kernels_f32;
#endif
#if defined(__aarch64__)
  if (isa == kNeon) return cpu::neon::kernels_f32;
#endif
  return cpu::portable::kernels_f32;
}
template <>
const cpu::Kernels<double>& kernels<double>() {
#if defined(__x86_64__) || defined(__i386__)
  const int isa = active_isa();
  if (isa == kAvx512) return cpu::avx512::kernels_f64;
  if (isa == kAvx2) return cpu::avx2::kernels_f64;
#endif
  return cpu::portable::kernels_f64;
}

// Backward, per tile of `width` rows: keep the input of every second factor (n*width values each;
// the factors are differentiated in pairs, the one in between recomputed in registers),
// or keep one per butterfly pair and recompute the others (one extra forward). Measured
// on AMD EPYC Zen 4 (float32, 1 thread, batch 512) when every factor's input was kept:
// keeping is 10-30% faster up to n=1024 (2.6 MB per tile), recomputing wins from about 6 MB.
template <typename T>
int64_t checkpoint_every(const cpu::Problem<T>& P, int64_t width) {
  const int64_t kept = P.nbutterflies * P.log_n * P.n * width * static_cast<int64_t>(sizeof(T)) / 2;
  return kept <= (int64_t{4} << 20) ? 2 : (P.log_n + 1) / 2 * 2;  // even: factors go in pairs
}

// Rows of input: (batch, nstacks) with the given strides, each n contiguous values.
template <typename T>
cpu::Problem<T> make_problem(const at::Tensor& tw, const T* input, int64_t batch, int64_t stride_b, int64_t stride_s,
                             bool increasing_stride) {
  cpu::Problem<T> P{};
  P.input = input;
  P.in_stride_b = stride_b;
  P.in_stride_s = stride_s;
  P.twiddle = tw.const_data_ptr<T>();
  P.batch = batch;
  P.nstacks = tw.size(0);
  P.n = 2 * tw.size(3);
  P.log_n = tw.size(2);
  P.nbutterflies = tw.size(1);
  P.increasing = increasing_stride;
  P.checkpoint_every = 2;
  return P;
}

template <typename T>
cpu::Problem<T> make_problem(const at::Tensor& tw, const at::Tensor& input, bool increasing_stride) {
  return make_problem<T>(tw, input.const_data_ptr<T>(), input.size(0), input.stride(0), input.stride(1),
                         increasing_stride);
}

// Tasks of at least ~2^17 multiply-adds, so thread start-up stays negligible.
int64_t grain_for(int64_t rows_per_task, int64_t n, int64_t factors) {
  return std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, rows_per_task * n * factors));
}

// Per-thread scratch, kept between calls and grown when needed: a fresh allocation of
// the backward's buffers (up to a few MB) costs page faults and zeroing on every call,
// which at batch 1 took longer than the kernel.
template <typename T>
T* thread_scratch(size_t count) {
  thread_local std::vector<char> buffer;
  const size_t bytes = count * sizeof(T) + 64;
  if (buffer.size() < bytes) buffer.resize(bytes);
  // 64-byte aligned start (SIMD loads are unaligned anyway; this keeps rows on lines).
  const uintptr_t p = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t{63});
}

// Rows of one stack below which the pair-vectorised path beats padding a tile.
template <typename T>
int64_t small_rows_limit(const cpu::Kernels<T>& K) {
  return K.tile_rows / 2;
}

template <typename T>
void forward(const cpu::Problem<T>& P) {
  const cpu::Kernels<T>& K = kernels<T>();
  const int64_t W = K.tile_rows, F = P.nbutterflies * P.log_n;
  const int path = forced_path.load();
  // Rows [0, tiled) go through tiles, [tiled, batch) through the small path.
  int64_t tiled = P.batch;
  if (path == kSmall) {
    tiled = 0;
  } else if (path == kAutoPath) {
    const int64_t rem = P.batch % W;
    tiled = rem < small_rows_limit(K) ? P.batch - rem : P.batch;
  }
  const int64_t ntiles = (tiled + W - 1) / W;
  if (ntiles > 0) {
    at::parallel_for(0, P.nstacks * ntiles, grain_for(W, P.n, F), [&](int64_t begin, int64_t end) {
      T* scratch = thread_scratch<T>(K.tile_scratch(P));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task / ntiles, t = task % ntiles;
        K.forward_tiles(P, s, t * W, std::min(tiled, (t + 1) * W), scratch);
      }
    });
  }
  const int64_t rest = P.batch - tiled;
  if (rest > 0) {
    constexpr int64_t kGroup = 8;
    const int64_t ngroups = (rest + kGroup - 1) / kGroup;
    at::parallel_for(0, P.nstacks * ngroups, grain_for(kGroup, P.n, F), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task / ngroups, g = task % ngroups;
        K.forward_small(P, s, tiled + g * kGroup, std::min(P.batch, tiled + (g + 1) * kGroup));
      }
    });
  }
}

// The kernels read rows with a contiguous last dimension; other strides are free.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

at::Tensor butterfly_multiply_cpu(const at::Tensor& twiddle, const at::Tensor& input,
                                  const std::optional<at::Tensor>& bias, bool increasing_stride) {
  check_butterfly_args(twiddle, input, bias);
  const at::Tensor tw = twiddle.contiguous();
  const at::Tensor x = rows_contiguous(input);
  const at::Tensor bs = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "butterfly_multiply_cpu", [&] {
    cpu::Problem<scalar_t> P = make_problem<scalar_t>(tw, x, increasing_stride);
    P.bias = bs.defined() ? bs.const_data_ptr<scalar_t>() : nullptr;
    P.output = out.mutable_data_ptr<scalar_t>();
    forward(P);
  });
  return out;
}

// kmatrix_linear below autograd (inference): the composite's plumbing (kmatrix_plumbing.h) around
// the kernel called directly. Each row is broadcast to the stacks by a zero stride instead of an
// expanded view, and the bias is fused when every output row is kept. At batch 1 the composite's
// views and second dispatch cost about as much as the arithmetic.
at::Tensor kmatrix_linear_cpu(const at::Tensor& x, const at::Tensor& twiddle, const std::optional<at::Tensor>& bias,
                              int64_t out_features) {
  check_kmatrix_linear_args(x, twiddle, bias, out_features);
  const int64_t nstacks = twiddle.size(0), n = 2 * twiddle.size(3);
  at::Tensor rows = kmatrix_input_rows(x, n);
  if (rows.stride(1) != 1) {
    rows = rows.contiguous();
  }
  const at::Tensor tw = twiddle.contiguous();
  const bool fused = bias.has_value() && out_features == nstacks * n;
  const at::Tensor bs = fused ? bias->contiguous() : at::Tensor();  // read as (nstacks, n)
  at::Tensor y = at::empty({rows.size(0), nstacks * n}, x.options());
  if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kmatrix_linear_cpu", [&] {
      cpu::Problem<scalar_t> P =
          make_problem<scalar_t>(tw, rows.const_data_ptr<scalar_t>(), rows.size(0), rows.stride(0), 0, false);
      P.bias = fused ? bs.const_data_ptr<scalar_t>() : nullptr;
      P.output = y.mutable_data_ptr<scalar_t>();
      forward(P);
    });
  }
  return kmatrix_output(y, x, bias, out_features, fused);
}

std::tuple<at::Tensor, at::Tensor> butterfly_multiply_backward_cpu(const at::Tensor& grad, const at::Tensor& twiddle,
                                                                   const at::Tensor& input, bool increasing_stride) {
  check_butterfly_backward_args(grad, twiddle, input);
  const at::Tensor tw = twiddle.contiguous();
  const at::Tensor x = rows_contiguous(input);
  const at::Tensor go = rows_contiguous(grad);
  at::Tensor grad_input = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
  const int64_t nthreads = at::get_num_threads();
  // One twiddle-gradient accumulator per thread, summed at the end: no atomics.
  at::Tensor partial = at::zeros({nthreads, twiddle.numel()}, twiddle.options());
  if (grad_input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "butterfly_multiply_backward_cpu", [&] {
      cpu::Problem<scalar_t> P = make_problem<scalar_t>(tw, x, increasing_stride);
      P.grad = go.const_data_ptr<scalar_t>();
      P.grad_stride_b = go.stride(0);
      P.grad_stride_s = go.stride(1);
      P.output = grad_input.mutable_data_ptr<scalar_t>();
      const cpu::Kernels<scalar_t>& K = kernels<scalar_t>();
      const int64_t W = K.backward_rows, F = P.nbutterflies * P.log_n;
      const int64_t ntiles = (P.batch + W - 1) / W, stack_tw = F * P.n * 2;
      P.checkpoint_every = checkpoint_every(P, W);
      scalar_t* pp = partial.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, P.nstacks * ntiles, grain_for(W, P.n, 3 * F), [&](int64_t begin, int64_t end) {
        scalar_t* scratch = thread_scratch<scalar_t>(K.backward_scratch(P));
        scalar_t* dtw = pp + at::get_thread_num() * twiddle.numel();
        for (int64_t task = begin; task < end; ++task) {
          const int64_t s = task / ntiles, t = task % ntiles;
          K.backward_tiles(P, s, t * W, std::min(P.batch, (t + 1) * W), scratch, dtw + s * stack_tw);
        }
      });
    });
  }
  return {(nthreads == 1 ? partial : partial.sum(0)).view(twiddle.sizes()), grad_input};
}

void set_cpu_kernel(std::string isa, std::string path) {
  int i = -1, p = -1;
  for (int k : {kAutoIsa, kAvx512, kAvx2, kNeon, kPortable})
    if (isa == isa_name(k)) i = k;
  for (int k : {kAutoPath, kTiles, kSmall})
    if (path == path_name(k)) p = k;
  TORCH_CHECK_VALUE(i >= 0, "set_cpu_kernel: unknown isa '", isa, "'; expected auto, avx512, avx2, neon or portable");
  TORCH_CHECK_VALUE(p >= 0, "set_cpu_kernel: unknown path '", path, "'; expected auto, tiles or small");
  TORCH_CHECK(i == kAutoIsa || isa_supported(i), "set_cpu_kernel: this CPU does not support ", isa);
  forced_isa.store(i);
  forced_path.store(p);
}

// [isa in use, path setting, comma-separated ISAs this CPU supports].
std::vector<std::string> get_cpu_kernel() {
  std::string supported;
  for (int k : {kAvx512, kAvx2, kNeon, kPortable}) {
    if (!isa_supported(k)) continue;
    supported += supported.empty() ? "" : ",";
    supported += isa_name(k);
  }
  return {isa_name(active_isa()), path_name(forced_path.load()), supported};
}

}  // namespace

bool cpu::active_isa_uses_avx2() {
  const int isa = active_isa();
  return isa == kAvx512 || isa == kAvx2;
}

TORCH_LIBRARY_IMPL(kaleidoscope, CPU, m) {
  m.impl("butterfly_multiply", &butterfly_multiply_cpu);
  m.impl("butterfly_multiply_backward", &butterfly_multiply_backward_cpu);
  m.impl("kmatrix_linear", &kmatrix_linear_cpu);
}

TORCH_LIBRARY_IMPL(kaleidoscope, CompositeExplicitAutograd, m) {
  m.impl("set_cpu_kernel", &set_cpu_kernel);
  m.impl("get_cpu_kernel", &get_cpu_kernel);
}

}  // namespace kaleidoscope
