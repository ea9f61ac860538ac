"""int8 for the linear layers that stay dense: PyTorch's dynamic quantization, at inference only.

A K-matrix model still has dense layers (the vocabulary projection, the encoder, whatever
``--kmatrix-layers`` left out). At batch 1 a dense layer is bound by reading its weight, so
storing it in int8 makes it 2–5× faster. The scheme is ``quantize_dynamic``'s default
(per-tensor symmetric int8 weights, activations quantized per call). K-matrix layers are
never quantized: they are already small and compute-bound.

``--int8-dense WHERE`` (a model option, set at generation time with
``--model-overrides "{'int8_dense': 'output_projection'}"``) is applied by the model's
``prepare_for_inference_``, which ``fairseq-generate`` and ``fairseq-interactive`` call after
loading the weights. WHERE is ``none`` or a comma-separated list of ``output_projection``,
``decoder``, ``encoder``, ``all``.
"""

from __future__ import annotations

import warnings

import torch
from fairseq.modules import MultiheadAttention
from torch import nn

from ..compat.fairseq_private import route_attention_through_projections

INT8_PARTS = ("output_projection", "decoder", "encoder", "all")


def parse_int8_dense(spec: str) -> frozenset[str]:
    """The parts named by ``--int8-dense`` (empty for ``none``); unknown names raise ``ValueError``."""
    items = {s.strip() for s in str(spec).split(",") if s.strip()}
    if not items or items == {"none"}:
        return frozenset()
    unknown = sorted(items - set(INT8_PARTS))
    if unknown:
        raise ValueError(f"--int8-dense: unknown part(s) {unknown}; choose 'none' or from {list(INT8_PARTS)}")
    return frozenset(items)


def _chosen(name: str, parts: frozenset[str]) -> bool:
    if "all" in parts:
        return True
    side = name.split(".", 1)[0]
    return side in parts or (name == "decoder.output_projection" and "output_projection" in parts)


def quantize_dense_linears(model: nn.Module, spec: str) -> list[str]:
    """Replace the chosen dense ``nn.Linear`` modules of ``model`` by int8 dynamic-quantized ones, in place.

    Returns the names of the replaced modules. The model must be in eval mode: the
    quantized layers have no gradients. Attention modules whose projections are
    replaced are switched to their per-module path (fairseq's fused path reads the float
    weights directly).
    """
    parts = parse_int8_dense(spec)
    if not parts:
        return []
    if model.training:
        raise ValueError("--int8-dense is for inference: call model.eval() before quantizing")
    targets = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and _chosen(name, parts)]
    with warnings.catch_warnings():
        # torch deprecates its quantized tensor types in favour of torchao; they still work in 2.13.
        warnings.filterwarnings("ignore", message=".*quantiz.*")
        for name, linear in targets:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear.qconfig = torch.ao.quantization.default_dynamic_qconfig
            setattr(parent, attr, torch.ao.nn.quantized.dynamic.Linear.from_float(linear))
            if isinstance(parent, MultiheadAttention):
                route_attention_through_projections(parent)
    return [name for name, _ in targets]
