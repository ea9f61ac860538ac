"""Plain-PyTorch reference for the butterfly / K-matrix multiply.

This file defines what "correct" means: the compiled kernels are tested against it,
and it is the fallback wherever no compiled kernel applies (no extension built, a
device or dtype the kernels do not cover, complex numbers).

Conventions (shared with ``csrc/``):

* ``twiddle`` has shape ``(nstacks, nbutterflies, log2(n), n/2, 2, 2)``.
  ``twiddle[s, b, k, p]`` is the 2x2 matrix ``[[a, b], [c, d]]`` of pair ``p`` in the
  factor of butterfly ``b`` whose stride is ``2**k``. Pair ``p`` at stride ``t`` joins
  coordinates ``i = (p // t) * 2t + p % t`` and ``i + t``:
  ``y[i] = a x[i] + b x[i+t]`` and ``y[i+t] = c x[i] + d x[i+t]``.
* ``input`` has shape ``(batch, nstacks, n)``; every stack is an independent matrix.
* Butterflies are applied in order ``b = 0, 1, ...``; butterfly 0 runs its factors in
  increasing stride order (1, 2, ..., n/2) if ``increasing_stride`` else decreasing,
  and consecutive butterflies alternate. With ``increasing_stride=False`` every pair of
  butterflies (2j, 2j+1) is therefore one ``B Bᵀ`` block of a kaleidoscope matrix:
  a transposed butterfly (decreasing strides) followed by a butterfly (increasing).
"""

from __future__ import annotations

import torch


def butterfly_factor_ref(twiddle: torch.Tensor, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Apply one butterfly factor. twiddle: (nstacks, n/2, 2, 2); x: (batch, nstacks or 1, n).

    An ``x`` with one stack is broadcast against every stack of ``twiddle`` (``fit`` trains a
    population of candidates on one input that way).
    """
    batch, n = x.shape[0], x.shape[-1]
    ngroups = n // (2 * stride)  # groups of 2*stride coordinates (not the layer's B Bᵀ blocks)
    # x[..., grp, half, off] is coordinate grp*2*stride + half*stride + off; pair p = grp*stride + off.
    xv = x.reshape(batch, x.shape[1], ngroups, 2, stride)
    tw = twiddle.reshape(twiddle.shape[0], ngroups, stride, 2, 2)
    x0, x1 = xv[:, :, :, 0], xv[:, :, :, 1]
    # Broadcast products, not an einsum: no permute copies or tiny batched matmuls (about twice
    # as fast on CPU, which matters where no compiled kernel exists: complex fits, no build).
    y0 = tw[..., 0, 0] * x0 + tw[..., 0, 1] * x1
    y1 = tw[..., 1, 0] * x0 + tw[..., 1, 1] * x1
    return torch.stack([y0, y1], 3).reshape(batch, y0.shape[1], n)


def factor_strides(log_n: int, increasing: bool) -> list[int]:
    """The factor indices k (stride 2**k) of one butterfly, in application order."""
    ks = list(range(log_n))
    return ks if increasing else ks[::-1]


def butterfly_multiply_ref(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool) -> torch.Tensor:
    """Multiply ``x`` (batch, nstacks or 1, n) by the butterflies in ``twiddle`` (see module doc)."""
    nbutterflies, log_n = twiddle.shape[1], twiddle.shape[2]
    for b in range(nbutterflies):
        increasing = increasing_stride != (b % 2 == 1)
        for k in factor_strides(log_n, increasing):
            x = butterfly_factor_ref(twiddle[:, b, k], x, 1 << k)
    return x


def kmatrix_linear_ref(
    x: torch.Tensor, twiddle: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """``KaleidoscopeLinear``'s forward (the meaning of ``kaleidoscope::kmatrix_linear``).

    ``x`` (..., in_features) is zero-padded to ``n = 2 * twiddle.shape[3]``, fed to every one of
    the ``nstacks`` K-matrices (butterflies in decreasing stride order first), the stacked
    outputs' first ``out_features`` rows are kept and ``bias`` (``out_features``,) is added.
    """
    nstacks, n = twiddle.shape[0], 2 * twiddle.shape[3]
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[-1] != n:
        rows = torch.nn.functional.pad(rows, (0, n - rows.shape[-1]))
    y = butterfly_multiply_ref(twiddle, rows.unsqueeze(1), False)
    y = y.reshape(-1, nstacks * n)[:, :out_features]
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out_features)
