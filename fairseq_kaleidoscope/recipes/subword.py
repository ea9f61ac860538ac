"""Joint BPE with sentencepiece, written in the subword-nmt ``@@ `` format.

The input is already tokenized (Moses) and lower-cased, so every space is a word
boundary. sentencepiece learns the merges; its pieces are then written as
``vern@@ ü@@ gen`` (continuation marked on the left piece), the format of the standard
IWSLT14 preparation, so fairseq's ``--remove-bpe`` / :func:`bleu.remove_bpe` undo it
exactly and both kinds of data go through the same scripts.

CLI:
  ``python -m fairseq_kaleidoscope.recipes.subword learn MODEL_PREFIX --vocab-size 10000 FILE...``
  ``python -m fairseq_kaleidoscope.recipes.subword apply MODEL_PREFIX.model IN OUT``
"""

from __future__ import annotations

import argparse
from pathlib import Path

WORD_START = "\u2581"  # sentencepiece's word-boundary mark


def learn(model_prefix: str, files: list[str], vocab_size: int, threads: int = 1) -> str:
    """Train a joint BPE model on ``files``; returns the ``.model`` path."""
    import sentencepiece as spm

    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"subword: training file {path!r} does not exist")
    spm.SentencePieceTrainer.train(
        input=",".join(files),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        normalization_rule_name="identity",  # keep the tokenized text exactly as it is
        split_digits=False,
        num_threads=threads,
        minloglevel=2,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
    )
    return model_prefix + ".model"


def pieces_to_subword_nmt(pieces: list[str]) -> str:
    """sentencepiece pieces → ``a@@ b c`` (words joined by spaces, ``@@`` inside words)."""
    words: list[list[str]] = []
    for piece in pieces:
        if piece.startswith(WORD_START) or not words:
            words.append([])
        piece = piece.lstrip(WORD_START)
        if piece:
            words[-1].append(piece)
    return " ".join("@@ ".join(w) for w in words if w)


def apply(model_path: str, src: str, dst: str) -> int:
    """BPE-encode ``src`` into ``dst``; returns the number of lines."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_path)
    n = 0
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for line in fin:
            fout.write(pieces_to_subword_nmt(sp.encode(line.strip(), out_type=str)) + "\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_learn = sub.add_parser("learn", help="learn a joint BPE model")
    p_learn.add_argument("model_prefix")
    p_learn.add_argument("files", nargs="+")
    p_learn.add_argument("--vocab-size", type=int, default=10000)
    p_learn.add_argument("--threads", type=int, default=1)
    p_apply = sub.add_parser("apply", help="encode a file in '@@ ' format")
    p_apply.add_argument("model")
    p_apply.add_argument("src")
    p_apply.add_argument("dst")
    args = parser.parse_args(argv)
    if args.cmd == "learn":
        print(f"subword: learned {learn(args.model_prefix, args.files, args.vocab_size, args.threads)}")
    else:
        print(f"subword: {apply(args.model, args.src, args.dst)} lines -> {args.dst}")


if __name__ == "__main__":
    main()
