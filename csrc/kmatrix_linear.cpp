// kaleidoscope::kmatrix_linear: KaleidoscopeLinear's whole forward in one op call.
//
// At batch 1 (decoding) the layer's arithmetic takes a few microseconds, and the Python around
// the butterfly op (reshape, pad, expand, slice, bias, the autograd bypass) cost twice that.
// This op does that plumbing in C++: zero-pad the input to n, broadcast it to the stacks, apply
// the butterflies (bias fused when no output row is dropped), keep the first out_features rows.
// Device-agnostic (CompositeExplicitAutograd): it runs wherever butterfly_multiply has a kernel.
// With a gradient wanted, the same code runs above autograd, so the gradient flows through
// butterfly_multiply's formula and ATen's; without, it runs below autograd (no graph, no Python).
// Plain-PyTorch meaning: kmatrix_linear_ref (fairseq_kaleidoscope/kmatrix/reference.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace kaleidoscope {
namespace {

using ButterflyFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, bool);

at::Tensor kmatrix_linear_impl(const at::Tensor& x, const at::Tensor& twiddle, const std::optional<at::Tensor>& bias,
                               int64_t out_features) {
  TORCH_CHECK_VALUE(twiddle.dim() == 6,
                    "kmatrix_linear: twiddle must have shape (nstacks, nbutterflies, log2 n, n/2, 2, 2), got ",
                    twiddle.sizes());
  const int64_t nstacks = twiddle.size(0), n = 2 * twiddle.size(3);
  TORCH_CHECK_VALUE(x.dim() >= 1, "kmatrix_linear: input must have at least one dimension");
  const int64_t in_features = x.size(-1);
  TORCH_CHECK_VALUE(in_features >= 1 && in_features <= n, "kmatrix_linear: input has ", in_features,
                    " features, the K-matrix size is n = ", n);
  TORCH_CHECK_VALUE(out_features >= 1 && out_features <= nstacks * n, "kmatrix_linear: out_features = ",
                    out_features, " is not in [1, nstacks * n = ", nstacks * n, "]");
  TORCH_CHECK_TYPE(x.scalar_type() == twiddle.scalar_type(), "kmatrix_linear: input dtype ", x.scalar_type(),
                   " differs from the twiddle's (the layer's) ", twiddle.scalar_type(),
                   " (convert one with .to(dtype))");
  TORCH_CHECK_VALUE(x.device() == twiddle.device(), "kmatrix_linear: input is on ", x.device(),
                    " but the twiddle (the layer) is on ", twiddle.device());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_features, "kmatrix_linear: bias must have shape (",
                      out_features, "), got ", bias->sizes());
  }
  at::Tensor rows = x.reshape({-1, in_features});
  if (in_features != n) {
    rows = at::constant_pad_nd(rows, {0, n - in_features}, 0);
  }
  const at::Tensor input = rows.unsqueeze(1).expand({rows.size(0), nstacks, n});
  const bool fused = bias.has_value() && out_features == nstacks * n;
  const std::optional<at::Tensor> kernel_bias =
      fused ? std::optional<at::Tensor>(bias->view({nstacks, n})) : std::optional<at::Tensor>();
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("kaleidoscope::butterfly_multiply", "").typed<ButterflyFn>();
  at::Tensor y = op.call(twiddle, input, kernel_bias, /*increasing_stride=*/false).view({-1, nstacks * n});
  if (out_features != nstacks * n) {
    y = y.narrow(1, 0, out_features);
  }
  if (bias.has_value() && !fused) {
    y = y + *bias;
  }
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = out_features;
  return y.reshape(sizes);
}

// Autograd key. With a gradient wanted, the plumbing runs here, above autograd: ATen records
// pad/expand/narrow/add and butterfly_multiply its own formula. Without, below autograd, where
// the butterfly op skips its (Python) autograd kernel too: decoding pays for no graph.
at::Tensor kmatrix_linear_autograd(const at::Tensor& x, const at::Tensor& twiddle, const std::optional<at::Tensor>& bias,
                                   int64_t out_features) {
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || twiddle.requires_grad() || (bias.has_value() && bias->requires_grad()))) {
    return kmatrix_linear_impl(x, twiddle, bias, out_features);
  }
  // The composite kernel itself, not a second trip through the dispatcher (~1 µs at batch 1).
  at::AutoDispatchBelowADInplaceOrView guard;
  return kmatrix_linear_impl(x, twiddle, bias, out_features);
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CompositeExplicitAutograd, m) { m.impl("kmatrix_linear", &kmatrix_linear_impl); }

TORCH_LIBRARY_IMPL(kaleidoscope, Autograd, m) { m.impl("kmatrix_linear", &kmatrix_linear_autograd); }

}  // namespace kaleidoscope
