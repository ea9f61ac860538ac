"""DynamicConv encoder and decoder layers (fairseq's LightConv layers) with optional K-matrices.

Same computation and parameter names as fairseq's ``LightConvEncoderLayer`` /
``LightConvDecoderLayer`` with dynamic convolutions, but built on our
:class:`DynamicConv` and with every linear sub-layer selectable as a K-matrix:

========================  ===============================  ==========
sub-layer name            module                           sides
========================  ===============================  ==========
``conv_in``               ``linear1`` (C -> conv dim)      both
``conv_weight``           ``conv.weight_linear`` (taps)    both
``conv_out``              ``linear2`` (conv dim -> C)      both
``attn_q/k/v/out``        ``encoder_attn.*_proj``          decoder
``fc1``, ``fc2``          feed-forward                     both
========================  ===============================  ==========
"""

from __future__ import annotations

import uuid

import torch
import torch.nn.functional as F
from fairseq.modules import FairseqDropout, LayerNorm
from torch import Tensor, nn

from .dynamic_convolution import DynamicConv, DynamicConvState, IncrementalState
from .encoder_attention import EncoderAttention, EncoderAttentionState
from .fused_decoder_step import FusedDecoderStep, plan_fused_step
from .kmatrix_layers import ATTN_PROJ, KMatrixOptions, make_linear, replace_projections

ENCODER_SUBLAYERS = ("conv_in", "conv_weight", "conv_out", "fc1", "fc2")
DECODER_SUBLAYERS = ("conv_in", "conv_weight", "conv_out", "attn_q", "attn_k", "attn_v", "attn_out", "fc1", "fc2")


