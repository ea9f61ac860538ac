"""Greedy search without fairseq's beam bookkeeping, for our LightConv models.

At batch 1, fairseq's ``SequenceGenerator`` spends about as long per step on bookkeeping
for beams as our decoder spends on the step itself: candidate masks, an identity
reordering of every cached state, finalisation through index lists. With one beam none of
that is needed. ``LeanSequenceGenerator`` is a ``SequenceGenerator`` whose beam-1 searches
run a short loop with the same arithmetic in the same order (NaN, pad and unk handling,
minimum and maximum length, prefix tokens through fairseq's own ``_prefix_tokens``,
cumulative scores, top-k tie-breaking, the length penalty, finished sentences leaving the
batch at the same steps), so its hypotheses, scores, positional scores and attention are
identical. Anything the loop does not cover (beam > 1, constraints, ensembles, an LM,
n-gram blocking, other search strategies) runs fairseq's own search after one log line per
reason.

``fairseq-generate`` and ``fairseq-interactive`` pick it for our LightConv models through
the ``lean_search`` fix in ``compat`` (opt out: ``KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES=lean_search``).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator
from torch import Tensor

logger = logging.getLogger(__name__)

Hypothesis = dict[str, Tensor]


@functools.cache
def _log_lean() -> None:
    logger.info("fairseq_kaleidoscope: greedy search runs the lean loop (LeanSequenceGenerator)")


@functools.cache
def _log_fallback(why: str) -> None:
    logger.info("fairseq_kaleidoscope: %s: the lean greedy loop does not cover it; fairseq's search runs", why)


class LeanSequenceGenerator(SequenceGenerator):
    """``SequenceGenerator`` with a lean loop for greedy search (see the module docstring)."""

    def uncovered(self, sample: dict, prefix_tokens: Tensor | None, constraints: Tensor | None) -> str | None:
        """Why this search is not the lean loop's, or None when it is."""
        reasons = {
            f"beam {self.beam_size}": self.beam_size != 1,
            f"search strategy {type(self.search).__name__}": type(self.search) is not search.BeamSearch,
            "an ensemble": self.model.models_size != 1,
            "a decoder without incremental state": not self.model.has_incremental_states(),
            "constraints": constraints is not None,
            "a language model": self.lm_model is not None,
            "--no-repeat-ngram-size": self.repeat_ngram_blocker is not None,
            "--match-source-len": self.match_source_len,
            "inputs other than src_tokens": "src_tokens" not in sample["net_input"],
        }
        return next((why for why, applies in reasons.items() if applies), None)

    def _generate(
        self,
        sample: dict,
        prefix_tokens: Tensor | None = None,
        constraints: Tensor | None = None,
        bos_token: int | None = None,
    ) -> list[list[Hypothesis]]:
        why = self.uncovered(sample, prefix_tokens, constraints)
        if why is not None:
            _log_fallback(why)
            return super()._generate(sample, prefix_tokens, constraints, bos_token)
        _log_lean()
        return self._greedy(sample, prefix_tokens, bos_token)

    def _greedy(self, sample: dict, prefix_tokens: Tensor | None, bos_token: int | None) -> list[list[Hypothesis]]:
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        bsz, src_len = src_tokens.size()[:2]
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        if self.min_len > max_len:
            raise ValueError(f"min_len ({self.min_len}) cannot be larger than max_len ({max_len}), please adjust these")
        encoder_outs = self.model.forward_encoder(net_input)
        encoder_outs = self.model.reorder_encoder_out(encoder_outs, torch.arange(bsz, device=src_tokens.device))
        incremental_states: list[dict] = [{}]
        tokens = src_tokens.new_full((bsz, max_len + 2), self.pad)
        tokens[:, 0] = self.eos if bos_token is None else bos_token
        scores = torch.zeros(bsz, max_len + 1, device=src_tokens.device)  # cumulative log-probabilities
        attn: Tensor | None = None
        finalized: list[list[Hypothesis]] = [[] for _ in range(bsz)]
        sentences = list(range(bsz))  # the batch index of each row still decoding
        keep: Tensor | None = None
        k = min(2, self.vocab_size - 1)  # as BeamSearch: two candidates, so top-k ties break the same way
        for step in range(max_len + 1):
            if keep is not None:  # finished sentences leave the batch, at the step fairseq removes them
                self.model.reorder_incremental_state(incremental_states, keep)
                encoder_outs = self.model.reorder_encoder_out(encoder_outs, keep)
            lprobs, step_attn = self.model.forward_decoder(
                tokens[:, : step + 1], encoder_outs, incremental_states, self.temperature
            )
            lprobs = self._mask(lprobs, step, max_len)
            if prefix_tokens is not None and step < prefix_tokens.size(1) and step < max_len:
                lprobs, tokens, scores = self._prefix_tokens(step, lprobs, scores, tokens, prefix_tokens, 1)
            else:  # as fairseq: the minimum length and suppressed tokens do not apply while a prefix is forced
                lprobs = self._unprefixed(lprobs, step)
            if step_attn is not None:
                if attn is None:
                    attn = torch.empty(bsz, step_attn.size(1), max_len + 2).to(scores)
                attn[:, :, step + 1].copy_(step_attn)
            if step > 0:
                lprobs = lprobs + scores[:, step - 1].unsqueeze(-1)
            best, chosen = torch.topk(lprobs, k)
            scores[:, step] = best[:, 0]
            tokens[:, step + 1] = chosen[:, 0]
            ended = chosen[:, 0].eq(self.eos) & best[:, 0].ne(-math.inf)
            if not bool(ended.any()):
                keep = None
                continue
            rows = ended.nonzero().squeeze(1)
            self._finalize(step, rows, tokens, scores, attn, [sentences[r] for r in rows.tolist()], finalized)
            if rows.numel() == len(sentences):
                break
            keep = (~ended).nonzero().squeeze(1)
            sentences = [sentences[r] for r in keep.tolist()]
            tokens, scores = tokens[keep], scores[keep]
            prefix_tokens = None if prefix_tokens is None else prefix_tokens[keep]
            attn = None if attn is None else attn[keep]
        return finalized

    def _mask(self, lprobs: Tensor, step: int, max_len: int) -> Tensor:
        """SequenceGenerator's edits of the next-token log-probabilities before prefix tokens, in its order."""
        lprobs[lprobs != lprobs] = -math.inf
        lprobs[:, self.pad] = -math.inf
        lprobs[:, self.unk] -= self.unk_penalty
        if step >= max_len:
            lprobs[:, : self.eos] = -math.inf
            lprobs[:, self.eos + 1 :] = -math.inf
        return lprobs

    def _unprefixed(self, lprobs: Tensor, step: int) -> Tensor:
        """SequenceGenerator's edits of positions that no prefix token forces."""
        if step < self.min_len:
            lprobs[:, self.eos] = -math.inf
        if self.token_indices_to_suppress is not None:
            lprobs[:, self.token_indices_to_suppress] = -math.inf
        return lprobs

    def _finalize(
        self,
        step: int,
        rows: Tensor,
        tokens: Tensor,
        scores: Tensor,
        attn: Tensor | None,
        sentences: list[int],
        finalized: list[list[Hypothesis]],
    ) -> None:
        """The hypotheses of ``rows`` end with EOS at ``step``: as ``SequenceGenerator.finalize_hypos``."""
        hyp_tokens = tokens.index_select(0, rows)[:, 1 : step + 2]
        positional = scores.index_select(0, rows)[:, : step + 1]
        final = positional[:, step].clone()
        positional[:, 1:] = positional[:, 1:] - positional[:, :-1]
        if self.normalize_scores:
            final /= (step + 1) ** self.len_penalty
        hyp_attn = attn.index_select(0, rows)[:, :, 1 : step + 2] if attn is not None else None
        for i, sentence in enumerate(sentences):
            finalized[sentence].append({
                "tokens": hyp_tokens[i],
                "score": final[i],
                "attention": hyp_attn[i] if hyp_attn is not None else torch.empty(0),
                "alignment": torch.empty(0),
                "positional_scores": positional[i],
            })  # fmt: skip


def lean_search_applies(models: list) -> bool:
    """Whether ``fairseq-generate`` should search ``models`` with ``LeanSequenceGenerator``: our LightConv models."""
    from .kaleidoscope_lightconv import KaleidoscopeLightConvModel

    return bool(models) and all(isinstance(m, KaleidoscopeLightConvModel) for m in models)
