"""Optimizer parameter groups that honour the options K-matrix twiddles carry (``TwiddleParameter._optim``)."""

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
    kmatrix_lr_scale: float | None = None,
) -> list[dict]:
    """Split parameters into a dense group and K-matrix groups for ``torch.optim``.

    K-matrix twiddles (:class:`TwiddleParameter`) get the options in their ``_optim``: no
    weight decay and, if ``lr`` is given, ``lr`` times their ``lr_scale`` (or times
    ``kmatrix_lr_scale``, which overrides it, if given). Every other parameter gets
    ``weight_decay``. Frozen parameters are left out. Empty groups are dropped.
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    dense: list[torch.nn.Parameter] = []
    kmatrix: dict[float, list[torch.nn.Parameter]] = {}
    for p in params:
        if not p.requires_grad:
            continue
        if is_kmatrix_parameter(p):
            scale = p.lr_scale if kmatrix_lr_scale is None else float(kmatrix_lr_scale)
            kmatrix.setdefault(scale, []).append(p)
        else:
            dense.append(p)
    groups: list[dict] = [{"params": dense, "weight_decay": weight_decay}] if dense else []
    for scale, ps in kmatrix.items():
        group: dict = {"params": ps, **ps[0]._optim, "lr_scale": scale}
        if lr is not None:
            group["lr"] = lr * scale
        groups.append(group)
    return groups
