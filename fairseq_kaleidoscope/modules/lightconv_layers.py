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

import torch
import torch.nn.functional as F
from fairseq.modules import FairseqDropout, LayerNorm, MultiheadAttention
from torch import Tensor, nn

from .dynamic_convolution import DynamicConv, IncrementalState
from .fast_decoding import fast_decoding_enabled
from .kmatrix_layers import KMatrixOptions, make_linear, replace_linear

ENCODER_SUBLAYERS = ("conv_in", "conv_weight", "conv_out", "fc1", "fc2")
DECODER_SUBLAYERS = ("conv_in", "conv_weight", "conv_out", "attn_q", "attn_k", "attn_v", "attn_out", "fc1", "fc2")
ATTN_PROJ = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_out": "out_proj"}


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

    def _conv(self, x: Tensor, incremental_state: IncrementalState | None = None, pad_mask: Tensor | None = None):
        x = self.input_dropout_module(x)
        x = self.linear1(x)
        if self.act is not None:
            x = self.act(x)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask.transpose(0, 1).unsqueeze(2), 0)
        x = self.conv(x, incremental_state=incremental_state)
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
    """Encoder layer: centred dynamic convolution block, then FFN; (T, B, C) in and out."""

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

    def forward(self, x: Tensor, encoder_padding_mask: Tensor | None = None) -> Tensor:
        x, _ = self._residual(self._conv, x, self.layer_norm1, self.normalize_before, pad_mask=encoder_padding_mask)
        x, _ = self._residual(self._ffn, x, self.layer_norm2, self.normalize_before)
        return x


