"""Decoding benchmark: wall-clock, steps and BLEU of several fairseq models on one test set.

Models are either trained checkpoints (``--checkpoint NAME=PATH``) or randomly initialised
from fairseq training options (``--random NAME="--arch ... --kmatrix-layers ..."``). Each
setting (``--setting NAME:BATCH:BEAM``; default ``batch1-greedy:1:1`` and
``batch128-beam4:128:4``) decodes the same sentences with the generator ``fairseq-generate`` uses
under ``torch.set_num_threads(--threads)``.

What is timed: only the generator's ``generate`` calls (encoder + incremental
decoder + search) over all batches, after an untimed warm-up. Model building or loading,
data loading, batching/collation, detokenisation and scoring are outside the clock.

Every model is prepared as ``fairseq-generate`` prepares it (``prepare_for_inference_``: no
attention weights kept, ``--int8-dense`` applied). ``--int8 NAME=WHERE`` sets a model's
``--int8-dense`` (its dense linear layers in int8); ``--reference-step NAME`` decodes a model
through the plain-PyTorch decoding step (``model.use_reference_step()``: the reference
convolution step and explicit attention products instead of the compiled op and the fused
attention kernel), to measure what they gain; the table's last column names the earlier
model whose hypotheses are identical. Our LightConv models are searched as
``fairseq-generate`` searches them (``LeanSequenceGenerator``);
``--fairseq-search NAME`` gives model NAME fairseq's ``SequenceGenerator`` instead.

``--forced-length`` makes every hypothesis exactly as long as its reference (see
``forced_length.py``), so that models decode the same number of steps whatever their
weights; the decoder calls and hypothesis-steps are counted with a forward pre-hook and
reported. Without it decoding is natural (EOS when the model says so). ``--fixed-length N``
forces every hypothesis to N tokens instead.

``--ctranslate2 NAME=MODEL:COMPUTE_TYPE`` adds a row decoded by CTranslate2: the ``--random``
fairseq Transformer MODEL, converted (see ``ctranslate2_rows.py``; needs ``pip install
ctranslate2``).

Writes ``decode_bench.json``, ``decode_bench.md`` and ``decode_bench.png`` (plus the
hypotheses) into ``--out-dir`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compat.quiet import hydra_deprecations_silenced
from ..timing import machine_description
from .bleu import both_bleus
from .progress import Progress
from .report import write_reports

USER_DIR = str(Path(__file__).resolve().parent.parent)


@dataclass
class BenchModel:
    name: str
    model: torch.nn.Module
    task: object
    source: str  # checkpoint path or the random-init options
    params: int = 0
    kmatrix_params: int = 0
    training: dict = field(default_factory=dict)  # epochs, updates, minutes, valid loss of a trained checkpoint
    args: argparse.Namespace | None = None  # the fairseq options of a --random model
    fairseq_search: bool = False  # search with fairseq's SequenceGenerator even where fairseq-generate would not


@dataclass
class Setting:
    name: str
    batch: int
    beam: int


@dataclass
class RunResult:
    setting: str
    model: str
    seconds: float
    cpu_seconds: float  # CPU time of the process (all its threads) during the timed calls
    sentences: int
    tokens: int
    decoder_calls: int | None  # None: not counted (CTranslate2)
    decoder_rows: int | None
    hyps: list[str] = field(repr=False, default_factory=list)
    lengths: list[int] = field(repr=False, default_factory=list)  # generated tokens per sentence, EOS excluded


def parse_setting(text: str) -> Setting:
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or min(int(parts[1]), int(parts[2])) < 1:
        raise argparse.ArgumentTypeError(f"setting must be NAME:BATCH:BEAM with positive integers, got {text!r}")
    return Setting(parts[0], int(parts[1]), int(parts[2]))


def name_value(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (the argument type of --checkpoint, --random and --int8)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, got {text!r}")
    return name, value


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters inside KaleidoscopeLinear modules)."""
    from ..kmatrix import KaleidoscopeLinear

    total = sum(p.numel() for p in model.parameters())
    kmat = sum(p.numel() for m in model.modules() if isinstance(m, KaleidoscopeLinear) for p in m.parameters())
    return total, kmat


def random_model(name: str, data: str, options: str, seed: int) -> BenchModel:
    """A model built from fairseq training options, with fairseq's random initialisation."""
    from fairseq import options as fairseq_options
    from fairseq import tasks

    with hydra_deprecations_silenced():
        parser = fairseq_options.get_training_parser()
        args = fairseq_options.parse_args_and_arch(
            parser, [data, "--user-dir", USER_DIR, "--cpu", *shlex.split(options)]
        )
        task = tasks.setup_task(args)
        torch.manual_seed(seed)
        model = task.build_model(args)
    return BenchModel(name, model, task, f"random init: {options}", args=args)


