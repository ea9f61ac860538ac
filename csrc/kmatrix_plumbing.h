// kmatrix_linear's plumbing around the butterflies, shared by the composite kernel
// (kmatrix_linear.cpp, any device, differentiable) and the CPU inference kernel
// (cpu/butterfly_cpu.cpp). Meaning: kmatrix_linear_ref (fairseq_kaleidoscope/kmatrix/reference.py).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/constant_pad_nd.h>

#include <optional>
#include <vector>

namespace kaleidoscope {

// x (..., in_features) as (rows, n), zero-padded on the right where in_features < n.
inline at::Tensor kmatrix_input_rows(const at::Tensor& x, int64_t n) {
  const int64_t in_features = x.size(-1);
  const at::Tensor rows = x.dim() == 2 ? x : x.reshape({-1, in_features});
  return in_features == n ? rows : at::constant_pad_nd(rows, {0, n - in_features}, 0);
}

// The butterflies' (rows, nstacks * n) output as kmatrix_linear returns it: its first
// out_features columns, plus the bias where the kernel did not fuse it, in x's leading shape.
inline at::Tensor kmatrix_output(at::Tensor y, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                 int64_t out_features, bool bias_fused) {
  if (out_features != y.size(1)) {
    y = y.narrow(1, 0, out_features);
  }
  if (bias.has_value() && !bias_fused) {
    y = at::add(y, *bias);
  }
  if (x.dim() == 2) {
    return y;
  }
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = out_features;
  return y.reshape(sizes);
}

}  // namespace kaleidoscope
