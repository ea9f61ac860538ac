// kaleidoscope::lightconv_decoder_step: one decoding position through a whole LightConv decoder
// layer (eval mode) in one op call.
//
// At batch 1 a layer step is about thirty small ops, and from Python each costs more than its
// arithmetic. Here the same ops run from C++: conv block (linear1, optional GLU, dynconv_step on
// the ring buffer, linear2), encoder attention over keys and values projected once per sentence
// (a beam's hypotheses share one row), the FFN, layer norms and residuals. Each linear
// sub-layer is dense (weight of rank 2, (out, in)), a K-matrix (twiddle of rank 6, run by
// kmatrix_linear) or int8 (packed parameters of PyTorch's dynamic quantization, run by
// quantized::linear_dynamic as torch.ao.nn.quantized.dynamic.Linear runs them). Inference only.
// Plain-PyTorch meaning: LightConvDecoderLayer.step_reference
// (fairseq_kaleidoscope/modules/lightconv_layers.py); the same products in the same order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/quantized/PackedParams.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace kaleidoscope {
namespace {

// Order of the (weight, bias) pairs in `linears`.
enum Sublayer { kConvIn, kConvWeight, kConvOut, kAttnQ, kAttnOut, kFc1, kFc2, kSublayers };

using OptTensor = std::optional<at::Tensor>;
using KmatrixFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t);
using DynconvFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool);
using Packed = c10::intrusive_ptr<LinearPackedParamsBase>;
using Int8Fn = at::Tensor(at::Tensor, const Packed&, bool);  // quantized::linear_dynamic, as registered

struct Linears {
  const c10::List<OptTensor>& list;
  const c10::List<std::optional<Packed>>& int8;  // empty, or one entry per sub-layer
  at::IntArrayRef out_features;

  at::Tensor operator()(Sublayer s, const at::Tensor& x) const {
    if (!int8.empty()) {
      if (const std::optional<Packed> packed = int8.get(s); packed.has_value()) {
        // reduce_range=True: what torch.ao.nn.quantized.dynamic.Linear (version 4) passes for qint8.
        static const auto op = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("quantized::linear_dynamic", "")
                                   .typed<Int8Fn>();
        return op.call(x, *packed, true);
      }
    }
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

// LayerNorm(x + h) over the channels of float32 (B, C) rows: two passes and one allocation. At
// batch 1 ATen's add and layer_norm (which also returns its mean and rstd) cost several times
// this arithmetic. Statistics in double, two-pass (mean, then the centred sum of squares); they
// differ from ATen's in the last bits.
at::Tensor add_layer_norm(const at::Tensor& x, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                          double eps) {
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat && h.scalar_type() == at::kFloat &&
                       weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat,
                   "lightconv_decoder_step: a post-norm layer (normalize_before=False) runs in float32; got x ",
                   x.scalar_type(), ", layer-norm weight ", weight.scalar_type());
  TORCH_CHECK_VALUE(h.sizes() == x.sizes() && weight.numel() == C && bias.numel() == C,
                    "lightconv_decoder_step: layer-norm weight and bias must have ", C, " elements, got ",
                    weight.numel(), " and ", bias.numel());
  const at::Tensor xc = x.contiguous(), hc = h.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  at::Tensor out = at::empty({B, C}, x.options());
  const float *px = xc.const_data_ptr<float>(), *ph = hc.const_data_ptr<float>();
  const float *pw = wc.const_data_ptr<float>(), *pb = bc.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* o = po + r * C;
      double sum = 0;
      for (int64_t i = 0; i < C; ++i) {
        o[i] = px[r * C + i] + ph[r * C + i];
        sum += o[i];
      }
      const double mean = sum / C;
      double squares = 0;
      for (int64_t i = 0; i < C; ++i) {
        const double d = o[i] - mean;
        squares += d * d;
      }
      const float m = static_cast<float>(mean), rstd = static_cast<float>(1.0 / std::sqrt(squares / C + eps));
      for (int64_t i = 0; i < C; ++i) o[i] = (o[i] - m) * rstd * pw[i] + pb[i];
    }
  });
  return out;
}

