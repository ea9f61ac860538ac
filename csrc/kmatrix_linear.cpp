// kaleidoscope::kmatrix_linear: KaleidoscopeLinear's whole forward in one op call.
//
// At batch 1 (decoding) the layer's arithmetic takes a few microseconds, and the Python around
// the butterfly op (reshape, pad, expand, slice, bias, the autograd bypass) cost twice that.
// This op does that plumbing in C++: zero-pad the input to n, broadcast it to the stacks, apply
// the butterflies (bias fused when no output row is dropped), keep the first out_features rows.
// Device-agnostic (CompositeExplicitAutograd): it runs wherever butterfly_multiply has a kernel.
// With a gradient wanted, the same code runs above autograd, so the gradient flows through
// butterfly_multiply's formula and ATen's; without, the op runs below autograd (no graph, no
// Python), where CPU has a kernel of its own (kmatrix_linear_cpu, cpu/butterfly_cpu.cpp) that
// folds this plumbing into the butterfly kernel's arguments.
// Plain-PyTorch meaning: kmatrix_linear_ref (fairseq_kaleidoscope/kmatrix/reference.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

#include "butterfly_checks.h"
#include "kmatrix_plumbing.h"

namespace kaleidoscope {
namespace {

using KmatrixFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t);
using ButterflyFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, bool);

at::Tensor kmatrix_linear_impl(const at::Tensor& x, const at::Tensor& twiddle, const std::optional<at::Tensor>& bias,
                               int64_t out_features) {
  check_kmatrix_linear_args(x, twiddle, bias, out_features);
  const int64_t nstacks = twiddle.size(0), n = 2 * twiddle.size(3);
  const at::Tensor rows = kmatrix_input_rows(x, n);
  const at::Tensor input = rows.unsqueeze(1).expand({rows.size(0), nstacks, n});
  const bool fused = bias.has_value() && out_features == nstacks * n;
  const std::optional<at::Tensor> kernel_bias =
      fused ? std::optional<at::Tensor>(bias->view({nstacks, n})) : std::optional<at::Tensor>();
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("kaleidoscope::butterfly_multiply", "").typed<ButterflyFn>();
  const at::Tensor y = op.call(twiddle, input, kernel_bias, /*increasing_stride=*/false).view({-1, nstacks * n});
  return kmatrix_output(y, x, bias, out_features, fused);
}

// Autograd key. With a gradient wanted, the plumbing runs here, above autograd: ATen records
// pad/expand/narrow/add and butterfly_multiply its own formula. Without, the op runs below
// autograd, where the butterfly op skips its (Python) autograd kernel too: decoding pays for no
// graph.
at::Tensor kmatrix_linear_autograd(const at::Tensor& x, const at::Tensor& twiddle, const std::optional<at::Tensor>& bias,
                                   int64_t out_features) {
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || twiddle.requires_grad() || (bias.has_value() && bias->requires_grad()))) {
    return kmatrix_linear_impl(x, twiddle, bias, out_features);
  }
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("kaleidoscope::kmatrix_linear", "").typed<KmatrixFn>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, twiddle, bias, out_features);  // the device's kernel (CPU), else the composite one
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CompositeExplicitAutograd, m) { m.impl("kmatrix_linear", &kmatrix_linear_impl); }

TORCH_LIBRARY_IMPL(kaleidoscope, Autograd, m) { m.impl("kmatrix_linear", &kmatrix_linear_autograd); }

}  // namespace kaleidoscope
