"""Encoder-decoder attention with a decoding step: fairseq's ``MultiheadAttention`` plus ``step()``.

The full-sequence forward is fairseq's, unchanged (same parameters, so checkpoints load as
they are). Decoding projects the encoder's keys and values once per sentence into an
:class:`EncoderAttentionState` and attends one query per hypothesis at each step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor


class EncoderAttentionState:
    """Keys and values of the encoder output, projected once: (R, H, S, D) each, and the (R, S)
    padding mask (True = padding) or None.

    As in fairseq's "beamable" attention (``set_beam_size``), the ``group`` consecutive
    hypotheses of a sentence's beam share one row (R = B / group); ``group`` is 1 otherwise.
    """

    __slots__ = ("group", "key", "padding_mask", "value")

    def __init__(self, key: Tensor, value: Tensor, padding_mask: Tensor | None, group: int) -> None:
        self.key, self.value, self.padding_mask, self.group = key, value, padding_mask, group

    def reorder(self, new_order: Tensor) -> None:
        """Hypothesis b continues hypothesis ``new_order[b]``. With ``group`` > 1 each group of
        ``group`` consecutive hypotheses must come from one sentence, as in fairseq's beam search."""
        rows = self.key.size(0)
        if rows == 1 and new_order.numel() == self.group:  # batch 1: nothing can move
            return
        src = new_order if self.group == 1 else new_order.view(-1, self.group)[:, 0] // self.group
        if src.numel() == rows and torch.equal(src, torch.arange(rows, device=src.device)):
            return  # the beam moved within its sentences only (or greedy search kept every row)
        self.key = self.key.index_select(0, src)
        self.value = self.value.index_select(0, src)
        if self.padding_mask is not None:
            self.padding_mask = self.padding_mask.index_select(0, src)


class EncoderAttention(MultiheadAttention):
    """fairseq's encoder-decoder ``MultiheadAttention`` with :meth:`allocate_state` and :meth:`step`."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, encoder_decoder_attention=True)
        self.reference_step = False  # always the explicit products (set by ``use_reference_step``)

    def allocate_state(
        self, batch: int, encoder_out: Tensor, padding_mask: Tensor | None, rows: Tensor | None
    ) -> EncoderAttentionState:
        """Project the keys and values of ``batch`` hypotheses once.

        ``encoder_out``: (S, N, C), ``padding_mask``: (N, S) or None; hypothesis b reads row
        ``rows[b]`` of them (row b if ``rows`` is None).
        """
        beam = self.beam_size
        group = beam if beam > 1 and batch % beam == 0 else 1
        if rows is not None:
            rows = rows[::group]
            encoder_out = encoder_out.index_select(1, rows)
            padding_mask = None if padding_mask is None else padding_mask.index_select(0, rows)
        elif group > 1:
            encoder_out = encoder_out[:, ::group]
            padding_mask = None if padding_mask is None else padding_mask[::group]
        S, R = encoder_out.shape[:2]
        H, D = self.num_heads, self.head_dim
        key = self.k_proj(encoder_out).view(S, R, H, D).permute(1, 2, 0, 3).contiguous()
        value = self.v_proj(encoder_out).view(S, R, H, D).permute(1, 2, 0, 3).contiguous()
        return EncoderAttentionState(key, value, padding_mask, group)

    def reorder_incremental_state(self, incremental_state: dict, new_order: Tensor) -> None:
        """Nothing: the decoding state is an :class:`EncoderAttentionState` its owner reorders
        (fairseq's version would store an empty buffer under this module's key)."""

    def step(self, x: Tensor, state: EncoderAttentionState, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """One query per hypothesis: (B, C) -> (B, C), and the head-averaged weights (B, 1, S) if wanted."""
        k, v, pad = state.key, state.value, state.padding_mask
        rows, H, _, D = k.shape
        B = x.size(0)
        q = self.q_proj(x).view(rows, B // rows, H, D).transpose(1, 2)  # (rows, H, group, D)
        if need_weights or self.reference_step or B >= 16:
            # Explicitly: the weights are wanted (alignment), or the batch is large enough that
            # this beats the fused CPU kernel, which is tuned for longer queries.
            scores = torch.matmul(q, k.transpose(2, 3)).mul_(self.scaling)  # (rows, H, group, S)
            if pad is not None:
                scores.masked_fill_(pad.view(rows, 1, 1, -1), float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            out = torch.matmul(probs, v)
            attn = probs.mean(dim=1).reshape(B, 1, -1) if need_weights else None  # as fairseq returns it
        else:
            mask = None if pad is None else ~pad.view(rows, 1, 1, -1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            attn = None
        return self.out_proj(out.transpose(1, 2).reshape(B, H * D)), attn
