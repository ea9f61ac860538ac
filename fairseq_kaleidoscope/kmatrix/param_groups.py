"""Optimizer parameter groups that honour the ``_optim`` tags set on K-matrix twiddles."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .parameter import TwiddleParameter


def is_kmatrix_parameter(p: torch.Tensor) -> bool:
    """Whether ``p`` is the structure (twiddle) parameter of a K-matrix layer."""
    return isinstance(p, TwiddleParameter)


def param_groups(
    model: nn.Module | Iterable[torch.nn.Parameter],
    weight_decay: float,
    lr: float | None = None,
    kmatrix_lr_scale: float = 1.0,
) -> list[dict]:
    """Split parameters into a dense group and a K-matrix group for ``torch.optim``.

    K-matrix twiddles (:class:`TwiddleParameter`) get the options in their ``_optim``
    (no weight decay) and, if ``lr`` is given, ``lr * kmatrix_lr_scale``; every other
    parameter gets ``weight_decay``. Frozen parameters are left out. Empty groups are
    dropped.
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    dense: list[torch.nn.Parameter] = []
    kmatrix: list[torch.nn.Parameter] = []
    for p in params:
        if p.requires_grad:
            (kmatrix if is_kmatrix_parameter(p) else dense).append(p)
    groups = []
    if dense:
        groups.append({"params": dense, "weight_decay": weight_decay})
    if kmatrix:
        group: dict = {"params": kmatrix, "weight_decay": 0.0}
        group.update(TwiddleParameter._optim)
        if lr is not None:
            group["lr"] = lr * kmatrix_lr_scale
        groups.append(group)
    return groups
