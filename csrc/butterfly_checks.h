// Argument checks shared by every device implementation of the butterfly ops, so that
// a direct call of torch.ops.kaleidoscope.* fails with a message, never a crash. Typed:
// a wrong shape, size or device raises ValueError in Python, a wrong dtype TypeError.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <optional>

namespace kaleidoscope {

inline int64_t log2_exact(int64_t n) {
  int64_t k = 0;
  while ((int64_t{1} << k) < n) ++k;
  return k;
}

inline void check_butterfly_args(const at::Tensor& twiddle, const at::Tensor& input,
                                 const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(input.dim() == 3, "butterfly_multiply: input must have shape (batch, nstacks, n), got ",
                    input.sizes());
  TORCH_CHECK_VALUE(twiddle.dim() == 6,
                    "butterfly_multiply: twiddle must have shape (nstacks, nbutterflies, log2 n, n/2, 2, 2), got ",
                    twiddle.sizes());
  const int64_t n = input.size(2);
  TORCH_CHECK_VALUE(n >= 2 && (n & (n - 1)) == 0,
                    "butterfly_multiply: n = input.size(-1) must be a power of two >= 2, got ", n);
  const int64_t log_n = log2_exact(n);
  TORCH_CHECK_VALUE(twiddle.size(0) == input.size(1) && twiddle.size(2) == log_n && twiddle.size(3) == n / 2 &&
                        twiddle.size(4) == 2 && twiddle.size(5) == 2,
                    "butterfly_multiply: twiddle shape ", twiddle.sizes(), " does not match input shape ",
                    input.sizes(), "; expected (", input.size(1), ", nbutterflies, ", log_n, ", ", n / 2, ", 2, 2)");
  TORCH_CHECK_VALUE(twiddle.size(1) >= 1, "butterfly_multiply: twiddle needs at least one butterfly, got shape ",
                    twiddle.sizes());
  TORCH_CHECK_TYPE(twiddle.scalar_type() == input.scalar_type(), "butterfly_multiply: twiddle dtype ",
                   twiddle.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(twiddle.device() == input.device(), "butterfly_multiply: twiddle is on ", twiddle.device(),
                    " but input is on ", input.device());
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 2 && b.size(0) == input.size(1) && b.size(1) == n,
                      "butterfly_multiply: bias must have shape (nstacks, n) = (", input.size(1), ", ", n, "), got ",
                      b.sizes());
    TORCH_CHECK_TYPE(b.scalar_type() == input.scalar_type(), "butterfly_multiply: bias dtype ", b.scalar_type(),
                     " differs from input dtype ", input.scalar_type());
    TORCH_CHECK_VALUE(b.device() == input.device(), "butterfly_multiply: bias is on ", b.device(), " but input is on ",
                      input.device());
  }
}

// kmatrix_linear(x, twiddle, bias, out_features): x (..., in_features <= n) -> (..., out_features).
inline void check_kmatrix_linear_args(const at::Tensor& x, const at::Tensor& twiddle,
                                      const std::optional<at::Tensor>& bias, int64_t out_features) {
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
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), "kmatrix_linear: bias dtype ", bias->scalar_type(),
                     " differs from the input's ", x.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == x.device(), "kmatrix_linear: bias is on ", bias->device(),
                      " but the input is on ", x.device());
  }
}

inline void check_butterfly_backward_args(const at::Tensor& grad, const at::Tensor& twiddle,
                                          const at::Tensor& input) {
  check_butterfly_args(twiddle, input, std::nullopt);
  TORCH_CHECK_VALUE(grad.sizes() == input.sizes(), "butterfly_multiply_backward: grad shape ", grad.sizes(),
                    " differs from input shape ", input.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == input.scalar_type(), "butterfly_multiply_backward: grad dtype ",
                   grad.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == input.device(), "butterfly_multiply_backward: grad is on ", grad.device(),
                    " but input is on ", input.device());
}

}  // namespace kaleidoscope
