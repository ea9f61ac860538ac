// One incremental-decoding step of the causal dynamic convolution (DynamicConv), on CPU,
// in a single call: write x into the ring buffer, normalise the taps, convolve.
// Inference only (no autograd formula). Reference and conventions:
// fairseq_kaleidoscope/modules/dynconv_step.py (dynconv_step_ref).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "butterfly_kernels.h"

namespace kaleidoscope {
namespace {

struct StepProblem {
  const float* x;       // (B, C) contiguous
  const float* logits;  // (B, H, K) contiguous
  float* cache;         // (B, K, C) contiguous ring buffer; slot p % K holds position p
  float* out;           // (B, C) contiguous
  int64_t C, H, K, step;
  bool softmax;
};

// Rows [begin, end) of the batch. always_inline so that each target-specific wrapper below
// gets its own copy, compiled (and vectorised) for that target.
__attribute__((always_inline)) inline void dynconv_rows(const StepProblem& P, int64_t begin, int64_t end) {
  const int64_t C = P.C, H = P.H, K = P.K, R = C / H;
  const int64_t slot_now = P.step % K;
  // Tap k multiplies position step-(K-1)+k, held in slot (step+1+k) % K. Positions before
  // the sequence start (k < K-1-step) are skipped, not multiplied by the buffer's content,
  // so the result never depends on slots that were not written in this sequence.
  const int64_t k0 = std::max<int64_t>(0, K - 1 - P.step);
  float w_small[256];
  std::vector<float> w_big;
  float* w = w_small;  // (H, K) normalised taps of one row
  if (H * K > 256) {
    w_big.resize(H * K);
    w = w_big.data();
  }
  for (int64_t b = begin; b < end; ++b) {
    float* cache_b = P.cache + b * K * C;
    std::memcpy(cache_b + slot_now * C, P.x + b * C, C * sizeof(float));
    const float* lg = P.logits + b * H * K;
    for (int64_t h = 0; h < H; ++h) {
      const float* l = lg + h * K;
      float* wh = w + h * K;
      if (P.softmax) {  // over all K taps, as in training
        float mx = l[0];
        for (int64_t k = 1; k < K; ++k) mx = std::max(mx, l[k]);
        float sum = 0.f;
        for (int64_t k = 0; k < K; ++k) {
          wh[k] = std::exp(l[k] - mx);
          sum += wh[k];
        }
        const float inv = 1.f / sum;
        for (int64_t k = k0; k < K; ++k) wh[k] *= inv;
      } else {
        for (int64_t k = k0; k < K; ++k) wh[k] = l[k];
      }
    }
    // Taps outer, channels inner: the row's K*C inputs are read once, in slot order (at
    // large batch the cache does not fit in the caches and this is a stream from memory);
    // the C outputs stay in L1 and are loaded and stored once per 4 taps.
    float* __restrict y = P.out + b * C;
    std::memset(y, 0, C * sizeof(float));
    int64_t k = k0;
    for (; k + 4 <= K; k += 4) {
      const float* s0 = cache_b + ((P.step + 1 + k) % K) * C;
      const float* s1 = cache_b + ((P.step + 2 + k) % K) * C;
      const float* s2 = cache_b + ((P.step + 3 + k) % K) * C;
      const float* s3 = cache_b + ((P.step + 4 + k) % K) * C;
      for (int64_t h = 0; h < H; ++h) {
        const float* wh = w + h * K + k;
        const float w0 = wh[0], w1 = wh[1], w2 = wh[2], w3 = wh[3];
        float* __restrict yh = y + h * R;
        const float *__restrict p0 = s0 + h * R, *__restrict p1 = s1 + h * R;
        const float *__restrict p2 = s2 + h * R, *__restrict p3 = s3 + h * R;
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) yh[r] += (w0 * p0[r] + w1 * p1[r]) + (w2 * p2[r] + w3 * p3[r]);
      }
    }
    for (; k < K; ++k) {
      const float* src = cache_b + ((P.step + 1 + k) % K) * C;
      for (int64_t h = 0; h < H; ++h) {
        const float wk = w[h * K + k];
        float* __restrict yh = y + h * R;
        const float* __restrict sh = src + h * R;
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) yh[r] += wk * sh[r];
      }
    }
  }
}

void dynconv_rows_portable(const StepProblem& P, int64_t begin, int64_t end) { dynconv_rows(P, begin, end); }

#if defined(__x86_64__) || defined(__i386__)
// The same loops with 8-float vectors and FMA; called only where the CPU has both.
__attribute__((target("avx2,fma"))) void dynconv_rows_avx2(const StepProblem& P, int64_t begin, int64_t end) {
  dynconv_rows(P, begin, end);
}
#endif

using RowsFn = void (*)(const StepProblem&, int64_t, int64_t);

// Follows set_cpu_kernel's instruction set, so that tests can force the portable code.
RowsFn rows_fn() {
#if defined(__x86_64__) || defined(__i386__)
  if (cpu::active_isa_uses_avx2()) return &dynconv_rows_avx2;
#endif
  return &dynconv_rows_portable;
}