at::Tensor lightconv_decoder_step_impl(const at::Tensor& x_in, const c10::List<OptTensor>& linears,
                                       const c10::List<std::optional<Packed>>& int8_linears,
                                       at::IntArrayRef out_features, at::TensorList norms, double eps,
                                       const at::Tensor& cache, int64_t step, bool conv_softmax, bool glu,
                                       const OptTensor& key, const OptTensor& value, const OptTensor& key_padding_mask,
                                       double scaling, bool normalize_before) {
  TORCH_CHECK_VALUE(x_in.dim() == 2, "lightconv_decoder_step: x must be (batch, channels), got ", x_in.sizes());
  TORCH_CHECK_VALUE(linears.size() == 2 * kSublayers && out_features.size() == kSublayers,
                    "lightconv_decoder_step: expected ", 2 * kSublayers, " linears (weight, bias per sub-layer) and ",
                    static_cast<int>(kSublayers), " out_features, got ", linears.size(), " and ", out_features.size());
  TORCH_CHECK_VALUE(int8_linears.empty() || int8_linears.size() == kSublayers, "lightconv_decoder_step: expected ",
                    static_cast<int>(kSublayers), " int8_linears (one per sub-layer) or none, got ",
                    int8_linears.size());
  TORCH_CHECK_VALUE(norms.size() == 6, "lightconv_decoder_step: expected 6 layer-norm tensors, got ", norms.size());
  const Linears linear{linears, int8_linears, out_features};
  const int64_t C = x_in.size(1);
  const auto norm = [&](int i, const at::Tensor& t) { return at::layer_norm(t, {C}, norms[2 * i], norms[2 * i + 1], eps); };
  // Residual: x + h, then (post-norm) the sub-layer's norm, fused.
  const auto residual = [&](int i, const at::Tensor& x, const at::Tensor& h) {
    return normalize_before ? x + h : add_layer_norm(x, h, norms[2 * i], norms[2 * i + 1], eps);
  };
  static const auto dynconv =
      c10::Dispatcher::singleton().findSchemaOrThrow("kaleidoscope::dynconv_step", "").typed<DynconvFn>();

  at::Tensor x = x_in;
  // Convolution block.
  at::Tensor h = linear(kConvIn, normalize_before ? norm(0, x) : x);
  if (glu) {
    h = at::glu(h, -1);
  }
  h = dynconv.call(h, linear(kConvWeight, h), cache, step, conv_softmax);
  x = residual(0, x, linear(kConvOut, h));
  // Encoder attention: key, value (R, H, S, D); hypothesis b reads row b / (B / R).
  if (key.has_value()) {
    TORCH_CHECK_VALUE(value.has_value() && key->dim() == 4 && key->is_contiguous() && value->sizes() == key->sizes() &&
                          value->is_contiguous(),
                      "lightconv_decoder_step: key and value must be contiguous (rows, heads, source length, head dim)");
    const int64_t B = x.size(0), R = key->size(0), H = key->size(1), D = key->size(3);
    TORCH_CHECK_VALUE(R >= 1 && B % R == 0 && H * D == C, "lightconv_decoder_step: ", B, " hypotheses cannot read ",
                      R, " rows of keys with ", H, " heads of ", D, " (channels ", C, ")");
    const int64_t G = B / R, S = key->size(2);
    h = linear(kAttnQ, normalize_before ? norm(1, x) : x);
    // bmm on (R * H, ...) views: at::matmul's broadcasting plumbing costs more than the product at batch 1.
    const at::Tensor q = h.view({R, G, H, D}).transpose(1, 2).reshape({R * H, G, D});  // a view when G == 1
    at::Tensor scores = at::bmm(q, key->view({R * H, S, D}).transpose(1, 2));
    // Scaled by a float tensor: a double Scalar costs a conversion and a copy per call; same product.
    scores.mul_(at::scalar_tensor(scaling, scores.options()));
    if (key_padding_mask.has_value()) {
      scores.view({R, H, G, S})
          .masked_fill_(key_padding_mask->view({R, 1, 1, S}), -std::numeric_limits<double>::infinity());
    }
    const at::Tensor out = at::bmm(at::softmax(scores, -1), value->view({R * H, S, D}));  // (R * H, G, D)
    x = residual(1, x, linear(kAttnOut, out.view({R, H, G, D}).transpose(1, 2).reshape({B, C})));
  }
  // Feed-forward.
  h = at::relu(linear(kFc1, normalize_before ? norm(2, x) : x));
  return residual(2, x, linear(kFc2, h));
}

// Autograd key: refuse inputs that want a gradient (there is none), redispatch below autograd (so
// the inputs' device picks the kernel, as for dynconv_step), and mark the ring buffer as modified
// in place.
at::Tensor lightconv_decoder_step_autograd(const at::Tensor& x, const c10::List<OptTensor>& linears,
                                           const c10::List<std::optional<Packed>>& int8_linears,
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
    out = op.call(x, linears, int8_linears, out_features, norms, eps, cache, step, conv_softmax, glu, key, value,
                  key_padding_mask, scaling, normalize_before);
  }
  cache.unsafeGetTensorImpl()->bump_version();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CPU, m) { m.impl("lightconv_decoder_step", &lightconv_decoder_step_impl); }

TORCH_LIBRARY_IMPL(kaleidoscope, Autograd, m) { m.impl("lightconv_decoder_step", &lightconv_decoder_step_autograd); }

}  // namespace kaleidoscope
