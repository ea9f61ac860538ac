"""Initialisations of butterfly twiddles (shape (..., n/2, 2, 2), one 2x2 per pair)."""

from __future__ import annotations

import math

import torch

INITS = ("ortho", "identity", "randn")


@torch.no_grad()
def init_twiddle_(twiddle: torch.Tensor, init: str, in_features: int) -> torch.Tensor:
    """Fill ``twiddle`` (nstacks, nbutterflies, log2 n, n/2, 2, 2) in place and return it.

    * ``"ortho"``: every 2x2 a random rotation or reflection, so every factor and hence
      every stacked K-matrix is orthogonal (norm preserving).
    * ``"identity"``: every 2x2 the identity.
    * ``"randn"``: i.i.d. Gaussian entries, scaled so that for unit-variance inputs the
      output variance equals ``nn.Linear``'s default init (1/3): a factor multiplies the
      expected mean square by 2·σ², the zero padding by ``in_features / n``.
    """
    if init not in INITS:
        raise ValueError(f"unknown K-matrix init {init!r}; choose one of {INITS}")
    if init == "identity":
        twiddle.zero_()
        twiddle[..., 0, 0] = 1
        twiddle[..., 1, 1] = 1
    elif init == "ortho":
        real = twiddle.real if twiddle.is_complex() else twiddle
        theta = torch.rand(twiddle.shape[:-2], device=twiddle.device, dtype=real.dtype) * (2 * math.pi)
        c, s = torch.cos(theta), torch.sin(theta)
        # det +1: [[c, -s], [s, c]]; det -1: [[c, s], [s, -c]].
        sign = torch.where(torch.rand_like(theta) < 0.5, -1.0, 1.0).to(theta.dtype)
        twiddle.copy_(torch.stack([torch.stack([c, -sign * s], -1), torch.stack([s, sign * c], -1)], -2))
    else:
        n = 2 * twiddle.shape[-3]
        nfactors = twiddle.shape[1] * twiddle.shape[2]
        var = (n / (3.0 * in_features)) ** (1.0 / nfactors) / 2
        twiddle.normal_(0.0, math.sqrt(var))
    return twiddle