at::Tensor dynconv_step_cpu(const at::Tensor& x, const at::Tensor& logits, const at::Tensor& cache, int64_t step,
                            bool softmax) {
  // Typed errors (ValueError / TypeError in Python) that name the problem; the reference
  // (dynconv_step_ref) and the fake kernel raise the same from check_dynconv_step_args.
  TORCH_CHECK_VALUE(cache.dim() == 3, "dynconv_step: cache must have shape (batch, kernel_size, channels), got ",
                    cache.sizes());
  TORCH_CHECK_TYPE(cache.scalar_type() == at::kFloat, "dynconv_step: cache must be float32 (the reference ",
                   "dynconv_step_ref takes other dtypes), got ", cache.scalar_type());
  const auto check_like_cache = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK_TYPE(t.scalar_type() == cache.scalar_type(), "dynconv_step: ", name, " dtype ", t.scalar_type(),
                     " differs from cache dtype ", cache.scalar_type());
    TORCH_CHECK_VALUE(t.device().is_cpu(), "dynconv_step: ", name,
                      " must be on the CPU (this op has only a CPU kernel), got ", t.device());
  };
  check_like_cache("x", x);
  check_like_cache("logits", logits);
  check_like_cache("cache", cache);
  const int64_t B = cache.size(0), K = cache.size(1), C = cache.size(2);
  TORCH_CHECK_VALUE(K >= 1, "dynconv_step: kernel_size = cache.shape[1] must be >= 1, got ", K);
  TORCH_CHECK_VALUE(cache.is_contiguous(), "dynconv_step: cache must be contiguous (it is updated in place), ",
                    "got strides ", cache.strides());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) == B && x.size(1) == C, "dynconv_step: x shape ", x.sizes(),
                    " does not match cache shape ", cache.sizes(), "; expected (", B, ", ", C, ")");
  int64_t H = 0;
  if (logits.dim() == 3) {
    TORCH_CHECK_VALUE(logits.size(0) == B && logits.size(2) == K, "dynconv_step: logits shape ", logits.sizes(),
                      " does not match cache shape ", cache.sizes(), "; expected (", B, ", heads, ", K, ")");
    H = logits.size(1);
  } else {
    TORCH_CHECK_VALUE(logits.dim() == 2, "dynconv_step: logits must have shape (batch, heads, kernel_size) or ",
                      "(batch, heads*kernel_size), got ", logits.sizes());
    TORCH_CHECK_VALUE(logits.size(0) == B && logits.size(1) % K == 0, "dynconv_step: logits shape ", logits.sizes(),
                      " does not match cache shape ", cache.sizes(), "; expected (", B, ", heads * ", K, ")");
    H = logits.size(1) / K;
  }
  TORCH_CHECK_VALUE(H >= 1 && C % H == 0, "dynconv_step: channels ", C, " are not divisible by heads ", H);
  TORCH_CHECK_VALUE(step >= 0, "dynconv_step: step must be >= 0, got ", step);

  const at::Tensor xc = x.contiguous(), lc = logits.contiguous();
  at::Tensor out = at::empty({B, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (B == 0 || C == 0) {
    return out;
  }
  StepProblem P{xc.const_data_ptr<float>(), lc.const_data_ptr<float>(), cache.data_ptr<float>(),
                out.data_ptr<float>(),      C,  H,  K,  step, softmax};
  const RowsFn rows = rows_fn();
  // Rows of about 2^16 multiply-adds or more per task: at small batches (decoding at batch 1)
  // starting threads costs more than the whole step.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (K * C));
  if (B < 2 * grain) {
    rows(P, 0, B);  // one task: not even an OpenMP region
  } else {
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) { rows(P, begin, end); });
  }
  return out;
}

// Autograd key: there is no gradient, so refuse inputs that want one (instead of the
// default fallback, which returns an output whose backward silently gives no gradient),
// mark the cache as modified in place, and go on to the device kernel.
at::Tensor dynconv_step_autograd(const at::Tensor& x, const at::Tensor& logits, const at::Tensor& cache, int64_t step,
                                 bool softmax) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && (x.requires_grad() || logits.requires_grad() || cache.requires_grad())),
              "dynconv_step is for inference and has no gradient, but an input requires grad: call it under "
              "torch.no_grad() or torch.inference_mode() (training uses DynamicConv's full-sequence forward)");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kaleidoscope::dynconv_step", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool)>();
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(x, logits, cache, step, softmax);
  }
  cache.unsafeGetTensorImpl()->bump_version();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kaleidoscope, CPU, m) { m.impl("dynconv_step", &dynconv_step_cpu); }

TORCH_LIBRARY_IMPL(kaleidoscope, Autograd, m) { m.impl("dynconv_step", &dynconv_step_autograd); }

}  // namespace kaleidoscope