class Positions:
    """The non-pad positions of a (T, B) batch, in (T, B) order.

    Encoder layers run their position-wise sub-layers (linears, layer norms, residuals) on
    these rows only: in a batch padded to its longest sentence, pad positions cost as much as
    tokens, and fairseq discards them anyway (the convolution reads zeros there, attention
    masks them). Only the convolution sees the padded (T, B) layout.
    """

    def __init__(self, padding_mask: Tensor | None, time: int, batch: int) -> None:
        self.shape = (time, batch)
        self.index = None if padding_mask is None else (~padding_mask).t().reshape(-1).nonzero().squeeze(1)

    def pack(self, x: Tensor) -> Tensor:
        """(T, B, C) -> (N, C): the rows of the non-pad positions."""
        x = x.reshape(-1, x.size(-1))
        return x if self.index is None else x.index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, C) -> (T, B, C), zeros at pad positions."""
        if self.index is not None:
            x = x.new_zeros(self.shape[0] * self.shape[1], x.size(-1)).index_copy(0, self.index, x)
        return x.view(*self.shape, -1)


class _ConvBlock(nn.Module):
    """Shared parts: linear1 -> (GLU) -> DynamicConv -> linear2, and the FFN."""

    def __init__(
        self,
        embed_dim: int,
        conv_dim: int,
        ffn_dim: int,
        kernel_size: int,
        padding_l: int,
        heads: int,
        glu: bool,
        cfg: object,
        kmatrix: frozenset[str],
        kopts: KMatrixOptions,
    ) -> None:
        super().__init__()

        def linear(name: str, i: int, o: int, bias: bool = True) -> nn.Module:
            return make_linear(i, o, bias, kopts if name in kmatrix else None)

        self.embed_dim, self.conv_dim = embed_dim, conv_dim
        self.linear1 = linear("conv_in", embed_dim, 2 * conv_dim if glu else conv_dim)
        self.act = nn.GLU() if glu else None
        self.conv = DynamicConv(
            conv_dim,
            kernel_size,
            padding_l=padding_l,
            num_heads=heads,
            weight_dropout=cfg.weight_dropout,
            weight_softmax=bool(cfg.weight_softmax),
            linear=lambda i, o, bias: linear("conv_weight", i, o, bias),
        )
        self.linear2 = linear("conv_out", conv_dim, embed_dim)
        self.fc1 = linear("fc1", embed_dim, ffn_dim)
        self.fc2 = linear("fc2", ffn_dim, embed_dim)
        name = type(self).__name__
        self.dropout_module = FairseqDropout(cfg.dropout, module_name=name)
        self.relu_dropout_module = FairseqDropout(cfg.relu_dropout, module_name=name)
        self.input_dropout_module = FairseqDropout(cfg.input_dropout, module_name=name)

    def _conv(self, x: Tensor, positions: Positions | None = None) -> Tensor:
        """(T, B, C), or with ``positions`` the (N, C) rows of its non-pad positions."""
        x = self.input_dropout_module(x)
        x = self.linear1(x)
        if self.act is not None:
            x = self.act(x)
        x = self.conv(x) if positions is None else positions.pack(self.conv(positions.unpack(x)))
        return self.dropout_module(self.linear2(x))

    def _ffn(self, x: Tensor) -> Tensor:
        x = self.relu_dropout_module(F.relu(self.fc1(x)))
        return self.dropout_module(self.fc2(x))

    @staticmethod
    def _residual(block, x: Tensor, norm: nn.Module, before: bool, *args, **kwargs):
        out = block(norm(x) if before else x, *args, **kwargs)
        extra = None
        if isinstance(out, tuple):
            out, extra = out
        x = x + out
        return (x if before else norm(x)), extra


class LightConvEncoderLayer(_ConvBlock):
    """Encoder layer: centred dynamic convolution block, then FFN; the (N, C) rows of a batch's
    non-pad positions in and out (see :class:`Positions`)."""

    def __init__(self, cfg: object, kernel_size: int, kmatrix: frozenset[str], kopts: KMatrixOptions) -> None:
        # fairseq centres odd kernels; even kernels are not supported by a single left padding.
        if kernel_size % 2 == 0:
            raise ValueError(f"encoder kernel sizes must be odd, got {kernel_size}")
        super().__init__(
            cfg.encoder_embed_dim, cfg.encoder_conv_dim or cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim,
            kernel_size, kernel_size // 2, cfg.encoder_attention_heads, bool(cfg.encoder_glu), cfg, kmatrix, kopts,
        )
        self.normalize_before = cfg.encoder_normalize_before
        self.layer_norm1 = LayerNorm(self.embed_dim)
        self.layer_norm2 = LayerNorm(self.embed_dim)

    def forward(self, x: Tensor, positions: Positions) -> Tensor:
        x, _ = self._residual(self._conv, x, self.layer_norm1, self.normalize_before, positions=positions)
        x, _ = self._residual(self._ffn, x, self.layer_norm2, self.normalize_before)
        return x


class LightConvDecoderLayerState:
    """Decoding state of one decoder layer: its convolution's and its encoder attention's, and
    the fused op's arguments (None: this layer decodes with the reference step)."""

    __slots__ = ("attn", "conv", "fused")

    def __init__(
        self, conv: DynamicConvState, attn: EncoderAttentionState | None, fused: FusedDecoderStep | None = None
    ) -> None:
        self.conv, self.attn, self.fused = conv, attn, fused

    def reorder(self, new_order: Tensor) -> None:
        self.conv.reorder(new_order)
        if self.attn is not None:
            self.attn.reorder(new_order)


