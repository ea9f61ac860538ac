// CPU implementation of the butterfly ops: one row (a batch element of one stack) at a
// time, all factors applied in place in a row buffer, rows split across threads.
// Conventions: fairseq_kaleidoscope/kmatrix/reference.py.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../butterfly_checks.h"

namespace kaleidoscope {
namespace {

struct Geometry {
  int64_t batch, nstacks, n, log_n, nbutterflies;
  bool increasing_stride;
  int64_t factors() const { return nbutterflies * log_n; }
  // Factor index k (stride 2**k) of the f-th factor applied.
  int64_t factor_k(int64_t f) const {
    const int64_t b = f / log_n, j = f % log_n;
    const bool increasing = increasing_stride != (b % 2 == 1);
    return increasing ? j : log_n - 1 - j;
  }
  // Offset of that factor's (n/2, 2, 2) twiddles inside one stack's twiddles.
  int64_t factor_offset(int64_t f) const { return ((f / log_n) * log_n + factor_k(f)) * n * 2; }
};

template <typename T>
void apply_factor(const T* tw, T* x, int64_t n, int64_t stride) {
  for (int64_t base = 0, p = 0; base < n; base += 2 * stride) {
    for (int64_t off = 0; off < stride; ++off, ++p) {
      const T* t = tw + 4 * p;
      const T u = x[base + off], v = x[base + off + stride];
      x[base + off] = t[0] * u + t[1] * v;
      x[base + off + stride] = t[2] * u + t[3] * v;
    }
  }
}

// Gradient of one factor: accumulates d(twiddle) and turns g (grad of the factor's
// output) into the grad of its input x, in place.
template <typename T>
void apply_factor_backward(const T* tw, const T* x, T* g, T* dtw, int64_t n, int64_t stride) {
  for (int64_t base = 0, p = 0; base < n; base += 2 * stride) {
    for (int64_t off = 0; off < stride; ++off, ++p) {
      const T* t = tw + 4 * p;
      T* dt = dtw + 4 * p;
      const int64_t i = base + off, j = i + stride;
      const T u = x[i], v = x[j], gi = g[i], gj = g[j];
      dt[0] += gi * u;
      dt[1] += gi * v;
      dt[2] += gj * u;
      dt[3] += gj * v;
      g[i] = t[0] * gi + t[2] * gj;
      g[j] = t[1] * gi + t[3] * gj;
    }
  }
}

Geometry geometry(const at::Tensor& twiddle, const at::Tensor& input, bool increasing_stride) {
  return {input.size(0), input.size(1), input.size(2), twiddle.size(2), twiddle.size(1), increasing_stride};
}

// Rows per parallel task: enough work per task to amortise scheduling.
int64_t grain(const Geometry& g) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.n * g.factors())); }

template <typename T>
void load_row(const T* in, const at::Tensor& input, int64_t r, int64_t nstacks, int64_t n, T* row) {
  const int64_t b = r / nstacks, s = r % nstacks;
  const T* src = in + b * input.stride(0) + s * input.stride(1);
  const int64_t st = input.stride(2);
  for (int64_t i = 0; i < n; ++i) row[i] = src[i * st];
}

at::Tensor butterfly_multiply_cpu(const at::Tensor& twiddle, const at::Tensor& input,
                                  const std::optional<at::Tensor>& bias, bool increasing_stride) {
  check_butterfly_args(twiddle, input, bias);
  const Geometry g = geometry(twiddle, input, increasing_stride);
  const at::Tensor tw = twiddle.contiguous();
  const at::Tensor bs = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.nstacks, g.n}, input.options());
  const int64_t stack_tw = g.nbutterflies * g.log_n * g.n * 2;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "butterfly_multiply_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* twp = tw.const_data_ptr<scalar_t>();
    const scalar_t* bp = bs.defined() ? bs.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.nstacks, grain(g), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t s = r % g.nstacks;
        scalar_t* row = op + r * g.n;
        load_row(in, input, r, g.nstacks, g.n, row);
        for (int64_t f = 0; f < g.factors(); ++f) {
          apply_factor(twp + s * stack_tw + g.factor_offset(f), row, g.n, int64_t{1} << g.factor_k(f));
        }
        if (bp != nullptr) {
          for (int64_t i = 0; i < g.n; ++i) row[i] += bp[s * g.n + i];
        }
      }
    });
  });
  return out;
}

// Recomputes each row's intermediate activations (one row at a time, so the buffer
// stays small and in cache), then walks the factors backwards.
std::tuple<at::Tensor, at::Tensor> butterfly_multiply_backward_cpu(const at::Tensor& grad, const at::Tensor& twiddle,
                                                                   const at::Tensor& input, bool increasing_stride) {
  check_butterfly_backward_args(grad, twiddle, input);
  const Geometry g = geometry(twiddle, input, increasing_stride);
  const at::Tensor tw = twiddle.contiguous();
  const at::Tensor go = grad.contiguous();
  at::Tensor grad_input = at::empty({g.batch, g.nstacks, g.n}, input.options());
  const int64_t nthreads = at::get_num_threads();
  // One twiddle-gradient accumulator per thread, summed at the end: no atomics.
  at::Tensor partial = at::zeros({nthreads, twiddle.numel()}, twiddle.options());
  const int64_t stack_tw = g.nbutterflies * g.log_n * g.n * 2;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "butterfly_multiply_backward_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* twp = tw.const_data_ptr<scalar_t>();
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    scalar_t* gip = grad_input.mutable_data_ptr<scalar_t>();
    scalar_t* pp = partial.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.nstacks, grain(g), [&](int64_t begin, int64_t end) {
      scalar_t* dtw = pp + at::get_thread_num() * twiddle.numel();
      std::vector<scalar_t> acts(static_cast<size_t>(g.factors() * g.n));  // input of every factor
      for (int64_t r = begin; r < end; ++r) {
        const int64_t s = r % g.nstacks;
        const scalar_t* tws = twp + s * stack_tw;
        load_row(in, input, r, g.nstacks, g.n, acts.data());
        for (int64_t f = 0; f + 1 < g.factors(); ++f) {
          scalar_t* next = acts.data() + (f + 1) * g.n;
          std::copy(acts.data() + f * g.n, next, next);
          apply_factor(tws + g.factor_offset(f), next, g.n, int64_t{1} << g.factor_k(f));
        }
        scalar_t* gr = gip + r * g.n;
        std::copy(gop + r * g.n, gop + (r + 1) * g.n, gr);
        for (int64_t f = g.factors() - 1; f >= 0; --f) {
          const int64_t off = g.factor_offset(f);
          apply_factor_backward(tws + off, acts.data() + f * g.n, gr, dtw + s * stack_tw + off, g.n,
                                int64_t{1} << g.factor_k(f));
        }
      }
    });
  });
  return {partial.sum(0).view(twiddle.sizes()), grad_input};
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CPU, m) {
  m.impl("butterfly_multiply", &butterfly_multiply_cpu);
  m.impl("butterfly_multiply_backward", &butterfly_multiply_backward_cpu);
}

}  // namespace kaleidoscope
