// Operator schemas of the `kaleidoscope` library and the Python module stub that
// loads them. Device implementations live in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing fairseq_kaleidoscope._C runs the static TORCH_LIBRARY registrations below;
// the module itself exposes nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(kaleidoscope, m) {
  // Each op names the Python module that registers its fake (meta) kernel and autograd formula:
  // torch imports it when the op is used before it (e.g. torch.ops.kaleidoscope.* called directly).
  m.set_python_module("fairseq_kaleidoscope.kmatrix.ops");
  // twiddle: (nstacks, nbutterflies, log2 n, n/2, 2, 2); input: (batch, nstacks, n);
  // bias: (nstacks, n) or None. Returns (batch, nstacks, n), contiguous.
  // Conventions: fairseq_kaleidoscope/kmatrix/reference.py.
  m.def("butterfly_multiply(Tensor twiddle, Tensor input, Tensor? bias, bool increasing_stride) -> Tensor");
  // Returns (grad_twiddle, grad_input). The bias gradient is grad.sum(0), left to the caller.
  // First derivatives only: its own backward (a second derivative) raises.
  m.def(
      "butterfly_multiply_backward(Tensor grad, Tensor twiddle, Tensor input, bool increasing_stride)"
      " -> (Tensor, Tensor)");
  // KaleidoscopeLinear's forward (pad, stacks, butterflies, bias, keep out_features rows) in one
  // call: x (..., in_features) with in_features <= n; returns (..., out_features). Differentiable
  // through butterfly_multiply (csrc/kmatrix_linear.cpp). Reference: kmatrix/reference.py.
  m.def("kmatrix_linear(Tensor x, Tensor twiddle, Tensor? bias, int out_features) -> Tensor");
  // CPU kernel selection, for tests and benchmarks: isa in {auto, avx512, avx2, portable},
  // path in {auto, tiles, small}. get_cpu_kernel returns [isa in use, path, supported isas].
  // The isa applies to dynconv_step too (which has AVX2 and portable code; avx512 runs AVX2).
  m.def("set_cpu_kernel(str isa, str path) -> ()");
  m.def("get_cpu_kernel() -> str[]");
  // One causal dynamic-convolution decoding step (inference only): writes x (B, C) into slot
  // step % K of the ring buffer cache (B, K, C), then returns y (B, C) with
  // y[b, c] = sum_k w[b, h(c), k] * input[step - (K-1) + k][b, c] (positions < 0 skipped),
  // w = softmax over K of logits (B, H, K) or (B, H*K) if softmax, else logits. float32, CPU.
  // Reference: fairseq_kaleidoscope/modules/dynconv_step.py.
  m.set_python_module("fairseq_kaleidoscope.modules.dynconv_step");
  m.def("dynconv_step(Tensor x, Tensor logits, Tensor(a!) cache, int step, bool softmax) -> Tensor");
  // One decoding position through a LightConv decoder layer (inference only): x (B, C) -> (B, C).
  // linears: (weight, bias) of conv_in, conv_weight, conv_out, attn_q, attn_out, fc1, fc2; a weight
  // of rank 2 is dense, of rank 6 a K-matrix twiddle (out_features then says how many rows to
  // keep). int8_linears: none, or per sub-layer the packed int8 parameters (weight and bias) of a
  // dynamic-quantized linear, which then stand for its (weight, bias) pair in linears. norms:
  // (weight, bias) of the conv, attention and final layer norms. key, value: (R, H, S, D), shared
  // by the B / R consecutive hypotheses of a row; key_padding_mask (R, S).
  // Reference: LightConvDecoderLayer.step_reference (fairseq_kaleidoscope/modules/lightconv_layers.py).
  m.set_python_module("fairseq_kaleidoscope.modules.fused_decoder_step");
  m.def(
      "lightconv_decoder_step(Tensor x, Tensor?[] linears, "
      "__torch__.torch.classes.quantized.LinearPackedParamsBase?[] int8_linears, int[] out_features, "
      "Tensor[] norms, float eps, Tensor(a!) cache, int step, bool conv_softmax, bool glu, Tensor? key, "
      "Tensor? value, Tensor? key_padding_mask, float scaling, bool normalize_before) -> Tensor");
}
