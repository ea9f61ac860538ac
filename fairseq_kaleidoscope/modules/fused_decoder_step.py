"""One op call per decoder layer and decoding position: the fast path of ``LightConvDecoderLayer.step``.

At batch 1 a decoder layer's step is about thirty small ops (seven linear sub-layers, the
convolution step, attention over the encoder, three layer norms, residuals); from Python each
costs more than its arithmetic. ``torch.ops.kaleidoscope.lightconv_decoder_step``
(``csrc/lightconv_decoder_step.cpp``) runs the same ops, in the same order, from C++.
``LightConvDecoderLayer.step_reference`` is its plain-PyTorch definition.

:func:`plan_fused_step` decides once per decoding (when the layer's state is allocated)
whether the op covers the layer: CPU float32; dense ``nn.Linear``, K-matrix or int8
(``--int8-dense``: ``torch.ao.nn.quantized.dynamic.Linear``, qint8) sub-layers; ``nn.LayerNorm``
norms. Anything else (other sub-layer types, dtypes or devices, no compiled extension) decodes
with the reference step, after one log line per reason.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

from .._extension import has_kernel
from ..kmatrix.layer import KaleidoscopeLinear

logger = logging.getLogger(__name__)

_HAS_COMPILED_OP = has_kernel("kaleidoscope::lightconv_decoder_step", "CPU")
_OP = torch.ops.kaleidoscope.lightconv_decoder_step.default if _HAS_COMPILED_OP else None  # looked up once


def has_fused_decoder_step() -> bool:
    """Whether the compiled extension provides ``lightconv_decoder_step``."""
    return _HAS_COMPILED_OP


class FusedDecoderStep:
    """The constant arguments of one layer's op call (weights, flags), gathered once per decoding."""

    __slots__ = ("eps", "glu", "int8_linears", "linears", "norms", "out_features", "pre", "scaling", "softmax")

    def __init__(self, linears: list[Tensor | None], int8_linears: list[object | None], out_features: list[int],
                 norms: list[Tensor], eps: float, softmax: bool, glu: bool, scaling: float, pre: bool) -> None:
        self.linears, self.int8_linears, self.out_features = linears, int8_linears, out_features
        self.norms, self.eps = norms, eps
        self.softmax, self.glu, self.scaling, self.pre = softmax, glu, scaling, pre

    def __call__(self, x: Tensor, state: object) -> Tensor:
        """(B, C) -> (B, C); advances ``state.conv`` (a ``LightConvDecoderLayerState``) by one position."""
        conv, attn = state.conv, state.attn
        key = value = pad = None
        if attn is not None:
            key, value, pad = attn.key, attn.value, attn.padding_mask
        y = _OP(
            x, self.linears, self.int8_linears, self.out_features, self.norms, self.eps, conv.ring, conv.steps,
            self.softmax, self.glu, key, value, pad, self.scaling, self.pre,
        )
        conv.steps += 1
        return y


@functools.cache
def _log_fallback(reason: str) -> None:
    logger.info("decoder layers decode with the plain-PyTorch step (%s)", reason)


def _linear_arguments(name: str, module: nn.Module) -> tuple[Tensor | None, Tensor | None, object | None, int] | str:
    """(weight, bias, int8 packed parameters, out_features) of a sub-layer, or why the op cannot run it."""
    if type(module) is nn.Linear:
        return module.weight, module.bias, None, module.out_features
    if type(module) is KaleidoscopeLinear:
        return module.twiddle, module.bias, None, module.out_features
    if type(module) is Int8Linear:
        # The op calls quantized::linear_dynamic with reduce_range=True, as the module's forward
        # does for qint8 weights from version 4 on (older versions, float16: the reference step).
        if module._packed_params.dtype != torch.qint8 or (module.version or 0) < 4:
            dtype, version = module._packed_params.dtype, module.version
            return f"sub-layer {name} is a {dtype} dynamic-quantized linear of version {version}"
        return None, None, module._packed_params._packed_params, module.out_features
    return f"sub-layer {name} is a {type(module).__module__}.{type(module).__name__}"


def plan_fused_step(layer: nn.Module, x: Tensor, has_attention: bool) -> FusedDecoderStep | None:
    """The op's constant arguments for ``layer`` (a ``LightConvDecoderLayer``) decoding ``x``,
    or None (after one log line per reason) where the op does not cover it."""
    reason = _unsupported(layer, x)
    linears: list[Tensor | None] = []
    int8_linears: list[object | None] = []
    out_features: list[int] = []
    if reason is None:
        attn = layer.encoder_attn
        subs = {"conv_in": layer.linear1, "conv_weight": layer.conv.weight_linear, "conv_out": layer.linear2,
                "attn_q": attn.q_proj, "attn_out": attn.out_proj, "fc1": layer.fc1, "fc2": layer.fc2}
        for name, module in subs.items():
            if not has_attention and name.startswith("attn"):
                linears += [None, None]
                int8_linears.append(None)
                out_features.append(0)
                continue
            args = _linear_arguments(name, module)
            if isinstance(args, str):
                reason = args
                break
            linears += args[:2]
            int8_linears.append(args[2])
            out_features.append(args[3])
    if reason is not None:
        _log_fallback(reason)
        return None
    norms = [layer.conv_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm]
    if all(p is None for p in int8_linears):
        int8_linears = []  # the op's fast check for "no int8 sub-layer"
    return FusedDecoderStep(
        linears, int8_linears, out_features, [t for n in norms for t in (n.weight, n.bias)], norms[0].eps,
        layer.conv.weight_softmax, layer.act is not None, layer.encoder_attn.scaling, layer.normalize_before,
    )


def _unsupported(layer: nn.Module, x: Tensor) -> str | None:
    """Why the op cannot run ``layer`` on ``x``, or None."""
    if not _HAS_COMPILED_OP:
        return "the compiled extension has no lightconv_decoder_step"
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return f"the fused step is CPU float32, got {x.dtype} on {x.device}"
    norms = (layer.conv_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm)
    if any(type(n) is not nn.LayerNorm or n.weight is None or n.bias is None for n in norms):
        return "a layer norm is not an affine torch.nn.LayerNorm"
    if len({n.eps for n in norms}) != 1:
        return "the layer norms have different eps"
    if layer.act is not None and (type(layer.act) is not nn.GLU or layer.act.dim != -1):
        return f"conv activation {layer.act!r}"
    return None


if _HAS_COMPILED_OP:

    @torch.library.register_fake("kaleidoscope::lightconv_decoder_step")
    def _lightconv_decoder_step_fake(x, linears, int8_linears, out_features, norms, eps, cache, step, conv_softmax,
                                     glu, key, value, key_padding_mask, scaling, normalize_before):
        if x.dim() != 2:
            raise ValueError(f"lightconv_decoder_step: x must be (batch, channels), got {tuple(x.shape)}")
        return x.new_empty(x.shape)
