"""The butterfly multiply op: compiled kernels where they apply, the reference elsewhere.

The compiled ops (``torch.ops.kaleidoscope.*``, declared in ``csrc/kaleidoscope.cpp``)
get their autograd formula and fake (meta) kernel here, so they work with autograd
and ``torch.compile``. Without the compiled extension everything runs on
:func:`~fairseq_kaleidoscope.kmatrix.reference.butterfly_multiply_ref`, after one warning.
"""

from __future__ import annotations

import torch

from .._extension import HAS_EXTENSION
from .reference import butterfly_multiply_ref

COMPILED_DTYPES = (torch.float32, torch.float64)
# CUDA kernels (csrc/cuda, built when setup.py finds CUDA): these dtypes, float32 arithmetic,
# n up to CUDA_MAX_N; twiddle and bias in the input's dtype.
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA_MAX_N = 8192
HAS_CUDA_KERNELS = HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key(
    "kaleidoscope::butterfly_multiply", "CUDA"
)
# KaleidoscopeLinear's whole inference forward as one op (csrc/kmatrix_linear.cpp), CPU only.
HAS_LINEAR_OP = HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("kaleidoscope::kmatrix_linear", "CPU")
CPU_LINEAR_DTYPES = frozenset(COMPILED_DTYPES)
# Looked up once: resolving torch.ops.kaleidoscope.kmatrix_linear.default costs about 1 µs per call.
KMATRIX_LINEAR_OP = torch.ops.kaleidoscope.kmatrix_linear.default if HAS_LINEAR_OP else None


def check_butterfly_args(twiddle: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Raise a ValueError naming the problem if the arguments do not fit together."""
    if x.dim() != 3:
        raise ValueError(f"butterfly_multiply: input must have shape (batch, nstacks, n), got {tuple(x.shape)}")
    if twiddle.dim() != 6:
        raise ValueError(
            "butterfly_multiply: twiddle must have shape (nstacks, nbutterflies, log2 n, n/2, 2, 2), "
            f"got {tuple(twiddle.shape)}"
        )
    n = x.shape[-1]
    if n < 2 or n & (n - 1):
        raise ValueError(f"butterfly_multiply: n = input.shape[-1] must be a power of two >= 2, got {n}")
    expected = (x.shape[1], twiddle.shape[1], n.bit_length() - 1, n // 2, 2, 2)
    if tuple(twiddle.shape) != expected or twiddle.shape[1] < 1:
        raise ValueError(
            f"butterfly_multiply: twiddle shape {tuple(twiddle.shape)} does not match input shape "
            f"{tuple(x.shape)}; expected ({x.shape[1]}, nbutterflies >= 1, {n.bit_length() - 1}, {n // 2}, 2, 2)"
        )
    for name, t in (("twiddle", twiddle), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"butterfly_multiply: {name} dtype {t.dtype} differs from input dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"butterfly_multiply: {name} is on {t.device} but input is on {x.device}")
    if bias is not None and tuple(bias.shape) != (x.shape[1], n):
        raise ValueError(f"butterfly_multiply: bias must have shape {(x.shape[1], n)}, got {tuple(bias.shape)}")


def uses_compiled_kernel(x: torch.Tensor) -> bool:
    """Whether :func:`butterfly_multiply` runs a compiled kernel for this input."""
    if x.device.type == "cuda":
        return HAS_CUDA_KERNELS and x.dtype in CUDA_DTYPES and x.dim() > 0 and x.shape[-1] <= CUDA_MAX_N
    return HAS_EXTENSION and x.device.type == "cpu" and x.dtype in COMPILED_DTYPES


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def butterfly_multiply(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the butterflies in ``twiddle`` to ``x`` (batch, nstacks, n), then add ``bias``.

    Conventions are documented in :mod:`fairseq_kaleidoscope.kmatrix.reference`.
    Differentiable with respect to ``twiddle``, ``x`` and ``bias``.
    """
    if uses_compiled_kernel(x):
        op = torch.ops.kaleidoscope.butterfly_multiply.default
        # (A twiddle or bias on another device, e.g. meta, would dispatch elsewhere: checks first.)
        same_device = twiddle.device == x.device and (bias is None or bias.device == x.device)
        if not same_device or _needs_grad(twiddle, x, bias) or torch.compiler.is_compiling():
            check_butterfly_args(twiddle, x, bias)
            return op(twiddle, x, bias, increasing_stride)
        return butterfly_multiply_no_grad(twiddle, x, increasing_stride, bias)
    check_butterfly_args(twiddle, x, bias)
    out = butterfly_multiply_ref(twiddle, x, increasing_stride)
    return out if bias is None else out + bias


def butterfly_multiply_no_grad(
    twiddle: torch.Tensor,
    x: torch.Tensor,
    increasing_stride: bool,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The compiled op for decoding: no autograd kernel, no Python checks.

    For callers that know ``uses_compiled_kernel(x)`` holds and no gradient is wanted.
    The Python autograd kernel and checks cost about 5 µs per call, more than the kernel
    takes at batch 1; the op checks the same things, and a failed check is re-raised with
    the Python error that names the problem.
    """
    try:
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.kaleidoscope.butterfly_multiply.default(twiddle, x, bias, increasing_stride)
    except RuntimeError:
        check_butterfly_args(twiddle, x, bias)
        raise


if HAS_EXTENSION:

    @torch.library.register_fake("kaleidoscope::butterfly_multiply")
    def _butterfly_multiply_fake(twiddle, x, bias, increasing_stride):
        return x.new_empty(x.shape)

    @torch.library.register_fake("kaleidoscope::butterfly_multiply_backward")
    def _butterfly_multiply_backward_fake(grad, twiddle, x, increasing_stride):
        return twiddle.new_empty(twiddle.shape), x.new_empty(x.shape)

    def _setup_context(ctx, inputs, output):
        twiddle, x, bias, increasing_stride = inputs
        ctx.save_for_backward(twiddle, x)
        ctx.increasing_stride = increasing_stride
        ctx.has_bias = bias is not None

    def _backward(ctx, grad):
        twiddle, x = ctx.saved_tensors
        grad_twiddle = grad_x = grad_bias = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_twiddle, grad_x = torch.ops.kaleidoscope.butterfly_multiply_backward(
                grad.contiguous(), twiddle, x, ctx.increasing_stride
            )
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_twiddle, grad_x, grad_bias, None

    torch.library.register_autograd("kaleidoscope::butterfly_multiply", _backward, setup_context=_setup_context)
