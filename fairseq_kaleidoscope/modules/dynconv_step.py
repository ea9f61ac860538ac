"""One incremental-decoding step of the causal dynamic convolution, as one op call.

During decoding :class:`~fairseq_kaleidoscope.modules.DynamicConv` sees one position at a
time; at batch 1 its cost is per-op overhead. :func:`dynconv_step` does the whole step in a
single call of the compiled ``torch.ops.kaleidoscope.dynconv_step`` (``csrc/cpu/
dynconv_step_cpu.cpp``) on a preallocated ring buffer; :func:`dynconv_step_ref` is the
plain-PyTorch definition it is tested against, used where the compiled op does not apply.

Conventions (shared by both):

- ``x``: (B, C) input of the current position; ``logits``: (B, H, K) or (B, H·K) raw taps
  predicted from it (``weight_linear(x)``); H heads of R = C/H channels each.
- ``cache``: (B, K, C) float32, contiguous, **zero-initialised by the caller** before the first
  step of a sequence; position p lives in slot p % K. Updated in place.
- ``step``: 0-based index of the current position. The step writes ``x`` into slot
  ``step % K`` and returns ``y[b, h·R + r] = Σ_k w[b, h, k] · input[step-(K-1)+k][b, h·R + r]``,
  ``w = softmax(logits over K)`` if ``softmax`` else ``logits``. Positions before the start
  (``step-(K-1)+k < 0``) contribute zero: the softmax still normalises over all K taps (as
  :class:`DynamicConv` does in training) and those taps are skipped, so the slots not yet
  written are never read.

Inference only: there is no gradient. Weight dropout is not applied (it is the identity
in eval mode).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._extension import has_kernel

_HAS_COMPILED_OP = has_kernel("kaleidoscope::dynconv_step", "CPU")


def has_compiled_dynconv_step() -> bool:
    """Whether the compiled CPU op ``torch.ops.kaleidoscope.dynconv_step`` is available."""
    return _HAS_COMPILED_OP


def _check_no_grad(x: Tensor, logits: Tensor, cache: Tensor) -> None:
    if torch.is_grad_enabled() and (x.requires_grad or logits.requires_grad or cache.requires_grad):
        raise RuntimeError(
            "dynconv_step is for inference and has no gradient, but an input requires grad: "
            "call it under torch.no_grad() or torch.inference_mode() (training uses DynamicConv's "
            "full-sequence forward)"
        )


def check_dynconv_step_args(x: Tensor, logits: Tensor, cache: Tensor, step: int) -> int:
    """Raise a ValueError/TypeError naming the problem; return the number of heads H.

    For the reference and the fake kernel only: the compiled op checks its arguments in C++.
    """
    if cache.dim() != 3:
        raise ValueError(
            f"dynconv_step: cache must have shape (batch, kernel_size, channels), got {tuple(cache.shape)}"
        )
    B, K, C = cache.shape
    if K < 1:
        raise ValueError(f"dynconv_step: kernel_size = cache.shape[1] must be >= 1, got {K}")
    if x.dim() != 2 or tuple(x.shape) != (B, C):
        raise ValueError(f"dynconv_step: x shape {tuple(x.shape)} does not match cache shape {tuple(cache.shape)}; "
                         f"expected ({B}, {C})")
    if logits.dim() not in (2, 3):
        raise ValueError("dynconv_step: logits must have shape (batch, heads, kernel_size) or "
                         f"(batch, heads*kernel_size), got {tuple(logits.shape)}")
    split = logits.dim() == 3
    H = logits.shape[1] if split else logits.shape[1] // K
    if tuple(logits.shape) != ((B, H, K) if split else (B, H * K)):
        raise ValueError(f"dynconv_step: logits shape {tuple(logits.shape)} does not match cache shape "
                         f"{tuple(cache.shape)}; expected ({B}, heads{', ' if split else ' * '}{K})")
    if H < 1 or C % H != 0:
        raise ValueError(f"dynconv_step: channels {C} are not divisible by heads {H}")
    for name, t in (("x", x), ("logits", logits)):
        if t.dtype != cache.dtype:
            raise TypeError(f"dynconv_step: {name} dtype {t.dtype} differs from cache dtype {cache.dtype}")
        if t.device != cache.device:
            raise ValueError(f"dynconv_step: {name} is on {t.device} but cache is on {cache.device}")
    if not cache.is_floating_point():
        raise TypeError(f"dynconv_step: cache must be a floating-point tensor, got {cache.dtype}")
    if step < 0:
        raise ValueError(f"dynconv_step: step must be >= 0, got {step}")
    return H


def dynconv_step(x: Tensor, logits: Tensor, cache: Tensor, step: int, softmax: bool = True) -> Tensor:
    """One decoding step: write ``x`` into ``cache`` (in place) and return the output (B, C).

    Runs the compiled op when ``cache`` is a CPU float32 tensor, :func:`dynconv_step_ref`
    otherwise (other dtypes, CUDA, no build). Conventions in the module docstring.
    Inference only: raises if an input requires grad while grad mode is on.
    """
    # Only the cache is looked at here (this runs per layer per decoding step, and every
    # Python-side test costs ~0.1 µs): the op checks x and logits itself, raising the same
    # ValueError / TypeError as the reference.
    if _HAS_COMPILED_OP and cache.is_cpu and cache.dtype is torch.float32:
        return torch.ops.kaleidoscope.dynconv_step.default(x, logits, cache, step, softmax)
    _check_no_grad(x, logits, cache)
    return dynconv_step_ref(x, logits, cache, step, softmax)


def dynconv_step_ref(x: Tensor, logits: Tensor, cache: Tensor, step: int, softmax: bool = True) -> Tensor:
    """Plain-PyTorch definition of :func:`dynconv_step` (any dtype and device); mutates ``cache``."""
    H = check_dynconv_step_args(x, logits, cache, step)
    B, K, C = cache.shape
    cache[:, step % K] = x
    w = logits.reshape(B, H, K)
    if softmax:
        w = torch.softmax(w, dim=-1)
    # Tap k reads position step-(K-1)+k (slot (step+1+k) % K); taps before the start are
    # dropped after the softmax, so unwritten slots are never read.
    k0 = max(0, K - 1 - step)
    slots = torch.arange(step + 1 + k0, step + 1 + K, device=cache.device) % K
    window = cache[:, slots].view(B, K - k0, H, C // H)
    y = torch.einsum("bhk,bkhr->bhr", w[:, :, k0:], window)
    return y.reshape(B, C)


def reorder_cache(cache: Tensor, new_order: Tensor, step: int) -> Tensor:
    """Reorder the beam rows of ``cache``: row b of the result is row ``new_order[b]``.

    ``step`` is the step of the last :func:`dynconv_step` call on this cache (-1 if none):
    only the min(step+1, K) written slots are copied. Returns ``cache`` itself, reordered
    in place, when ``new_order`` keeps the batch size, else a new (len(new_order), K, C)
    tensor (fairseq shrinks the batch when sentences finish): always use the return value.
    """
    if cache.dim() != 3:
        raise ValueError(
            f"reorder_cache: cache must have shape (batch, kernel_size, channels), got {tuple(cache.shape)}"
        )
    if new_order.dim() != 1:
        raise ValueError(f"reorder_cache: new_order must be 1-D, got shape {tuple(new_order.shape)}")
    if step < -1:
        raise ValueError(f"reorder_cache: step must be >= -1, got {step}")
    B, K, C = cache.shape
    if B == 1 and new_order.numel() == 1:  # greedy search at batch 1 reorders every step: the identity
        return cache
    filled = min(step + 1, K)
    new_order = new_order.to(device=cache.device, dtype=torch.long)
    if new_order.numel() != B:
        out = cache.new_zeros(new_order.numel(), K, C)
        out[:, :filled] = cache[:, :filled].index_select(0, new_order)
        return out
    if filled > 0:
        part = cache[:, :filled]  # a view: copy_ writes back into cache
        part.copy_(part.index_select(0, new_order))  # index_select copies first, so repeated rows are safe
    return cache


if _HAS_COMPILED_OP:

    @torch.library.register_fake("kaleidoscope::dynconv_step")
    def _dynconv_step_fake(x, logits, cache, step, softmax):
        check_dynconv_step_args(x, logits, cache, step)
        return x.new_empty(x.shape)
