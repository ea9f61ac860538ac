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
