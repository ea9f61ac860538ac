// kaleidoscope::kmatrix_linear: KaleidoscopeLinear's whole inference forward in one op call.
//
// At batch 1 (decoding) the layer's arithmetic takes a few microseconds, and the Python around
// the butterfly op (reshape, pad, expand, slice, bias, the autograd bypass) cost twice that.
// This op does that plumbing in C++: zero-pad the input to n, broadcast it to the stacks, apply
// the butterflies (bias fused when no output row is dropped), keep the first out_features rows.
// Inference only: there is no gradient (training goes through butterfly_multiply's autograd).
// The plain-PyTorch meaning is KaleidoscopeLinear._multiply (fairseq_kaleidoscope/kmatrix/layer.py).
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
  TORCH_CHECK(twiddle.dim() == 6, "kmatrix_linear: twiddle must have shape (nstacks, nbutterflies, log2 n, n/2, 2, 2), got ",
              twiddle.sizes());
  const int64_t nstacks = twiddle.size(0), n = 2 * twiddle.size(3);
  TORCH_CHECK(x.dim() >= 1, "kmatrix_linear: input must have at least one dimension");
  const int64_t in_features = x.size(-1);
  TORCH_CHECK(in_features >= 1 && in_features <= n, "kmatrix_linear: input has ", in_features,
              " features, the K-matrix size is n = ", n);
  TORCH_CHECK(out_features >= 1 && out_features <= nstacks * n, "kmatrix_linear: out_features = ", out_features,
              " is not in [1, nstacks * n = ", nstacks * n, "]");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "kmatrix_linear: bias must have shape (",
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

// Autograd key: refuse inputs that want a gradient (the default fallback would return an output
// whose backward silently gives none), then run below autograd, where the butterfly op called
// inside skips its own (Python) autograd kernel too.
at::Tensor kmatrix_linear_autograd(const at::Tensor& x, const at::Tensor& twiddle, const std::optional<at::Tensor>& bias,
                                   int64_t out_features) {
  TORCH_CHECK(!(at::GradMode::is_enabled() &&
                (x.requires_grad() || twiddle.requires_grad() || (bias.has_value() && bias->requires_grad()))),
              "kmatrix_linear is for inference and has no gradient, but an input requires grad: call it under "
              "torch.no_grad() or torch.inference_mode() (KaleidoscopeLinear does this by itself)");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kaleidoscope::kmatrix_linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               int64_t)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, twiddle, bias, out_features);
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CPU, m) { m.impl("kmatrix_linear", &kmatrix_linear_impl); }

TORCH_LIBRARY_IMPL(kaleidoscope, Autograd, m) { m.impl("kmatrix_linear", &kmatrix_linear_autograd); }

}  // namespace kaleidoscope