class LightConvDecoderLayer(_ConvBlock):
    """Decoder layer: causal dynamic convolution, encoder attention, FFN; (T, B, C) in and out."""

    def __init__(self, cfg: object, kernel_size: int, kmatrix: frozenset[str], kopts: KMatrixOptions) -> None:
        super().__init__(
            cfg.decoder_embed_dim, cfg.decoder_conv_dim or cfg.decoder_embed_dim, cfg.decoder_ffn_embed_dim,
            kernel_size, kernel_size - 1, cfg.decoder_attention_heads, bool(cfg.decoder_glu), cfg, kmatrix, kopts,
        )
        self.normalize_before = cfg.decoder_normalize_before
        self.conv_layer_norm = LayerNorm(self.embed_dim)
        self.encoder_attn = MultiheadAttention(
            self.embed_dim, cfg.decoder_attention_heads, dropout=cfg.attention_dropout,
            encoder_decoder_attention=True,
        )
        for name, proj in ATTN_PROJ.items():
            if name in kmatrix:
                replace_linear(self.encoder_attn, proj, kopts)
        if any(name in kmatrix for name in ATTN_PROJ):
            # fairseq's fused attention path reads ``q_proj.weight`` etc. directly; this
            # flag routes it through the projection modules instead.
            self.encoder_attn._set_skip_embed_dim_check()
        self.encoder_attn_layer_norm = LayerNorm(self.embed_dim)
        self.final_layer_norm = LayerNorm(self.embed_dim)
        self.need_attn = True

    def _attend(self, x: Tensor, encoder_out: Tensor, encoder_padding_mask: Tensor | None,
                incremental_state: IncrementalState | None):
        x, attn = self.encoder_attn(
            query=x, key=encoder_out, value=encoder_out, key_padding_mask=encoder_padding_mask,
            incremental_state=incremental_state, static_kv=True,
            need_weights=(not self.training and self.need_attn),
        )
        return self.dropout_module(x), attn

    def forward(
        self,
        x: Tensor,
        encoder_out: Tensor | None,
        encoder_padding_mask: Tensor | None,
        incremental_state: IncrementalState | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        if incremental_state is not None and not self.training and x.size(0) == 1 and fast_decoding_enabled():
            return self._decode_step(x, encoder_out, encoder_padding_mask, incremental_state)
        pre = self.normalize_before
        x, _ = self._residual(self._conv, x, self.conv_layer_norm, pre, incremental_state=incremental_state)
        attn = None
        if encoder_out is not None:
            x, attn = self._residual(self._attend, x, self.encoder_attn_layer_norm, pre,
                                     encoder_out, encoder_padding_mask, incremental_state)
        x, _ = self._residual(self._ffn, x, self.final_layer_norm, pre)
        return x, attn

    def make_generation_fast_(self, need_attn: bool = False, **kwargs) -> None:
        self.need_attn = need_attn

    def _decode_step(
        self, x: Tensor, encoder_out: Tensor | None, encoder_padding_mask: Tensor | None,
        incremental_state: IncrementalState,
    ) -> tuple[Tensor, Tensor | None]:
        """One decoding step (T = 1, eval): the same sub-layers as ``forward`` without its generic plumbing.

        At batch 1 a step is a few dozen small ops, so the per-op Python of the training path
        (closures, tuple checks, no-op dropouts, fairseq's general attention) costs as much
        as the arithmetic. The outputs are the same up to float rounding in the attention.
        """
        pre = self.normalize_before
        h = self.conv_layer_norm(x) if pre else x
        h = self.linear1(h)
        if self.act is not None:
            h = self.act(h)
        x = x + self.linear2(self.conv(h, incremental_state=incremental_state))
        if not pre:
            x = self.conv_layer_norm(x)
        attn = None
        if encoder_out is not None:
            h = self.encoder_attn_layer_norm(x) if pre else x
            h, attn = self._attend_step(h, encoder_out, encoder_padding_mask, incremental_state)
            x = x + h
            if not pre:
                x = self.encoder_attn_layer_norm(x)
        h = self.final_layer_norm(x) if pre else x
        x = x + self.fc2(F.relu(self.fc1(h)))
        if not pre:
            x = self.final_layer_norm(x)
        return x, attn

    def _attend_step(
        self, x: Tensor, encoder_out: Tensor, encoder_padding_mask: Tensor | None, incremental_state: IncrementalState
    ) -> tuple[Tensor, Tensor | None]:
        """Encoder attention of one step; keys and values are projected once per sentence.

        They are cached in the attention module's own incremental state with fairseq's keys
        and layout (``prev_key``/``prev_value``: (B, H, S, D)), so fairseq's
        ``reorder_incremental_state`` keeps them in step with the search. As in fairseq's
        "beamable" attention (``set_beam_size``), the B·beam hypotheses of beam search share
        one copy per sentence: the queries of a sentence's beam attend to it together.
        """
        mha = self.encoder_attn
        heads, head_dim, beam = mha.num_heads, mha.head_dim, mha.beam_size
        B = x.size(1)
        state = mha._get_input_buffer(incremental_state)
        if "prev_key" not in state:
            enc, pad = encoder_out, encoder_padding_mask
            if beam > 1 and enc.size(1) == B and B % beam == 0:  # fairseq's rule: one copy per sentence
                enc = enc.view(enc.size(0), -1, beam, enc.size(2))[:, :, 0]
                pad = None if pad is None else pad.view(-1, beam, pad.size(1))[:, 0]
            S, rows = enc.shape[:2]
            state["prev_key"] = mha.k_proj(enc).view(S, rows, heads, head_dim).permute(1, 2, 0, 3).contiguous()
            state["prev_value"] = mha.v_proj(enc).view(S, rows, heads, head_dim).permute(1, 2, 0, 3).contiguous()
            state["prev_key_padding_mask"] = pad
            mha._set_input_buffer(incremental_state, state)
        k, v, pad = state["prev_key"], state["prev_value"], state.get("prev_key_padding_mask")
        rows = k.size(0)
        group = B // rows  # queries per cached sentence: the beam, or 1
        q = mha.q_proj(x).view(rows, group, heads, head_dim).transpose(1, 2)  # (rows, H, group, D)
        if self.need_attn or B >= 16:
            # Explicitly: the head-averaged weights are wanted (alignment), or the batch is large
            # enough that this beats the fused CPU kernel, which is tuned for longer queries.
            scores = torch.matmul(q, k.transpose(2, 3)).mul_(mha.scaling)  # (rows, H, group, S)
            if pad is not None:
                scores.masked_fill_(pad.view(rows, 1, 1, -1), float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            out = torch.matmul(probs, v)
            attn = probs.mean(dim=1).reshape(B, 1, -1) if self.need_attn else None  # as fairseq returns it
        else:
            mask = None if pad is None else ~pad.view(rows, 1, 1, -1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            attn = None
        return mha.out_proj(out.transpose(1, 2).reshape(1, B, heads * head_dim)), attn
