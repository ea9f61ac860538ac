"""Beam search without fairseq's general-purpose bookkeeping, for our LightConv models.

fairseq's ``SequenceGenerator`` serves every model and search strategy: per step it masks
NaNs through a boolean index over the whole (hypotheses x vocabulary) array, adds cumulative
scores out of place, and (at beam 1) reorders every cached state by the identity. At batch
128 beam 4 those full-vocabulary passes cost as much as a decoder layer; at batch 1 the
beam bookkeeping costs about as much as the decoder step itself.

``LeanSequenceGenerator`` is a ``SequenceGenerator`` whose searches run a shorter loop with
the same arithmetic in the same order (NaN, pad and unk handling, minimum and maximum
length, prefix tokens through fairseq's own ``_prefix_tokens``, suppressed tokens,
cumulative scores, top-k candidates, the length penalty, finished sentences leaving the
batch at the same steps), so its hypotheses, scores, positional scores and attention are
identical. Greedy search (beam 1) has its own loop without beams; beam search keeps
fairseq's candidate selection and finalisation (``finalize_hypos``), with the
full-vocabulary passes done in place. Anything the loops do not cover (constraints,
ensembles, an LM, n-gram blocking, ``--match-source-len``, other search strategies) runs
fairseq's own search after one log line per reason.

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
    logger.info("fairseq_kaleidoscope: search runs the lean loop (LeanSequenceGenerator)")


@functools.cache
def _log_fallback(why: str) -> None:
    logger.info("fairseq_kaleidoscope: %s: the lean search loop does not cover it; fairseq's search runs", why)


class LeanSequenceGenerator(SequenceGenerator):
    """``SequenceGenerator`` with lean loops for greedy and beam search (see the module docstring)."""

    def uncovered(self, sample: dict, prefix_tokens: Tensor | None, constraints: Tensor | None) -> str | None:
        """Why this search is not the lean loop's, or None when it is."""
        reasons = {
            f"search strategy {type(self.search).__name__}": type(self.search) is not search.BeamSearch,
            "an ensemble": self.model.models_size != 1,
            "a decoder without incremental state": not self.model.has_incremental_states(),
            "constraints": constraints is not None,
            "a language model": self.lm_model is not None,
            "--no-repeat-ngram-size": self.repeat_ngram_blocker is not None,
            "--match-source-len": self.match_source_len,
            "inputs other than src_tokens": "src_tokens" not in sample["net_input"],
            f"a vocabulary of {self.vocab_size} for beam {self.beam_size}": self.vocab_size < 2 * self.beam_size + 1,
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
        if self.beam_size == 1:
            return self._greedy(sample, prefix_tokens, bos_token)
        return self._beam(sample, prefix_tokens, bos_token)

    def _max_len(self, src_tokens: Tensor) -> int:
        max_len = min(int(self.max_len_a * src_tokens.size(1) + self.max_len_b), self.max_len - 1)
        if self.min_len > max_len:
            raise ValueError(f"min_len ({self.min_len}) cannot be larger than max_len ({max_len}), please adjust these")
        return max_len

    def _greedy(self, sample: dict, prefix_tokens: Tensor | None, bos_token: int | None) -> list[list[Hypothesis]]:
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        bsz = src_tokens.size(0)
        max_len = self._max_len(src_tokens)
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
            lprobs, tokens, scores, attn = self._next_lprobs(
                step, max_len, tokens, scores, attn, prefix_tokens, 1, encoder_outs, incremental_states
            )
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

    def _beam(self, sample: dict, prefix_tokens: Tensor | None, bos_token: int | None) -> list[list[Hypothesis]]:
        """fairseq's beam search for one model and ``BeamSearch``, its full-vocabulary passes in place."""
        src_tokens = sample["net_input"]["src_tokens"]
        bsz, beam, device = src_tokens.size(0), self.beam_size, src_tokens.device
        max_len = self._max_len(src_tokens)
        encoder_outs = self.model.forward_encoder(sample["net_input"])
        rows = torch.arange(bsz, device=device).repeat_interleave(beam)  # each sentence's encoder row, beam times
        encoder_outs = self.model.reorder_encoder_out(encoder_outs, rows)
        incremental_states: list[dict] = [{}]
        tokens = src_tokens.new_full((bsz * beam, max_len + 2), self.pad)
        tokens[:, 0] = self.eos if bos_token is None else bos_token
        scores = torch.zeros(bsz * beam, max_len + 1, device=device)  # cumulative log-probabilities
        attn: Tensor | None = None
        finalized: list[list[Hypothesis]] = [[] for _ in range(bsz)]
        finished = [False] * bsz  # finalize_hypos's record, by original sentence
        remaining = bsz
        cand_size = 2 * beam  # candidates per sentence: half may end with EOS
        bbsz_offsets = torch.arange(bsz, device=device).unsqueeze(1) * beam
        cand_offsets = torch.arange(cand_size, device=device)
        reorder: Tensor | None = None
        batch_idxs: Tensor | None = None
        for step in range(max_len + 1):
            if reorder is not None:
                if batch_idxs is not None:  # beam indices after finished sentences left the batch
                    shift = batch_idxs - torch.arange(batch_idxs.numel(), device=device)
                    reorder.view(-1, beam).add_(shift.unsqueeze(-1) * beam)
                self.model.reorder_incremental_state(incremental_states, reorder)
                encoder_outs = self.model.reorder_encoder_out(encoder_outs, reorder)
            lprobs, tokens, scores, attn = self._next_lprobs(
                step, max_len, tokens, scores, attn, prefix_tokens, beam, encoder_outs, incremental_states
            )
            scores = scores.type_as(lprobs)
            # BeamSearch.step: the top 2 * beam continuations of each sentence (first beam only at step 0)
            cand = lprobs.view(bsz, beam, self.vocab_size)
            if step == 0:
                cand = cand[:, 0].contiguous()
            else:
                cand.add_(scores.view(bsz, beam, -1)[:, :, step - 1].unsqueeze(-1))
            cand = cand.view(bsz, -1)
            cand_scores, cand_indices = torch.topk(cand, k=cand_size)
            cand_beams = torch.div(cand_indices, self.vocab_size, rounding_mode="trunc")
            cand_bbsz_idx = cand_beams + bbsz_offsets
            cand_indices = cand_indices.fmod(self.vocab_size)
            # hypotheses ending with EOS among the top beam candidates are finished
            eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)
            eos_bbsz_idx = torch.masked_select(cand_bbsz_idx[:, :beam], mask=eos_mask[:, :beam])
            done: list[int] = []
            if eos_bbsz_idx.numel() > 0:
                eos_scores = torch.masked_select(cand_scores[:, :beam], mask=eos_mask[:, :beam])
                # src_lengths matters only to --match-source-len, which this loop does not cover
                done = self.finalize_hypos(step, eos_bbsz_idx, eos_scores, tokens, scores, finalized, finished, beam,
                                           attn, None, max_len)  # fmt: skip
                remaining -= len(done)
            if remaining == 0:
                break
            if step >= max_len:
                raise RuntimeError(f"beam search: {remaining} sentences unfinished at the length limit {max_len}")
            if done:  # finished sentences leave the batch
                keep = torch.ones(bsz, dtype=torch.bool, device=device)
                keep[done] = False
                batch_idxs = keep.nonzero().squeeze(1)
                bbsz_offsets = bbsz_offsets[: batch_idxs.numel()]
                cand_beams, cand_scores = cand_beams[batch_idxs], cand_scores[batch_idxs]
                cand_indices = cand_indices[batch_idxs]
                cand_bbsz_idx = cand_beams + bbsz_offsets
                eos_mask = eos_mask[batch_idxs]
                prefix_tokens = None if prefix_tokens is None else prefix_tokens[batch_idxs]
                scores = scores.view(bsz, -1)[batch_idxs].view(batch_idxs.numel() * beam, -1)
                tokens = tokens.view(bsz, -1)[batch_idxs].view(batch_idxs.numel() * beam, -1)
                if attn is not None:
                    attn = attn.view(bsz, -1)[batch_idxs].view(batch_idxs.numel() * beam, attn.size(1), -1)
                bsz = batch_idxs.numel()
            else:
                batch_idxs = None
            # the first `beam` candidates not ending with EOS continue. Each beam has at most one EOS
            # candidate, so 2 * beam candidates always hold `beam` others and fairseq's slots to
            # ignore stay empty (uncovered() sends vocabularies too small for this to fairseq).
            active_mask = eos_mask.long() * cand_size + cand_offsets
            active_hypos = torch.topk(active_mask, k=beam, dim=1, largest=False)[1]
            reorder = torch.gather(cand_bbsz_idx, 1, active_hypos).view(-1)
            tokens[:, : step + 1] = tokens[:, : step + 1].index_select(0, reorder)
            tokens.view(bsz, beam, -1)[:, :, step + 1] = torch.gather(cand_indices, 1, active_hypos)
            if step > 0:
                scores[:, :step] = scores[:, :step].index_select(0, reorder)
            scores.view(bsz, beam, -1)[:, :, step] = torch.gather(cand_scores, 1, active_hypos)
            if attn is not None:
                attn[:, :, : step + 2] = attn[:, :, : step + 2].index_select(0, reorder)
        for sentence, hyps in enumerate(finalized):  # best first, ordered as fairseq orders them
            order = torch.sort(torch.tensor([float(h["score"].item()) for h in hyps]), descending=True)[1]
            finalized[sentence] = [hyps[i] for i in order]
        return finalized

    def _next_lprobs(
        self,
        step: int,
        max_len: int,
        tokens: Tensor,
        scores: Tensor,
        attn: Tensor | None,
        prefix_tokens: Tensor | None,
        beam: int,
        encoder_outs: list,
        incremental_states: list[dict],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One decoder step's next-token log-probabilities, edited as SequenceGenerator edits them, and the
        tokens, scores and attention buffer (allocated at the first step that returns attention) after it."""
        lprobs, step_attn = self.model.forward_decoder(
            tokens[:, : step + 1], encoder_outs, incremental_states, self.temperature
        )
        lprobs = self._mask(lprobs, step, max_len)
        if prefix_tokens is not None and step < prefix_tokens.size(1) and step < max_len:
            lprobs, tokens, scores = self._prefix_tokens(step, lprobs, scores, tokens, prefix_tokens, beam)
        else:  # as fairseq: the minimum length and suppressed tokens do not apply while a prefix is forced
            lprobs = self._unprefixed(lprobs, step)
        if step_attn is not None:
            if attn is None:
                attn = torch.empty(tokens.size(0), step_attn.size(1), max_len + 2).to(scores)
            attn[:, :, step + 1].copy_(step_attn)
        return lprobs, tokens, scores, attn

    def _mask(self, lprobs: Tensor, step: int, max_len: int) -> Tensor:
        """SequenceGenerator's edits of the next-token log-probabilities before prefix tokens, in its order."""
        torch.nan_to_num_(lprobs, nan=-math.inf, posinf=math.inf, neginf=-math.inf)  # one pass; NaN only
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
