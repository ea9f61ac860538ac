"""CTranslate2 rows of the decoding benchmark: a dense fairseq Transformer of the run, converted.

CTranslate2 (``pip install ctranslate2``, an optional benchmark dependency) cannot run
DynamicConv or K-matrix models; what it runs is fairseq's Transformer. A ``--random`` model of
the run with a Transformer architecture is written as a fairseq checkpoint, converted once with
CTranslate2's fairseq converter (what ``ct2-fairseq-converter`` does) and loaded as a
``ctranslate2.Translator`` per compute type (``float32``, ``int8``, ...). It decodes the same
source sentences, batches and beam sizes with ``translate_batch``; only those calls are timed.

Forced lengths: CTranslate2 takes one minimum and maximum decoding length per call, so a run
with CTranslate2 rows forces every hypothesis to ``--fixed-length`` tokens (any batch), or to its
reference length at batch 1. CTranslate2 ends a hypothesis at the maximum length without
decoding an end-of-sentence token, so it decodes one step less per sentence than fairseq's
generator (which decodes the forced EOS).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .decode_bench import BenchModel, RunResult, Setting, forced_lengths


@dataclass
class CTranslate2Model:
    name: str
    translator: object  # ctranslate2.Translator
    source: str
    params: int
    task: object  # the converted model's fairseq task (dictionaries)
    converted_from: str  # the name of the fairseq model it was converted from
    kmatrix_params: int = 0
    training: dict = field(default_factory=dict)


def parse_spec(name: str, value: str) -> tuple[str, str]:
    """The ``MODEL:COMPUTE_TYPE`` of ``--ctranslate2 NAME=MODEL:COMPUTE_TYPE`` -> (model, compute type)."""
    model, sep, compute_type = value.rpartition(":")
    if not sep or not model or not compute_type:
        raise SystemExit(
            f"decode_bench: --ctranslate2 {name}={value}: expected NAME=MODEL:COMPUTE_TYPE, "
            "e.g. ct2-int8=transformer:int8"
        )
    return model, compute_type


def _import_ctranslate2():
    try:
        import ctranslate2
    except ImportError as e:
        raise SystemExit(
            "decode_bench: --ctranslate2 needs the optional package ctranslate2 (pip install ctranslate2)"
        ) from e
    return ctranslate2


def convert(bm: BenchModel, data: str, out_dir: Path) -> Path:
    """Write ``bm`` (a randomly initialised fairseq Transformer) as a checkpoint and convert it
    with CTranslate2's fairseq converter; returns the CTranslate2 model directory."""
    ctranslate2 = _import_ctranslate2()
    if bm.args is None:
        raise SystemExit(f"decode_bench: --ctranslate2 converts --random models; {bm.name!r} is a checkpoint")
    if "transformer" not in bm.args.arch:
        raise SystemExit(
            f"decode_bench: CTranslate2 runs fairseq Transformers, model {bm.name!r} is --arch {bm.args.arch}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / f"{bm.name}.fairseq.pt"
    torch.save({"args": bm.args, "model": bm.model.state_dict()}, checkpoint)
    target = out_dir / f"{bm.name}.ctranslate2"
    # The converter loads with torch.load(weights_only=True); the checkpoint's only non-tensor
    # object is the argparse.Namespace this process just wrote.
    with torch.serialization.safe_globals([argparse.Namespace]):
        ctranslate2.converters.FairseqConverter(str(checkpoint), data).convert(str(target), force=True)
    return target


def load(name: str, bm: BenchModel, model_dir: Path, compute_type: str, threads: int) -> CTranslate2Model:
    ctranslate2 = _import_ctranslate2()
    translator = ctranslate2.Translator(
        str(model_dir), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1
    )
    source = f"CTranslate2 {ctranslate2.__version__} {compute_type}, {bm.name} converted ({bm.source})"
    return CTranslate2Model(name, translator, source, bm.params, bm.task, bm.name)


def decode(
    cm: CTranslate2Model, setting: Setting, batches: list[dict], forced: bool, fixed_length: int | None,
    remove_bpe: bool, progress=None,
) -> RunResult:
    """Translate ``batches`` (fairseq-collated) with ``translate_batch``; hypotheses in sentence-id order."""
    src_dict, tgt_dict = cm.task.source_dictionary, cm.task.target_dictionary
    if forced and fixed_length is None and setting.batch != 1:
        raise SystemExit(
            "decode_bench: CTranslate2 forces one length per call: use --fixed-length N, or batch 1 "
            f"(setting {setting.name} has batch {setting.batch})"
        )
    hyps: dict[int, str] = {}
    lengths: dict[int, int] = {}
    seconds, cpu_seconds, tokens, done = 0.0, 0.0, 0, 0
    special = {src_dict.pad(), src_dict.eos()}  # CTranslate2 takes the words; it appends EOS itself
    for batch in batches:
        sources = [[src_dict[t] for t in row.tolist() if t not in special] for row in batch["net_input"]["src_tokens"]]
        limits = {"max_decoding_length": 200}
        if forced:  # one length for the whole call (checked above: fixed, or batch 1)
            length = int(forced_lengths(batch, tgt_dict.pad(), fixed_length)[0])
            limits = {"min_decoding_length": length, "max_decoding_length": length}
        start, cpu_start = time.perf_counter(), time.process_time()
        out = cm.translator.translate_batch(
            sources, beam_size=setting.beam, max_batch_size=len(sources), return_scores=False, **limits
        )
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        for sid, result in zip(batch["id"].tolist(), out, strict=True):
            best = result.hypotheses[0]
            lengths[sid] = len(best)
            tokens += len(best)
            ids = torch.tensor([tgt_dict.index(t) for t in best], dtype=torch.long)
            hyps[sid] = tgt_dict.string(ids, "subword_nmt" if remove_bpe else None)
        done += len(out)
        if progress is not None:
            progress.update(done, seconds)
    order = sorted(hyps)
    return RunResult(setting.name, cm.name, seconds, cpu_seconds, len(hyps), tokens, None, None,
                     [hyps[k] for k in order], [lengths[k] for k in order])
