"""Per-parameter learning-rate scale and weight decay for fairseq's ordinary optimizers.

fairseq tags parameters with ``param_group`` / ``optim_overrides`` (``lr_scale``,
``weight_decay_scale``), but only ``--optimizer composite`` reads the tags: the
trainer hands every other optimizer one flat parameter list, and
``FairseqOptimizer.set_lr`` (called by every LR scheduler on every update) writes the
same rate into every group. Three small changes make ``--optimizer adam`` and friends
honour the tags that our K-matrix twiddles carry:

* ``fairseq.optim.build_optimizer`` (what the trainer calls) splits tagged parameters
  into their own torch param groups with ``lr_scale`` and the scaled weight decay;
* the optimizer it returns gets a ``set_lr`` that sets ``lr * group["lr_scale"]``, so
  ``get_lr`` still reports the base rate of the first (untagged) group. Only that
  instance: ``--optimizer composite`` applies ``lr_scale`` itself when it builds its
  sub-optimizers, and a class-wide ``set_lr`` would scale their rate a second time.
* fp16 training with flattened gradients (fairseq's default ``--fp16``) copies all
  parameters into one flat tensor, which would drop the tags: for a model with tagged
  parameters, flattening is turned off (as ``--fp16-no-flatten-grads`` does), with a log line.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable

import torch
from fairseq import optim
from fairseq.optim.fairseq_optimizer import FairseqOptimizer
from fairseq.optim.fp16_optimizer import FP16Optimizer

from .fairseq_private import build_registered_optimizer

logger = logging.getLogger(__name__)

_original_build_optimizer = None
_original_fp16_build_optimizer = None


def _overrides(p: torch.Tensor) -> tuple[float, float]:
    # fairseq's tags: a TwiddleParameter derives them from its own options (kept by deepcopy and
    # pickling); the fp16 optimizer's fp32 copies carry them as plain attributes.
    opt = (getattr(p, "optim_overrides", None) or {}).get("optimizer", {})
    return float(opt.get("lr_scale", 1.0)), float(opt.get("weight_decay_scale", 1.0))


def tagged_param_groups(params: Iterable[torch.Tensor], weight_decay: float | None) -> list[dict]:
    """Group parameters by their (lr_scale, weight_decay_scale) tags; untagged ones first."""
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for p in params:
        if p.requires_grad:
            groups.setdefault(_overrides(p), []).append(p)
    out = []
    for (lr_scale, wd_scale), ps in sorted(groups.items(), key=lambda kv: kv[0] != (1.0, 1.0)):
        group: dict = {"params": ps, "lr_scale": lr_scale}
        if weight_decay is not None:
            group["weight_decay"] = weight_decay * wd_scale
        out.append(group)
    return out


def build_optimizer(cfg: object, params: list, *extra_args: object, **extra_kwargs: object) -> object:
    """``fairseq.optim.build_optimizer`` that turns tagged parameters into their own groups."""
    params = list(params)
    tagged = any(isinstance(p, torch.Tensor) and _overrides(p) != (1.0, 1.0) for p in params)
    if not tagged:
        return _original_build_optimizer(cfg, params, *extra_args, **extra_kwargs)
    if getattr(cfg, "_name", None) == "composite":
        optimizer = _original_build_optimizer(cfg, params, *extra_args, **extra_kwargs)
        _warn_if_composite_decays_twiddles(optimizer)
        return optimizer
    weight_decay = getattr(cfg, "weight_decay", None)
    groups = tagged_param_groups(params, float(weight_decay) if weight_decay is not None else None)
    optimizer = build_registered_optimizer(cfg, groups, *extra_args, **extra_kwargs)
    optimizer.set_lr = types.MethodType(_scaled_set_lr, optimizer)
    optimizer.set_lr(optimizer.get_lr())  # apply the scales before the first step
    logger.info(
        "parameter groups: %s",
        ", ".join(f"{sum(p.numel() for p in g['params'])} params lr x{g['lr_scale']:g}"
                  + (f" wd {g['weight_decay']:g}" if "weight_decay" in g else "") for g in groups),
    )
    return optimizer


def _warn_if_composite_decays_twiddles(optimizer: object) -> None:
    # fairseq 0.12's composite optimizer applies lr_scale but never weight_decay_scale (it tests
    # `"optimizer_config" in optimizer_config`, which is always false): say so instead of decaying silently.
    for group in optimizer.param_groups:
        params = group["params"]
        if params and _overrides(params[0])[1] == 0.0 and group.get("weight_decay", 0.0) != 0.0:
            logger.warning(
                "fairseq_kaleidoscope: --optimizer composite applies weight decay %g to %d K-matrix parameter(s) "
                "tagged for none (fairseq ignores weight_decay_scale there): set weight_decay: 0.0 in the "
                "optimizer of their group (param_group 'kmatrix')",
                group["weight_decay"], len(params),
            )  # fmt: skip


def _scaled_set_lr(self: FairseqOptimizer, lr: float) -> None:
    """Set the learning rate (times each group's ``lr_scale``)."""
    for group in self.param_groups:
        params = group["params"]
        if params and getattr(params[0], "optim_overrides", None):
            # The model's tags win over a scale restored with an old optimizer state
            # (resuming with a different --kmatrix-lr-scale).
            group["lr_scale"] = _overrides(params[0])[0]
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _fp16_build_optimizer(cls: type, cfg: object, params: list, **kwargs: object) -> object:
    """``FP16Optimizer.build_optimizer`` that keeps tagged parameters apart (no flat fp32 copy)."""
    params = list(params)
    common = cfg.common
    if not getattr(common, "fp16_no_flatten_grads", False) and any(_overrides(p) != (1.0, 1.0) for p in params):
        from omegaconf import open_dict

        with open_dict(common):
            common.fp16_no_flatten_grads = True
        logger.info(
            "fairseq_kaleidoscope: K-matrix parameters have their own lr scale / weight decay, which a flat "
            "fp16 gradient buffer would drop: training as with --fp16-no-flatten-grads"
        )
    return _original_fp16_build_optimizer(cls, cfg, params, **kwargs)


def install() -> None:
    """Idempotent."""
    global _original_build_optimizer, _original_fp16_build_optimizer
    if _original_build_optimizer is None:
        _original_build_optimizer = optim.build_optimizer
        optim.build_optimizer = build_optimizer
        _original_fp16_build_optimizer = FP16Optimizer.build_optimizer.__func__
        FP16Optimizer.build_optimizer = classmethod(_fp16_build_optimizer)