def training_record(state: dict) -> dict:
    """What a fairseq-train checkpoint says about its training (empty for other checkpoints)."""
    extra = state.get("extra_state") or {}
    history = state.get("optimizer_history") or [{}]
    iterator = extra.get("train_iterator") or {}
    # fairseq stores the next epoch (iterations 0) once an epoch is complete
    epoch = iterator.get("epoch")
    if epoch is not None and not iterator.get("iterations_in_epoch"):
        epoch -= 1
    record = {
        "epoch": epoch,
        "updates": history[-1].get("num_updates"),
        "training_minutes": extra["previous_training_time"] / 60 if "previous_training_time" in extra else None,
        "valid_loss": extra.get("val_loss"),  # fairseq's validation loss (base 2) at this checkpoint
    }
    return {k: v for k, v in record.items() if v is not None}


def load_checkpoint(name: str, data: str, path: str) -> BenchModel:
    from fairseq import checkpoint_utils

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path!r} (model {name!r}) does not exist")
    with hydra_deprecations_silenced():
        state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides={"data": data})
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [path], arg_overrides={"data": data}, state=state
        )
    return BenchModel(name, models[0], task, path, training=training_record(state))


def prepare_like_generate(model: torch.nn.Module) -> None:
    """What fairseq-generate does to a loaded model (no alignment wanted, ``--int8-dense`` applied)."""
    from omegaconf import OmegaConf

    model.prepare_for_inference_(OmegaConf.create({"generation": {"beam": 1, "print_alignment": False}}))


def evenly_spaced(total: int, n: int | None) -> list[int]:
    """``n`` indices spread evenly over ``range(total)`` (all when n is None or >= total)."""
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise ValueError(f"--max-sentences must be >= 1, got {n}")
    return sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(n)})


def make_batches(dataset, indices: list[int], batch_size: int) -> list[dict]:
    """Collated batches of ``indices`` sorted as ``LanguagePairDataset.ordered_indices`` sorts them:
    by source length, then target length (so a batch's sources have similar lengths)."""
    order = sorted(indices, key=lambda i: (int(dataset.src_sizes[i]), int(dataset.tgt_sizes[i]), i))
    return [dataset.collater([dataset[i] for i in order[k : k + batch_size]]) for k in range(0, len(order), batch_size)]


def forced_lengths(batch: dict, pad: int, fixed_length: int | None) -> torch.Tensor:
    """The length (EOS excluded) each sentence of ``batch`` is forced to: ``fixed_length``, or its reference's."""
    if fixed_length is not None:
        return torch.full((batch["target"].size(0),), fixed_length, dtype=torch.long)
    return (batch["target"].ne(pad).sum(1) - 1).clamp(min=1)


def forced_decoding(args: argparse.Namespace) -> bool:
    """Whether hypotheses are forced to a length (--forced-length or --fixed-length)."""
    return args.forced_length or args.fixed_length is not None


def _generator(bm: BenchModel, setting: Setting, forced: bool, max_len_b: int):
    from fairseq.sequence_generator import SequenceGenerator

    from ..compat.generator import lean_generator_for
    from .forced_length import CountingEnsemble, ForcedLengthEnsemble

    tgt_dict = bm.task.target_dictionary
    ensemble = ForcedLengthEnsemble([bm.model], tgt_dict.eos()) if forced else CountingEnsemble([bm.model])
    ensemble.eval()
    if hasattr(bm.model, "set_beam_size"):  # the generator sets it for beams > 1 only: reset it for beam 1
        bm.model.set_beam_size(setting.beam)
    # the generator class fairseq-generate would use (the lean search loop for our LightConv models)
    generator = SequenceGenerator if bm.fairseq_search else lean_generator_for([bm.model]) or SequenceGenerator
    gen = generator(ensemble, tgt_dict, beam_size=setting.beam, max_len_a=0, max_len_b=max_len_b)
    return gen, ensemble


