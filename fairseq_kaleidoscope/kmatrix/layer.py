"""``KaleidoscopeLinear``: a drop-in replacement for ``nn.Linear`` made of K-matrices."""

from __future__ import annotations

import math

import torch
from torch import nn

from .init import init_twiddle_
from .ops import kmatrix_linear
from .parameter import TwiddleParameter


def next_power_of_two(n: int) -> int:
    return 1 << max(1, (n - 1).bit_length())


class KaleidoscopeLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` a stack of kaleidoscope matrices, in O(n log n).

    Same call convention as :class:`torch.nn.Linear`: input ``(..., in_features)``,
    output ``(..., out_features)``. There is no dense ``weight`` parameter;
    :meth:`to_dense` returns the ``(out_features, in_features)`` matrix applied.

    Shapes: the input is zero-padded to ``n``, the next power of two ``>= in_features``
    (at least 2). ``nstacks = ceil(out_features / n)`` independent n×n K-matrices are
    applied to it side by side and their outputs concatenated; the leading
    ``out_features`` rows are kept. So ``W`` is the top-left ``out_features × in_features``
    block of the ``(nstacks·n) × n`` matrix ``[K_1; K_2; ...]``.

    Each K-matrix is a product of ``nblocks`` blocks ``B Bᵀ`` (B a butterfly with
    log2(n) factors of n/2 learnable 2×2 matrices): ``4·n·log2(n)·nblocks`` parameters
    and about ``6·n·log2(n)·nblocks`` flops per vector instead of ``2·n²``.

    Args:
        in_features, out_features, bias: as in ``nn.Linear``.
        nblocks: number of ``B Bᵀ`` blocks per K-matrix.
        init: ``"ortho"`` (random rotations/reflections: orthogonal K-matrices),
            ``"identity"``, or ``"randn"`` (output variance matches ``nn.Linear``).

    The twiddle parameter is a :class:`TwiddleParameter` (``_optim = {"weight_decay": 0.0}``);
    see :func:`fairseq_kaleidoscope.kmatrix.param_groups`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        nblocks: int = 1,
        init: str = "ortho",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features), ("nblocks", nblocks)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"KaleidoscopeLinear: {name} must be an int, got {type(value).__name__} {value!r}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features} and {out_features}")
        if nblocks < 1:
            raise ValueError(f"nblocks must be >= 1, got {nblocks}")
        self.in_features, self.out_features, self.nblocks, self.init = in_features, out_features, nblocks, init
        self.n = next_power_of_two(in_features)
        self.nstacks = -(-out_features // self.n)
        log_n = self.n.bit_length() - 1
        factory = {"device": device, "dtype": dtype}
        self.twiddle = TwiddleParameter(torch.empty(self.nstacks, 2 * nblocks, log_n, self.n // 2, 2, 2, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_twiddle_(self.twiddle, self.init, self.in_features)
        if self.init == "randn":
            self._match_linear_weight_norm_()
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def _match_linear_weight_norm_(self) -> None:
        """Rescale each stack so that ``‖W‖_F²`` is exactly nn.Linear's expected value.

        A product of many random factors has a heavy-tailed gain: the variance-matched
        draw is right on average but typically too small. Fixing the norm per draw
        (``rows / 3`` for weights of variance ``1 / (3·in_features)``) gives every layer
        the output scale of ``nn.Linear`` for isotropic inputs.
        """
        w = self.to_dense()
        nfactors = self.twiddle.shape[1] * self.twiddle.shape[2]
        for k in range(self.nstacks):
            rows = w[k * self.n : (k + 1) * self.n]
            scale = (rows.shape[0] / 3) / rows.abs().square().sum()
            self.twiddle[k].mul_(scale ** (1 / (2 * nfactors)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The op cannot see in_features (it pads any input up to n): the one check made here.
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"KaleidoscopeLinear: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        return kmatrix_linear(x, self.twiddle, self.bias, self.out_features)

    def to_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix this layer applies (bias excluded)."""
        eye = torch.eye(self.in_features, device=self.twiddle.device, dtype=self.twiddle.dtype)
        return kmatrix_linear(eye, self.twiddle, None, self.out_features).t()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"nblocks={self.nblocks}, n={self.n}, nstacks={self.nstacks}, init={self.init!r}"
        )
