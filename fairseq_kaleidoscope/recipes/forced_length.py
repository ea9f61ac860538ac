"""Decoding to a fixed length per sentence, so that different models do identical work.

An untrained (randomly initialised) model stops at random lengths, so its decoding time
says nothing about its speed. ``ForcedLengthEnsemble`` wraps fairseq's ``EnsembleModel``
and edits the next-token log-probabilities of every hypothesis: end-of-sentence is
forbidden before the sentence's target length and the only choice at it. Every
hypothesis of sentence *i* therefore has exactly ``lengths[i]`` tokens plus EOS, for any
model and any beam size, and fairseq's ``SequenceGenerator`` is used unchanged.

The per-row lengths follow fairseq's reordering of hypotheses (beam expansion and the
removal of finished sentences), which always goes through ``reorder_encoder_out``.
"""

from __future__ import annotations

import math

import torch
from fairseq.sequence_generator import EnsembleModel


class CountingEnsemble(EnsembleModel):
    """``EnsembleModel`` that counts decoder calls and the hypotheses (rows) they decode.

    fairseq's generator calls ``model.decoder.forward`` directly (no module hooks run),
    so the count is kept here, where every decoder step goes through.
    """

    def __init__(self, models: list) -> None:
        super().__init__(models)
        self.decoder_calls = 0
        self.decoder_rows = 0

    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):  # type: ignore[override]
        self.decoder_calls += 1
        self.decoder_rows += int(tokens.size(0))
        return super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)


class ForcedLengthEnsemble(CountingEnsemble):
    """Counting ensemble whose hypotheses end exactly at per-sentence target lengths."""

    def __init__(self, models: list, eos: int) -> None:
        super().__init__(models)
        self.eos = eos
        self.row_lengths: torch.Tensor | None = None

    def set_lengths(self, lengths: torch.Tensor) -> None:
        """Target lengths (EOS excluded, >= 1) of the next batch, one per sentence."""
        if lengths.dim() != 1 or bool((lengths < 1).any()):
            raise ValueError(f"forced lengths must be a 1-D tensor of values >= 1, got {lengths.tolist()}")
        self.row_lengths = lengths.long()

    def reorder_encoder_out(self, encoder_outs, new_order):  # type: ignore[override]
        if self.row_lengths is None:
            raise RuntimeError("ForcedLengthEnsemble: call set_lengths() before generating each batch")
        self.row_lengths = self.row_lengths.index_select(0, new_order.to(self.row_lengths.device))
        return super().reorder_encoder_out(encoder_outs, new_order)

    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):  # type: ignore[override]
        lprobs, attn = super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)
        if self.row_lengths is None or self.row_lengths.numel() != lprobs.size(0):
            raise RuntimeError("ForcedLengthEnsemble: lengths do not match the hypotheses being decoded")
        step = tokens.size(1) - 1  # tokens holds BOS plus the `step` tokens generated so far
        lprobs[self.row_lengths > step, self.eos] = -math.inf
        at_end = self.row_lengths == step
        if bool(at_end.any()):
            lprobs[at_end] = -math.inf
            lprobs[at_end, self.eos] = 0.0
        return lprobs, attn
