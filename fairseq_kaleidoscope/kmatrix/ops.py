"""The K-matrix ops: compiled kernels where they apply, the plain-PyTorch reference elsewhere.

The compiled ops (``torch.ops.kaleidoscope.*``, declared in ``csrc/kaleidoscope.cpp``) get
their autograd formula and fake (meta) kernel here, so they work with autograd and
``torch.compile``. The C++ kernels check their arguments (ValueError / TypeError naming the
problem); the Python checks below run only where no C++ does: the fake kernels and the
reference fallback. Without the compiled extension everything runs on the reference, after
one warning; a device or dtype without a kernel warns once per (device, dtype).
"""

from __future__ import annotations

import functools
import warnings

import torch

from .._extension import HAS_EXTENSION, has_kernel
from .reference import butterfly_multiply_ref, kmatrix_linear_ref

COMPILED_DTYPES = frozenset((torch.float32, torch.float64))
# CUDA kernels (csrc/cuda, built when setup.py finds CUDA): these dtypes, float32 arithmetic,
# n up to CUDA_MAX_N; twiddle and bias in the input's dtype.
CUDA_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16))
CUDA_MAX_N = 8192
HAS_CUDA_KERNELS = has_kernel("kaleidoscope::butterfly_multiply", "CUDA")
# Looked up once: resolving torch.ops.kaleidoscope.<op>.default costs about 1 µs per call.
_BUTTERFLY_OP = torch.ops.kaleidoscope.butterfly_multiply.default if HAS_EXTENSION else None
_KMATRIX_LINEAR_OP = torch.ops.kaleidoscope.kmatrix_linear.default if HAS_EXTENSION else None


