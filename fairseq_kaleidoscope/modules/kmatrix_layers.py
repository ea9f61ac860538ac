"""Which linear sub-layers are K-matrices (``--kmatrix-layers``) and how they are built.

The spec is a comma-separated list of ``encoder.NAME`` / ``decoder.NAME`` entries, where
NAME is a sub-layer of every layer on that side (e.g. ``fc1``) or a group (``ffn``,
``conv``, ``attn``, ``self_attn``, ``all``); ``decoder.output_projection`` (the
vocabulary projection) is never part of a group and must be asked for by name;
``none`` alone means no K-matrix at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from ..compat.fairseq_private import route_attention_through_projections
from ..kmatrix import KaleidoscopeLinear

SIDES = ("encoder", "decoder")
OUTPUT_PROJECTION = "output_projection"

# Group name -> members; a group expands to the members an architecture has on that side.
GROUPS: dict[str, tuple[str, ...]] = {
    "conv": ("conv_in", "conv_weight", "conv_out"),
    "attn": ("attn_q", "attn_k", "attn_v", "attn_out"),
    "self_attn": ("self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out"),
    "ffn": ("fc1", "fc2"),
}

# Encoder-attention sub-layer name -> attribute of fairseq's MultiheadAttention.
ATTN_PROJ = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_out": "out_proj"}


@dataclass(frozen=True)
class KMatrixOptions:
    nblocks: int = 1
    init: str = "ortho"
    lr_scale: float = 1.0


def parse_kmatrix_layers(spec: str, available: Mapping[str, Sequence[str]], arch: str) -> dict[str, frozenset[str]]:
    """Parse ``--kmatrix-layers`` into ``{"encoder": {...}, "decoder": {...}}``.

    ``available`` maps each side to its sub-layer names (``decoder`` may include
    ``output_projection``). Unknown entries raise a ``ValueError`` listing every valid name.
    """
    chosen: dict[str, set[str]] = {side: set() for side in SIDES}
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise ValueError(
            f"--kmatrix-layers is empty ({spec!r}) for {arch}: name the sub-layers, or 'none' for a dense model. "
            + describe_kmatrix_layers(available)
        )
    if items == ["none"]:
        return {side: frozenset() for side in SIDES}
    for item in items:
        side, _, name = item.partition(".")
        names = available.get(side, ())
        groups = _groups(names)
        if side in available and name in groups:
            chosen[side].update(groups[name])
        elif side in available and name in names:
            chosen[side].add(name)
        else:
            valid = describe_kmatrix_layers(available)
            raise ValueError(f"--kmatrix-layers: unknown entry {item!r} for {arch}. {valid}")
    return {side: frozenset(chosen[side]) for side in SIDES}


def chosen_kmatrix_layers(
    cfg: object, available: Mapping[str, Sequence[str]], arch: str
) -> tuple[dict[str, frozenset[str]], bool]:
    """The parsed ``--kmatrix-layers`` of a model config, and whether the output embedding is tied."""
    chosen = parse_kmatrix_layers(cfg.kmatrix_layers, available, arch)
    tie = bool(cfg.share_all_embeddings or cfg.share_decoder_input_output_embed)
    if tie and OUTPUT_PROJECTION in chosen["decoder"]:
        raise ValueError("decoder.output_projection cannot be a K-matrix when the output embedding is tied")
    return chosen, tie


def _groups(names: Sequence[str]) -> dict[str, list[str]]:
    """The groups of a side with sub-layers ``names`` (``all``: every one but the output projection)."""
    layers = [n for n in names if n != OUTPUT_PROJECTION]
    groups = {g: [m for m in members if m in layers] for g, members in GROUPS.items()}
    return {**{g: m for g, m in groups.items() if m}, "all": layers}


def describe_kmatrix_layers(available: Mapping[str, Sequence[str]]) -> str:
    parts = [f"{side}.{{{','.join([*names, *_groups(names)])}}}" for side, names in available.items()]
    return "Valid entries (comma-separated): " + "; ".join(parts) + "; or 'none'."


def dense_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """fairseq's init for the projections: Xavier-uniform weight, zero bias."""
    m = nn.Linear(in_features, out_features, bias)
    nn.init.xavier_uniform_(m.weight)
    if bias:
        nn.init.zeros_(m.bias)
    return m


def make_linear(in_features: int, out_features: int, bias: bool, kmatrix: KMatrixOptions | None) -> nn.Module:
    """A dense ``nn.Linear`` with fairseq's init, or a ``KaleidoscopeLinear`` tagged for the optimizer."""
    if kmatrix is None:
        return dense_linear(in_features, out_features, bias)
    k = KaleidoscopeLinear(in_features, out_features, bias=bias, nblocks=kmatrix.nblocks, init=kmatrix.init)
    if bias:
        nn.init.zeros_(k.bias)
    k.twiddle.lr_scale = kmatrix.lr_scale  # the twiddle's own optimizer option (no weight decay is implied)
    return k


def replace_linear(parent: nn.Module, attr: str, kmatrix: KMatrixOptions) -> None:
    """Swap ``parent.<attr>`` (an ``nn.Linear``) for a freshly initialised K-matrix of the same shape."""
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"expected {type(parent).__name__}.{attr} to be nn.Linear, got {type(old).__name__}")
    new = make_linear(old.in_features, old.out_features, old.bias is not None, kmatrix)
    setattr(parent, attr, new.to(device=old.weight.device, dtype=old.weight.dtype))


def replace_projections(
    attn: nn.Module, projections: Mapping[str, str], chosen: frozenset[str], kmatrix: KMatrixOptions
) -> None:
    """Swap the projections of attention module ``attn`` whose sub-layer names (``projections``:
    name -> attribute, e.g. ``{"attn_q": "q_proj"}``) are ``chosen`` for K-matrices."""
    swapped = [proj for name, proj in projections.items() if name in chosen]
    for proj in swapped:
        replace_linear(attn, proj, kmatrix)
    if swapped:  # fairseq's fused attention would read the projections' weights, not call them
        route_attention_through_projections(attn)


def kmatrix_options(cfg: object) -> KMatrixOptions:
    """The ``--kmatrix-*`` options of a model config, checked (each error names its option)."""
    nblocks, lr_scale = cfg.kmatrix_nblocks, float(cfg.kmatrix_lr_scale)
    if isinstance(nblocks, bool) or not isinstance(nblocks, int) or nblocks < 1:
        raise ValueError(f"--kmatrix-nblocks must be an integer >= 1, got {nblocks!r}")
    if not math.isfinite(lr_scale) or lr_scale <= 0:
        raise ValueError(f"--kmatrix-lr-scale must be a positive number, got {cfg.kmatrix_lr_scale!r}")
    return KMatrixOptions(nblocks=nblocks, init=str(cfg.kmatrix_init), lr_scale=lr_scale)