class LightConvDecoderLayer(_ConvBlock):
    """Decoder layer: causal dynamic convolution, encoder attention, FFN; (T, B, C) in and out.

    ``forward`` runs a whole sequence (training, scoring); decoding runs :meth:`step` one
    position at a time on a :class:`LightConvDecoderLayerState` (``allocate_state``), kept
    under this layer's one key of fairseq's ``incremental_state`` (``get_state``). A step is one
    call of the compiled ``lightconv_decoder_step`` where it covers the layer (see
    ``fused_decoder_step.py``), else :meth:`step_reference`.
    """

    def __init__(self, cfg: object, kernel_size: int, kmatrix: frozenset[str], kopts: KMatrixOptions) -> None:
        super().__init__(
            cfg.decoder_embed_dim, cfg.decoder_conv_dim or cfg.decoder_embed_dim, cfg.decoder_ffn_embed_dim,
            kernel_size, kernel_size - 1, cfg.decoder_attention_heads, bool(cfg.decoder_glu), cfg, kmatrix, kopts,
        )
        self.normalize_before = cfg.decoder_normalize_before
        self.conv_layer_norm = LayerNorm(self.embed_dim)
        self.encoder_attn = EncoderAttention(self.embed_dim, cfg.decoder_attention_heads, dropout=cfg.attention_dropout)
        replace_projections(self.encoder_attn, ATTN_PROJ, kmatrix, kopts)
        self.encoder_attn_layer_norm = LayerNorm(self.embed_dim)
        self.final_layer_norm = LayerNorm(self.embed_dim)
        self.need_attn = True
        self.reference_step = False  # decode with step_reference (set by ``use_reference_step``)
        self.state_key = f"{uuid.uuid4()}.state"  # this layer's key in incremental_state (looked up every step)

    def _attend(self, x: Tensor, encoder_out: Tensor, encoder_padding_mask: Tensor | None):
        x, attn = self.encoder_attn(
            query=x, key=encoder_out, value=encoder_out, key_padding_mask=encoder_padding_mask, static_kv=True,
            need_weights=(not self.training and self.need_attn),
        )
        return self.dropout_module(x), attn

    def forward(
        self, x: Tensor, encoder_out: Tensor | None, encoder_padding_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        pre = self.normalize_before
        x, _ = self._residual(self._conv, x, self.conv_layer_norm, pre)
        attn = None
        if encoder_out is not None:
            x, attn = self._residual(self._attend, x, self.encoder_attn_layer_norm, pre,
                                     encoder_out, encoder_padding_mask)
        x, _ = self._residual(self._ffn, x, self.final_layer_norm, pre)
        return x, attn

    def make_generation_fast_(self, need_attn: bool = False, **kwargs) -> None:
        self.need_attn = need_attn

    def get_state(self, incremental_state: IncrementalState) -> LightConvDecoderLayerState | None:
        return incremental_state.get(self.state_key)

    def allocate_state(
        self, x: Tensor, encoder_out: Tensor | None, encoder_padding_mask: Tensor | None,
        encoder_rows: Tensor | None, incremental_state: IncrementalState,
    ) -> LightConvDecoderLayerState:
        """The state for decoding the B hypotheses of ``x`` (B, C), stored in ``incremental_state``.

        Hypothesis b attends to row ``encoder_rows[b]`` (b if None) of ``encoder_out`` (S, N, C).
        """
        B = x.size(0)
        attn = None
        if encoder_out is not None:
            attn = self.encoder_attn.allocate_state(B, encoder_out, encoder_padding_mask, encoder_rows)
        fused = None if self.reference_step else plan_fused_step(self, x, attn is not None)
        state = LightConvDecoderLayerState(self.conv.allocate_state(B, x), attn, fused)
        incremental_state[self.state_key] = state
        return state

    def step(self, x: Tensor, state: LightConvDecoderLayerState) -> tuple[Tensor, Tensor | None]:
        """One decoding position (eval): (B, C) -> (B, C), and the attention weights (B, 1, S) if
        ``need_attn``: the fused op where the state planned it, else :meth:`step_reference`."""
        if state.fused is not None and not self.need_attn and not torch.is_grad_enabled():
            return state.fused(x, state), None
        return self.step_reference(x, state)

    def step_reference(self, x: Tensor, state: LightConvDecoderLayerState) -> tuple[Tensor, Tensor | None]:
        """The plain-PyTorch step: the sub-layers of ``forward`` without its generic plumbing
        (closures, no-op dropouts)."""
        pre = self.normalize_before
        h = self.conv_layer_norm(x) if pre else x
        h = self.linear1(h)
        if self.act is not None:
            h = self.act(h)
        x = x + self.linear2(self.conv.step(h, state.conv))
        if not pre:
            x = self.conv_layer_norm(x)
        attn = None
        if state.attn is not None:
            h = self.encoder_attn_layer_norm(x) if pre else x
            h, attn = self.encoder_attn.step(h, state.attn, self.need_attn)
            x = x + h
            if not pre:
                x = self.encoder_attn_layer_norm(x)
        h = self.final_layer_norm(x) if pre else x
        x = x + self.fc2(F.relu(self.fc1(h)))
        if not pre:
            x = self.final_layer_norm(x)
        return x, attn

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        state = self.get_state(incremental_state)
        if state is not None:
            state.reorder(new_order)
