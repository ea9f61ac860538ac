// kaleidoscope::lightconv_decoder_step: one decoding position through a whole LightConv decoder
// layer (eval mode) in one op call.
//
// At batch 1 a layer step is about thirty small ops, and from Python each costs more than its
// arithmetic. Here the same ops run from C++: conv block (linear1, optional GLU, dynconv_step on
// the ring buffer, linear2), encoder attention over keys and values projected once per sentence
// (a beam's hypotheses share one row), the FFN, layer norms and residuals. Each linear
// sub-layer is dense (weight of rank 2, (out, in)) or a K-matrix (twiddle of rank 6, run by
// kmatrix_linear). Inference only. Plain-PyTorch meaning: LightConvDecoderLayer.step_reference
// (fairseq_kaleidoscope/modules/lightconv_layers.py); the same products in the same order.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <limits>
#include <optional>

namespace kaleidoscope {
namespace {

// Order of the (weight, bias) pairs in `linears`.
enum Sublayer { kConvIn, kConvWeight, kConvOut, kAttnQ, kAttnOut, kFc1, kFc2, kSublayers };

using OptTensor = std::optional<at::Tensor>;
using KmatrixFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t);
using DynconvFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool);

struct Linears {
  const c10::List<OptTensor>& list;
  at::IntArrayRef out_features;

  at::Tensor operator()(Sublayer s, const at::Tensor& x) const {
    const OptTensor weight = list.get(2 * s), bias = list.get(2 * s + 1);
    TORCH_CHECK_VALUE(weight.has_value(), "lightconv_decoder_step: sub-layer ", static_cast<int>(s), " has no weight");
    if (weight->dim() == 6) {
      static const auto kmatrix =
          c10::Dispatcher::singleton().findSchemaOrThrow("kaleidoscope::kmatrix_linear", "").typed<KmatrixFn>();
      return kmatrix.call(x, *weight, bias, out_features[s]);
    }
    TORCH_CHECK_VALUE(weight->dim() == 2, "lightconv_decoder_step: sub-layer ", static_cast<int>(s),
                      " weight must be a dense (out, in) matrix or a K-matrix twiddle, got shape ", weight->sizes());
    return at::linear(x, *weight, bias);
  }
};

at::Tensor lightconv_decoder_step_impl(const at::Tensor& x_in, const c10::List<OptTensor>& linears,
                                       at::IntArrayRef out_features, at::TensorList norms, double eps,
                                       const at::Tensor& cache, int64_t step, bool conv_softmax, bool glu,
                                       const OptTensor& key, const OptTensor& value, const OptTensor& key_padding_mask,
                                       double scaling, bool normalize_before) {
  TORCH_CHECK_VALUE(x_in.dim() == 2, "lightconv_decoder_step: x must be (batch, channels), got ", x_in.sizes());
  TORCH_CHECK_VALUE(linears.size() == 2 * kSublayers && out_features.size() == kSublayers,
                    "lightconv_decoder_step: expected ", 2 * kSublayers, " linears (weight, bias per sub-layer) and ",
                    static_cast<int>(kSublayers), " out_features, got ", linears.size(), " and ", out_features.size());
  TORCH_CHECK_VALUE(norms.size() == 6, "lightconv_decoder_step: expected 6 layer-norm tensors, got ", norms.size());
  const Linears linear{linears, out_features};
  const int64_t C = x_in.size(1);
  const auto norm = [&](int i, const at::Tensor& t) { return at::layer_norm(t, {C}, norms[2 * i], norms[2 * i + 1], eps); };
  static const auto dynconv =
      c10::Dispatcher::singleton().findSchemaOrThrow("kaleidoscope::dynconv_step", "").typed<DynconvFn>();

  at::Tensor x = x_in;
  // Convolution block.
  at::Tensor h = linear(kConvIn, normalize_before ? norm(0, x) : x);
  if (glu) {
    h = at::glu(h, -1);
  }
  h = dynconv.call(h, linear(kConvWeight, h), cache, step, conv_softmax);
  x = x + linear(kConvOut, h);
  if (!normalize_before) {
    x = norm(0, x);
  }
  // Encoder attention: key, value (R, H, S, D); hypothesis b reads row b / (B / R).
  if (key.has_value()) {
    TORCH_CHECK_VALUE(value.has_value() && key->dim() == 4, "lightconv_decoder_step: key and value must be (rows, heads, "
                      "source length, head dim)");
    const int64_t B = x.size(0), R = key->size(0), H = key->size(1), D = key->size(3);
    TORCH_CHECK_VALUE(R >= 1 && B % R == 0 && H * D == C, "lightconv_decoder_step: ", B, " hypotheses cannot read ",
                      R, " rows of keys with ", H, " heads of ", D, " (channels ", C, ")");
    h = linear(kAttnQ, normalize_before ? norm(1, x) : x);
    const at::Tensor q = h.view({R, B / R, H, D}).transpose(1, 2);  // (R, H, group, D)
    at::Tensor scores = at::matmul(q, key->transpose(2, 3)).mul_(scaling);
    if (key_padding_mask.has_value()) {
      scores.masked_fill_(key_padding_mask->view({R, 1, 1, -1}), -std::numeric_limits<double>::infinity());
    }
    const at::Tensor out = at::matmul(at::softmax(scores, -1), *value);  // (R, H, group, D)
    x = x + linear(kAttnOut, out.transpose(1, 2).reshape({B, C}));
    if (!normalize_before) {
      x = norm(1, x);
    }
  }
  // Feed-forward.
  h = at::relu(linear(kFc1, normalize_before ? norm(2, x) : x));
  x = x + linear(kFc2, h);
  return normalize_before ? x : norm(2, x);
}

// Autograd key: refuse inputs that want a gradient (there is none), redispatch below autograd (so
// the inputs' device picks the kernel, as for dynconv_step), and mark the ring buffer as modified
// in place.
at::Tensor lightconv_decoder_step_autograd(const at::Tensor& x, const c10::List<OptTensor>& linears,
                                           at::IntArrayRef out_features, at::TensorList norms, double eps,
                                           const at::Tensor& cache, int64_t step, bool conv_softmax, bool glu,
                                           const OptTensor& key, const OptTensor& value,
                                           const OptTensor& key_padding_mask, double scaling, bool normalize_before) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && x.requires_grad()),
              "lightconv_decoder_step is for inference and has no gradient, but its input requires grad: call it "
              "under torch.no_grad() or torch.inference_mode()");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kaleidoscope::lightconv_decoder_step", "")
                             .typed<decltype(lightconv_decoder_step_impl)>();
  at::Tensor out;
  {
    at::AutoGradMode no_grad(false);  // the parameters require grad; this step records nothing
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(x, linears, out_features, norms, eps, cache, step, conv_softmax, glu, key, value, key_padding_mask,
                  scaling, normalize_before);
  }
  cache.unsafeGetTensorImpl()->bump_version();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CPU, m) { m.impl("lightconv_decoder_step", &lightconv_decoder_step_impl); }

TORCH_LIBRARY_IMPL(kaleidoscope, Autograd, m) { m.impl("lightconv_decoder_step", &lightconv_decoder_step_autograd); }

}  // namespace kaleidoscope
