"""The parameter type of K-matrix twiddles: it carries its own optimizer options."""

from __future__ import annotations

import torch
from torch import nn


def _rebuild_twiddle(data: torch.Tensor, requires_grad: bool, lr_scale: float) -> TwiddleParameter:
    return TwiddleParameter(data, requires_grad, lr_scale=lr_scale)


class TwiddleParameter(nn.Parameter):
    """An ``nn.Parameter`` holding butterfly twiddles, with its optimizer options on it.

    The one place the options live: no weight decay, and the learning rate times
    ``lr_scale`` (``--kmatrix-lr-scale``). Everything else derives from it:
    ``_optim`` (the per-parameter convention of mamba, read by :func:`.param_groups`) and
    fairseq's ``param_group`` / ``optim_overrides`` tags (read by ``--optimizer composite``,
    by the fp16 optimizer's fp32 copies and by ``compat.optimizer``). A subclass rather than
    attributes on a plain Parameter, and copied explicitly: ``copy.deepcopy`` (EMA, cloning)
    and pickling would otherwise drop them (pickling even the type).
    """

    param_group = "kmatrix"  # fairseq's group name for --optimizer composite

    def __new__(cls, data: torch.Tensor | None = None, requires_grad: bool = True, lr_scale: float = 1.0):
        p = super().__new__(cls, data, requires_grad)
        p.lr_scale = float(lr_scale)
        return p

    @property
    def _optim(self) -> dict:
        return {"weight_decay": 0.0, "lr_scale": self.lr_scale}

    @property
    def optim_overrides(self) -> dict:
        return {"optimizer": {"lr_scale": self.lr_scale, "weight_decay_scale": 0.0}}

    @optim_overrides.setter
    def optim_overrides(self, value: dict) -> None:
        # fairseq-style tagging (p.optim_overrides = {...}) sets the one option there is.
        opt = value.get("optimizer", {})
        if float(opt.get("weight_decay_scale", 0.0)) != 0.0:
            raise ValueError("TwiddleParameter: twiddles take no weight decay (weight_decay_scale must be 0)")
        self.lr_scale = float(opt.get("lr_scale", 1.0))

    def __deepcopy__(self, memo: dict) -> TwiddleParameter:
        if id(self) in memo:
            return memo[id(self)]
        result = TwiddleParameter(self.data.clone(memory_format=torch.preserve_format), self.requires_grad,
                                  lr_scale=self.lr_scale)  # fmt: skip
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, proto: int) -> tuple:
        return _rebuild_twiddle, (self.data, self.requires_grad, self.lr_scale)