def decode(
    bm: BenchModel,
    setting: Setting,
    batches: list[dict],
    forced: bool,
    remove_bpe: bool,
    progress: Progress | None = None,
    max_len_b: int = 200,
    fixed_length: int | None = None,
) -> RunResult:
    """Decode ``batches``; time only ``generate``. Hypotheses are returned in sentence-id order.
    ``forced``: every hypothesis ends at its reference's length, or at ``fixed_length`` if given."""
    tgt_dict = bm.task.target_dictionary
    pad, eos = tgt_dict.pad(), tgt_dict.eos()
    if forced:
        max_len_b = max((int(forced_lengths(b, pad, fixed_length).max()) for b in batches), default=0) + 1
    gen, ensemble = _generator(bm, setting, forced, max_len_b)
    hyps: dict[int, str] = {}
    lengths: dict[int, int] = {}
    seconds, cpu_seconds, tokens, done = 0.0, 0.0, 0, 0
    for batch in batches:
        wanted = forced_lengths(batch, pad, fixed_length)
        if forced:
            ensemble.set_lengths(wanted)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = gen.generate([bm.model], batch)
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        for k, (sid, nbest) in enumerate(zip(batch["id"].tolist(), out, strict=True)):
            best = nbest[0]["tokens"]
            lengths[sid] = int(best.ne(eos).sum())
            if forced and lengths[sid] != int(wanted[k]):
                raise RuntimeError(
                    f"forced-length decoding produced {lengths[sid]} tokens for sentence {sid}, "
                    f"expected {int(wanted[k])}"
                )
            tokens += lengths[sid]
            hyps[sid] = tgt_dict.string(best, "subword_nmt" if remove_bpe else None)
        done += len(out)
        if progress is not None:
            progress.update(done, seconds)
    order = sorted(hyps)
    return RunResult(
        setting.name,
        bm.name,
        seconds,
        cpu_seconds,
        len(hyps),
        tokens,
        ensemble.decoder_calls,
        ensemble.decoder_rows,
        [hyps[k] for k in order],
        [lengths[k] for k in order],
    )


def references(bm: BenchModel, dataset, indices: list[int], remove_bpe: bool) -> list[str]:
    tgt_dict = bm.task.target_dictionary
    return [
        tgt_dict.string(dataset[i]["target"], "subword_nmt" if remove_bpe else None, escape_unk=True)
        for i in sorted(indices)
    ]


def check_same_vocab(models: list[BenchModel]) -> None:
    first = models[0]
    for bm in models[1:]:
        for side in ("source_dictionary", "target_dictionary"):
            if len(getattr(bm.task, side)) != len(getattr(first.task, side)):
                raise ValueError(f"models {first.name!r} and {bm.name!r} have different {side} sizes")


def ctranslate2_models(args: argparse.Namespace, by_name: dict[str, BenchModel]) -> list:
    """The ``--ctranslate2 NAME=MODEL:COMPUTE_TYPE`` rows: MODEL converted once, loaded per compute type."""
    if not args.ctranslate2:
        return []
    from . import ctranslate2_rows

    converted: dict[str, Path] = {}
    rows = []
    for name, value in args.ctranslate2:
        model, compute_type = ctranslate2_rows.parse_spec(name, value)
        if model not in by_name:
            raise SystemExit(f"decode_bench: --ctranslate2 {name}: {model!r} is not a model; models: {list(by_name)}")
        if name in by_name or any(r.name == name for r in rows):
            raise SystemExit(f"decode_bench: model names must be unique ({name!r})")
        if model not in converted:
            converted[model] = ctranslate2_rows.convert(by_name[model], args.data, Path(args.out_dir) / "ctranslate2")
        rows.append(ctranslate2_rows.load(name, by_name[model], converted[model], compute_type, args.threads))
    return rows


def decode_any(bm, setting: Setting, batches: list[dict], forced: bool, args: argparse.Namespace,
               progress: Progress | None = None) -> RunResult:
    """``decode`` for fairseq models, ``ctranslate2_rows.decode`` for CTranslate2 ones."""
    if isinstance(bm, BenchModel):
        return decode(bm, setting, batches, forced, args.remove_bpe, progress, fixed_length=args.fixed_length)
    from . import ctranslate2_rows

    return ctranslate2_rows.decode(bm, setting, batches, forced, args.fixed_length, args.remove_bpe, progress)


