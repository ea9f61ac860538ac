"""Sequence-level distillation data (Kim & Rush, 2016): a teacher translates a binarised corpus.

    python -m fairseq_kaleidoscope distill --teacher checkpoint_best.pt --data data-bin/multi30k.de-en \\
        --out data-bin/multi30k.de-en.distilled [--beam 5] [--batch-size 128] [--threads 2] [--mix]

The teacher (any fairseq translation checkpoint our user dir can load) decodes every sentence
of ``--subset`` (default train) with beam search, in the order fairseq batches it (by length),
and its best hypotheses are written, still in subwords, next to the sources in the corpus's
original order (``OUT/text/train.{src,tgt}``). That text is binarised with the teacher's own
dictionaries, so a student trained on ``OUT`` shares the teacher's vocabulary; validation and
test splits are copied unchanged from ``--data`` (students are validated on real references).
``--mix`` trains on the original pairs plus the distilled ones.

Progress with an ETA goes to stderr; the teacher's decoding time is printed on its own line.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path

import torch

from ..compat.quiet import hydra_deprecations_silenced
from .progress import Progress


def translate(
    teacher: str,
    data: str,
    subset: str = "train",
    beam: int = 5,
    batch_size: int = 128,
    max_sentences: int | None = None,
    progress_every: int = 1000,
) -> tuple[object, list[str], list[str], list[str], float]:
    """Decode ``subset`` of ``data`` with ``teacher``.

    Returns (task, sources, references, hypotheses, decoding seconds); the text is in subwords,
    in the corpus's order (the first ``max_sentences`` sentences when given).
    """
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    if not Path(teacher).is_file():
        raise FileNotFoundError(f"teacher checkpoint {teacher!r} does not exist")
    with hydra_deprecations_silenced():
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([teacher], arg_overrides={"data": data})
    model = models[0].eval()
    model.prepare_for_inference_(OmegaConf.create({"generation": {"beam": beam, "print_alignment": False}}))
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    total = len(dataset) if max_sentences is None else min(max_sentences, len(dataset))
    if total < 1:
        raise ValueError(f"{data}: subset {subset!r} has no sentences")
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    # the task's generator: the one fairseq-generate would use for this model
    generator = task.build_generator([model], Namespace(beam=beam))
    order = sorted(range(total), key=lambda i: (int(dataset.src_sizes[i]), i))
    hyps: dict[int, str] = {}
    seconds, progress = 0.0, Progress("teacher", total, every=progress_every)
    with torch.inference_mode():
        for k in range(0, total, batch_size):
            batch = dataset.collater([dataset[i] for i in order[k : k + batch_size]])
            start = time.perf_counter()
            out = task.inference_step(generator, [model], batch)
            seconds += time.perf_counter() - start
            for sid, nbest in zip(batch["id"].tolist(), out, strict=True):
                hyps[sid] = tgt_dict.string(nbest[0]["tokens"])
            progress.update(len(hyps), seconds)
    progress.finish(seconds)
    sources = [src_dict.string(dataset[i]["source"]) for i in range(total)]
    refs = [tgt_dict.string(dataset[i]["target"]) for i in range(total)]
    return task, sources, refs, [hyps[i] for i in range(total)], seconds


def write_text(prefix: Path, src_lang: str, tgt_lang: str, sources: Sequence[str], targets: Sequence[str]) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for lang, lines in ((src_lang, sources), (tgt_lang, targets)):
        Path(f"{prefix}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def binarise(text_prefix: Path, data: str, out: Path, src_lang: str, tgt_lang: str, subset: str) -> None:
    """fairseq-preprocess ``text_prefix`` with ``data``'s dictionaries; copy ``data``'s other splits."""
    from fairseq import options
    from fairseq_cli import preprocess

    argv = [
        *("--source-lang", src_lang, "--target-lang", tgt_lang, "--trainpref", str(text_prefix)),
        *("--destdir", str(out), "--workers", "1"),
        *("--srcdict", f"{data}/dict.{src_lang}.txt", "--tgtdict", f"{data}/dict.{tgt_lang}.txt"),
    ]
    with hydra_deprecations_silenced():
        preprocess.main(options.get_preprocessing_parser().parse_args(argv))
    if subset != "train":  # fairseq-preprocess names the --trainpref split "train"
        for path in out.glob(f"train.{src_lang}-{tgt_lang}.*"):
            path.rename(out / path.name.replace("train.", f"{subset}.", 1))
    for path in Path(data).glob(f"*.{src_lang}-{tgt_lang}.*"):
        if not path.name.startswith(f"{subset}.") and path.suffix in (".bin", ".idx"):
            shutil.copyfile(path, out / path.name)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="the teacher's checkpoint")
    p.add_argument("--data", required=True, help="the teacher's fairseq-preprocess'ed data directory")
    p.add_argument("--out", required=True, help="data directory to write (the student's training data)")
    p.add_argument("--subset", default="train", help="split to distil (default train)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128, help="sentences per decoding batch")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads")
    p.add_argument("--mix", action="store_true", help="keep the original pairs beside the distilled ones")
    p.add_argument("--max-sentences", type=int, help="only the first N sentences (smoke runs)")
    args = p.parse_args(argv)
    if min(args.beam, args.batch_size, args.threads) < 1:
        p.error("--beam, --batch-size and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    task, sources, refs, hyps, seconds = translate(
        args.teacher, args.data, args.subset, args.beam, args.batch_size, args.max_sentences
    )
    src_lang, tgt_lang = task.cfg.source_lang, task.cfg.target_lang
    out = Path(args.out)
    text = out / "text" / args.subset
    if args.mix:
        write_text(text, src_lang, tgt_lang, [*sources, *sources], [*refs, *hyps])
    else:
        write_text(text, src_lang, tgt_lang, sources, hyps)
    binarise(text, args.data, out, src_lang, tgt_lang, args.subset)
    empty = sum(1 for h in hyps if not h)
    ratio = sum(len(h.split()) for h in hyps) / max(1, sum(len(r.split()) for r in refs))
    print(
        f"teacher decoding: {len(hyps)} sentences in {seconds:.1f} s ({len(hyps) / seconds:.1f} sentences/s; "
        f"beam {args.beam}, batch {args.batch_size}, {args.threads} thread{'s' * (args.threads > 1)})",
        flush=True,
    )
    print(
        f"distilled {args.subset}: {len(hyps)} pairs{' + the originals' if args.mix else ''} -> {out} "
        f"(subword length / reference {ratio:.3f}, {empty} empty)",
        flush=True,
    )


if __name__ == "__main__":
    main()
