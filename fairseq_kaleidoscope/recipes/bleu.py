"""BLEU two ways, with sacrebleu.

- **tokenized BLEU** ("multi-bleu" style, what IWSLT14 / Multi30k papers report): de-BPE'd
  hypotheses against the tokenized, lower-cased references, no further tokenisation
  (``sacrebleu`` with ``tokenize="none"``);
- **detokenized sacreBLEU**: both sides Moses-detokenized (sacremoses), then sacrebleu's
  standard ``13a`` tokenisation. With tokenized references only (as offline here) this
  is an approximation of sacreBLEU on raw references, and is labelled as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu
from sacremoses import MosesDetokenizer


def remove_bpe(line: str, symbol: str = "@@ ") -> str:
    """Undo subword-nmt style BPE (``"vern@@ ü@@ gen"`` → ``"vergnügen"``)."""
    return (line.rstrip() + " ").replace(symbol, "").rstrip()


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"BLEU: {len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("BLEU: no sentences")


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """BLEU on already tokenized text (no further tokenisation), 0–100."""
    _check(hyps, refs)
    # force: the text is tokenized on purpose (sacrebleu would warn "forgot to detokenize").
    return sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="none", force=True).score


def detokenized_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str = "en") -> float:
    """sacreBLEU (13a) after Moses detokenisation of both sides, 0–100."""
    _check(hyps, refs)
    detok = MosesDetokenizer(lang=lang)
    h = [detok.detokenize(s.split()) for s in hyps]
    r = [detok.detokenize(s.split()) for s in refs]
    return sacrebleu.corpus_bleu(h, [r]).score


def both_bleus(hyps: Sequence[str], refs: Sequence[str], lang: str = "en") -> dict[str, float]:
    return {"bleu_tokenized": tokenized_bleu(hyps, refs), "bleu_sacrebleu_detok": detokenized_bleu(hyps, refs, lang)}
