"""Every use of fairseq 0.12's private API, in one place.

A fairseq upgrade that renames one of these breaks here, not at scattered call sites.
Callers use the functions below, never the private names.

* ``MultiheadAttention._set_skip_embed_dim_check()``
  (:func:`route_attention_through_projections`): fairseq's attention runs the fused
  ``F.multi_head_attention_forward``, which reads ``q_proj.weight`` etc. directly and never
  calls the projection modules. A K-matrix or int8 projection, or a forward hook on one,
  needs them called. This private switch is fairseq's only way to turn the fused path off;
  for plain ``nn.Linear`` projections the result is the same.
* ``fairseq.optim._build_optimizer`` (:func:`build_registered_optimizer`): the optimizer
  registry's builder, which passes torch param groups (dicts) through. The public
  ``build_optimizer`` merges them into one flat list, losing the K-matrix
  learning-rate scale and weight-decay groups (see :mod:`.optimizer`).
"""

from __future__ import annotations

from fairseq import optim
from fairseq.modules import MultiheadAttention


def route_attention_through_projections(attn: MultiheadAttention) -> None:
    """Make ``attn`` call its q/k/v/out projection modules instead of reading their weights."""
    attn._set_skip_embed_dim_check()


def build_registered_optimizer(cfg: object, params: list, *extra_args: object, **extra_kwargs: object) -> object:
    """Build the ``cfg``-selected fairseq optimizer from ``params`` as given (param-group dicts kept)."""
    return optim._build_optimizer(cfg, params, *extra_args, **extra_kwargs)