def run_benchmark(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    models = [load_checkpoint(name, args.data, path) for name, path in args.checkpoint]
    models += [random_model(name, args.data, options, args.seed) for name, options in args.random]
    if not models:
        raise SystemExit("decode_bench: give at least one --checkpoint NAME=PATH or --random NAME=OPTIONS")
    check_same_vocab(models)
    by_name = {bm.name: bm for bm in models}
    if len(by_name) != len(models):
        raise SystemExit("decode_bench: model names must be unique")
    int8 = dict(args.int8)
    for name in [*int8, *args.reference_step, *args.fairseq_search]:
        if name not in by_name:
            raise SystemExit(f"decode_bench: --int8/--reference-step/--fairseq-search name {name!r} is not a model; "
                             f"models: {list(by_name)}")
    for bm in models:
        bm.model.eval()
        bm.params, bm.kmatrix_params = count_params(bm.model)
        if bm.name in int8:
            bm.model.set_int8_dense(int8[bm.name])
            bm.source += f"; --int8-dense {int8[bm.name]}"
        prepare_like_generate(bm.model)
        if bm.name in args.reference_step:
            if not hasattr(bm.model, "use_reference_step"):
                raise SystemExit(f"decode_bench: --reference-step {bm.name}: the model has no reference step")
            bm.model.use_reference_step()
            bm.source += "; reference decoding step"
        if bm.name in args.fairseq_search:
            bm.fairseq_search = True
            bm.source += "; fairseq's SequenceGenerator"
    ct2 = ctranslate2_models(args, by_name)  # each listed after the model it was converted from
    models = [row for bm in models for row in [bm, *(c for c in ct2 if c.converted_from == bm.name)]]
    forced = forced_decoding(args)
    task = models[0].task
    task.load_dataset(args.subset)
    dataset = task.dataset(args.subset)
    indices = evenly_spaced(len(dataset), args.max_sentences)
    refs = references(models[0], dataset, indices, args.remove_bpe)
    warm_indices = indices[: args.warmup]
    results: list[RunResult] = []
    with torch.inference_mode():
        for setting in args.setting:
            batches = make_batches(dataset, indices, setting.batch)
            warm = make_batches(dataset, warm_indices, setting.batch) if warm_indices else []
            for bm in models:  # untimed warm-up of every model before any timing
                decode_any(bm, setting, warm, forced, args)
            for repeat in range(args.repeats):  # interleaved: m1, m2, m1, m2, ...
                for bm in models:
                    label = f"{setting.name} {bm.name}" + (f" (run {repeat + 1})" if args.repeats > 1 else "")
                    progress = Progress(label, len(indices), every=args.progress_every)
                    r = decode_any(bm, setting, batches, forced, args, progress)
                    progress.finish(r.seconds)
                    results.append(r)
    return summarise(args, models, results, refs, len(dataset))


def summarise(args, models: list[BenchModel], results: list[RunResult], refs: list[str], total: int) -> dict:
    by_key: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        by_key.setdefault((r.setting, r.model), []).append(r)
    rows = []
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for setting in args.setting:
        base_seconds = base_cpu = None
        seen: list[RunResult] = []
        for bm in models:
            runs = by_key[(setting.name, bm.name)]
            seconds = statistics.median(r.seconds for r in runs)  # the run itself when 1
            cpu = statistics.median(r.cpu_seconds for r in runs)
            r = runs[0]
            if base_seconds is None:
                base_seconds, base_cpu = seconds, cpu
            (out_dir / f"hyp.{setting.name}.{bm.name}.txt").write_text("".join(h + "\n" for h in r.hyps), "utf-8")
            bleu = both_bleus(r.hyps, refs, args.target_lang)
            same_as = next((o.model for o in seen if o.hyps == r.hyps), None)
            seen.append(r)
            rows.append(
                {
                    "setting": setting.name,
                    "batch": setting.batch,
                    "beam": setting.beam,
                    "model": bm.name,
                    "params": bm.params,
                    "kmatrix_params": bm.kmatrix_params,
                    "seconds": seconds,
                    "all_seconds": [x.seconds for x in runs],
                    "cpu_seconds": cpu,
                    "all_cpu_seconds": [x.cpu_seconds for x in runs],
                    "cpu_speedup": base_cpu / cpu,
                    "sentences": r.sentences,
                    "tokens": r.tokens,
                    "sentences_per_s": r.sentences / seconds,
                    "tokens_per_s": r.tokens / seconds,
                    "speedup": base_seconds / seconds,
                    "decoder_calls": r.decoder_calls,
                    "decoder_hypothesis_steps": r.decoder_rows,
                    "same_hyps_as": same_as,
                    # words (BPE removed) of all hypotheses / words of all references
                    "length_ratio": sum(len(h.split()) for h in r.hyps) / max(1, sum(len(x.split()) for x in refs)),
                    **bleu,
                }
            )
    report = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_description(),
        "threads": args.threads,
        "data": args.data,
        "subset": args.subset,
        "sentences": len(refs),
        "subset_size": total,
        "sentence_selection": "all" if len(refs) == total else f"{len(refs)} evenly spaced of {total}",
        "forced_length": forced_decoding(args),
        "fixed_length": args.fixed_length,
        "decoding": decoding_description(args),
        "timed": "generate calls only (encoder, incremental decoder, search), after "
        f"{args.warmup} warm-up sentence(s) per model and setting; excludes model build/load, data loading, "
        "collation, detokenisation and scoring"
        + ("; CTranslate2 rows: its translate_batch calls, likewise" if args.ctranslate2 else ""),
        "repeats": args.repeats,
        "baseline": models[0].name,
        "models": {
            bm.name: {
                "source": bm.source,
                "params": bm.params,
                "kmatrix_params": bm.kmatrix_params,
                "training": bm.training,
            }
            for bm in models
        },
        "rows": rows,
    }
    write_reports(report, out_dir, "decode_bench", args.title)
    return report