def check_butterfly_args(twiddle: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Raise a ValueError (TypeError for dtypes) naming the problem if the arguments do not fit together."""
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


def check_kmatrix_linear_args(
    x: torch.Tensor, twiddle: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> None:
    """The checks of ``csrc/kmatrix_linear.cpp``, for the fake kernel and the reference fallback."""
    if twiddle.dim() != 6:
        raise ValueError(
            "kmatrix_linear: twiddle must have shape (nstacks, nbutterflies, log2 n, n/2, 2, 2), "
            f"got {tuple(twiddle.shape)}"
        )
    nstacks, n = twiddle.shape[0], 2 * twiddle.shape[3]
    if x.dim() < 1:
        raise ValueError("kmatrix_linear: input must have at least one dimension")
    if not 1 <= x.shape[-1] <= n:
        raise ValueError(f"kmatrix_linear: input has {x.shape[-1]} features, the K-matrix size is n = {n}")
    if not 1 <= out_features <= nstacks * n:
        raise ValueError(f"kmatrix_linear: out_features = {out_features} is not in [1, nstacks * n = {nstacks * n}]")
    if x.dtype != twiddle.dtype:
        raise TypeError(
            f"kmatrix_linear: input dtype {x.dtype} differs from the twiddle's (the layer's) {twiddle.dtype} "
            "(convert one with .to(dtype))"
        )
    if x.device != twiddle.device:
        raise ValueError(f"kmatrix_linear: input is on {x.device} but the twiddle (the layer) is on {twiddle.device}")
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(f"kmatrix_linear: bias must have shape ({out_features}), got {tuple(bias.shape)}")
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"kmatrix_linear: bias dtype {bias.dtype} differs from the input's {x.dtype}")
    if bias is not None and bias.device != x.device:
        raise ValueError(f"kmatrix_linear: bias is on {bias.device} but the input is on {x.device}")


def uses_compiled_kernel(x: torch.Tensor) -> bool:
    """Whether :func:`butterfly_multiply` and :func:`kmatrix_linear` run a compiled kernel for this input."""
    if x.is_cpu:
        return HAS_EXTENSION and x.dtype in COMPILED_DTYPES
    return (
        x.device.type == "cuda" and HAS_CUDA_KERNELS and x.dtype in CUDA_DTYPES and x.dim() > 0
        and x.shape[-1] <= CUDA_MAX_N
    )  # fmt: skip


@functools.cache
def _warn_reference_fallback(device_type: str, dtype: torch.dtype) -> None:
    if device_type == "cuda" and not HAS_CUDA_KERNELS:
        why = "this build has no CUDA kernels (rebuild on a machine with nvcc, or with KALEIDOSCOPE_CUDA=1)"
    elif device_type == "cuda":
        why = f"the CUDA kernels cover {', '.join(map(str, sorted(CUDA_DTYPES, key=str)))} and n <= {CUDA_MAX_N}"
    else:
        why = f"the {device_type} kernels cover {', '.join(map(str, sorted(COMPILED_DTYPES, key=str)))}"
    warnings.warn(
        f"fairseq_kaleidoscope: no compiled K-matrix kernel for {dtype} on {device_type} ({why}); running the "
        "plain-PyTorch reference, typically 30-60x slower. (Warned once per device and dtype.)",
        RuntimeWarning,
        stacklevel=3,
    )


def _reference_fallback(x: torch.Tensor) -> None:
    # Real floating types are the ones a kernel could be expected for (complex is fit.py's,
    # meta tensors compute nothing, and a build without the extension already warned on import).
    if HAS_EXTENSION and x.is_floating_point() and not x.is_meta:
        _warn_reference_fallback(x.device.type, x.dtype)


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
    Differentiable (first derivatives) with respect to ``twiddle``, ``x`` and ``bias``.
    """
    if uses_compiled_kernel(x):
        if _needs_grad(twiddle, x, bias) or torch.compiler.is_compiling():
            return _BUTTERFLY_OP(twiddle, x, bias, increasing_stride)
        # No gradient wanted: skip the Python autograd kernel (~5 µs, more than the kernel at batch 1).
        with torch._C._AutoDispatchBelowAutograd():
            return _BUTTERFLY_OP(twiddle, x, bias, increasing_stride)
    _reference_fallback(x)
    check_butterfly_args(twiddle, x, bias)
    out = butterfly_multiply_ref(twiddle, x, increasing_stride)
    return out if bias is None else out + bias


def kmatrix_linear(
    x: torch.Tensor, twiddle: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """``KaleidoscopeLinear``'s forward: ``x`` (..., in_features) -> (..., out_features).

    Zero-pads ``x`` to ``n``, applies the ``nstacks`` K-matrices of ``twiddle`` side by side
    (decreasing stride order), keeps the first ``out_features`` rows and adds ``bias``
    (``out_features``,). One compiled op call wherever a kernel applies, with or without
    autograd; :func:`~.reference.kmatrix_linear_ref` elsewhere.
    """
    if uses_compiled_kernel(x):
        return _KMATRIX_LINEAR_OP(x, twiddle, bias, out_features)
    _reference_fallback(x)
    check_kmatrix_linear_args(x, twiddle, bias, out_features)
    return kmatrix_linear_ref(x, twiddle, bias, out_features)


if HAS_EXTENSION:

    @torch.library.register_fake("kaleidoscope::butterfly_multiply")
    def _butterfly_multiply_fake(twiddle, x, bias, increasing_stride):
        check_butterfly_args(twiddle, x, bias)
        return x.new_empty(x.shape)

    @torch.library.register_fake("kaleidoscope::butterfly_multiply_backward")
    def _butterfly_multiply_backward_fake(grad, twiddle, x, increasing_stride):
        check_butterfly_args(twiddle, x)
        if grad.shape != x.shape:
            raise ValueError(f"butterfly_multiply_backward: grad shape {tuple(grad.shape)} differs from input shape "
                             f"{tuple(x.shape)}")  # fmt: skip
        return twiddle.new_empty(twiddle.shape), x.new_empty(x.shape)

    @torch.library.register_fake("kaleidoscope::kmatrix_linear")
    def _kmatrix_linear_fake(x, twiddle, bias, out_features):
        check_kmatrix_linear_args(x, twiddle, bias, out_features)
        # The strides of the C++ plumbing: dropped rows leave a strided view unless a bias is added.
        width = twiddle.shape[0] * 2 * twiddle.shape[3]
        y = x.new_empty((x.reshape(-1, x.shape[-1]).shape[0], width))
        if out_features != width:
            y = y.narrow(1, 0, out_features)
            if bias is not None:
                y = y + bias
        return y.reshape(*x.shape[:-1], out_features)

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

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            "butterfly_multiply: second derivatives are not implemented (the backward op has no gradient "
            "formula). Double backward (create_graph=True followed by another backward, gradgradcheck, "
            "Hessian-vector products) through a K-matrix is not supported."
        )

    # Without this, autograd would treat butterfly_multiply_backward as a constant under
    # create_graph=True and second derivatives would come out silently wrong.
    torch.library.register_autograd("kaleidoscope::butterfly_multiply_backward", _no_double_backward)