def decoding_description(args: argparse.Namespace) -> str:
    if args.fixed_length is not None:
        how = f"forced to {args.fixed_length} tokens per sentence"
    elif args.forced_length:
        how = "forced to the reference length"
    else:
        return "natural (EOS when the model says so, max length 200)"
    how += " (fairseq: EOS banned before it, decoded at it"
    if args.ctranslate2:
        how += "; CTranslate2: min = max decoding length, no EOS step"
    return how + ")"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="fairseq-preprocess'ed data directory")
    parser.add_argument("--checkpoint", action="append", default=[], type=name_value, metavar="NAME=PATH",
                        help="a trained model")
    parser.add_argument("--random", action="append", default=[], type=name_value, metavar="NAME=OPTIONS",
                        help="a randomly initialised model")
    parser.add_argument(
        "--int8", action="append", default=[], type=name_value, metavar="NAME=WHERE",
        help="run model NAME's dense linear layers in int8 (--int8-dense WHERE: output_projection, encoder, ...)",
    )
    parser.add_argument(
        "--reference-step", action="append", default=[], metavar="NAME",
        help="decode model NAME through the plain-PyTorch reference decoding step",
    )
    parser.add_argument(
        "--fairseq-search", action="append", default=[], metavar="NAME",
        help="search with fairseq's SequenceGenerator for model NAME (instead of the lean search loop)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        type=parse_setting,
        metavar="NAME:BATCH:BEAM",
        help="decoding setting (repeatable; default batch1-greedy:1:1 and batch128-beam4:128:4)",
    )
    parser.add_argument("--subset", default="test")
    parser.add_argument("--max-sentences", type=int, default=None, help="decode this many evenly spaced sentences")
    parser.add_argument("--forced-length", action="store_true", help="force each hypothesis to the reference length")
    parser.add_argument("--fixed-length", type=int, default=None, metavar="N",
                        help="force every hypothesis to N tokens (replaces --forced-length)")
    parser.add_argument(
        "--ctranslate2", action="append", default=[], type=name_value, metavar="NAME=MODEL:COMPUTE_TYPE",
        help="a row decoded by CTranslate2: --random Transformer MODEL converted, at COMPUTE_TYPE (float32, int8, ...)",
    )
    parser.add_argument("--remove-bpe", action="store_true", help="strip '@@ ' BPE before scoring")
    parser.add_argument("--target-lang", default="en")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed warm-up sentences per model and setting")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per model (median reported)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random initialisation")
    parser.add_argument("--progress-every", type=int, default=50, help="print progress every N sentences")
    parser.add_argument("--out-dir", default="decode_bench")
    parser.add_argument("--title", default="Decoding benchmark")
    return parser


def main(argv: list[str] | None = None) -> None:
    # fairseq's CLI format and level; force: a caller that imported fairseq directly has its DEBUG
    # root logger (one of fairseq's task modules calls logging.basicConfig(level=DEBUG)).
    log_format = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
    logging.basicConfig(level=logging.INFO, format=log_format, force=True)
    args = build_parser().parse_args(argv)
    if not args.setting:
        args.setting = [parse_setting("batch1-greedy:1:1"), parse_setting("batch128-beam4:128:4")]
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("decode_bench: --threads and --repeats must be >= 1, --warmup >= 0")
    if args.fixed_length is not None and (args.fixed_length < 1 or args.forced_length):
        raise SystemExit("decode_bench: --fixed-length N needs N >= 1 and replaces --forced-length")
    run_benchmark(args)
    print((Path(args.out_dir) / "decode_bench.md").read_text(encoding="utf-8"))
    print(f"written: {Path(args.out_dir) / 'decode_bench'}.{{md,json,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
