"""The main job (``make demo``): is a K-matrix decoder faster than dense, and as accurate? No download.

Two measurements, each on the models it needs (about 4 minutes on a 2-core CPU):

1. **Quality.** A synthetic German→English corpus (``synthetic.py``: reordering, agreement,
   a Zipf-distributed lexicon of invented words, so BLEU stays well below 100 at this budget),
   binarised with fairseq-preprocess; a small dense DynamicConv (``--kmatrix-layers none``)
   and its K-matrix twin (``--kmatrix-layers decoder.all``) are trained for the same number
   of updates, side by side, one thread each; both decode the test set (beam 4) and are
   scored (BLEU, output length against the references).
2. **Speed.** The same test sentences are decoded by the Kaleidoscope paper's model size
   (``kaleidoscope_lightconv_iwslt_de_en``: width 512, 7 encoder and 6 decoder layers):
   dense (fp32, and int8 for every linear layer), the K-matrix decoder, and the K-matrix decoder
   with int8 for the dense remainder (``--int8-dense encoder,output_projection``); batch 1
   greedy, one thread, interleaved, medians. Every hypothesis is forced to its reference's
   length, so every model runs the same decoder steps and the time does not depend on the
   weights — which are random:
   training a width-512 model takes hours on a CPU (the Multi30k and IWSLT14 recipes do it).

Writes ``report.{json,md,png}`` (and the two underlying ``decode_bench`` reports in
``quality/`` and ``speed/``) into ``--work-dir`` and ends with a plain-language reading.
Real data for the quality part: ``--data-bin DIR`` (``--remove-bpe`` when it is BPE'd).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..bench.output import pyplot, save_figure
from .progress import stage

USER_DIR = str(Path(__file__).resolve().parent.parent)
# fairseq log lines worth showing while training runs (the rest goes to the log file).
SHOWN = re.compile(r"\| (train_inner|train) \||done training")
# The paper's decoder size: the architecture registered for its IWSLT14 experiment.
SPEED_ARCH = "kaleidoscope_lightconv_iwslt_de_en"
SPEED_INT8 = "encoder,output_projection"


def _echo(name: str, line: str) -> None:
    text = line.split("| INFO | ")[-1].rstrip()
    text = re.sub(r"^(fairseq_cli\.train|train_inner|train) \| ", "", text)
    print(f"    [{name}] {text}", file=sys.stderr, flush=True)


def run_commands(jobs: dict[str, list[str]], logs: dict[str, Path], env: dict[str, str]) -> None:
    """Run the commands concurrently, each logged to its file; echo their progress lines."""

    def pump(name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        with open(logs[name], "w", encoding="utf-8") as log:
            for line in proc.stdout:
                log.write(line)
                if SHOWN.search(line):
                    _echo(name, line)

    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for name, cmd in jobs.items()
    }
    pumps = [threading.Thread(target=pump, args=item, daemon=True) for item in procs.items()]
    for t in pumps:
        t.start()
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    for t in pumps:
        t.join()
    for name in failed:
        tail = "".join(logs[name].read_text(encoding="utf-8").splitlines(True)[-20:])
        raise SystemExit(f"main job: {name} failed ({' '.join(jobs[name][:4])} ...), see {logs[name]}:\n{tail}")


def preprocess(text_dir: Path, dest: Path, log: Path) -> None:
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "de", "--target-lang", "en"]
    cmd += ["--trainpref", str(text_dir / "train"), "--validpref", str(text_dir / "valid")]
    cmd += ["--testpref", str(text_dir / "test"), "--destdir", str(dest), "--joined-dictionary", "--workers", "1"]
    run_commands({"preprocess": cmd}, {"preprocess": log}, dict(os.environ))


def train_command(args: argparse.Namespace, data: Path, save: Path, kmatrix_layers: str) -> list[str]:
    kernels = "[" + ",".join(["3", "7", "15", "31"][: args.layers]) + "]"
    d, ffn = args.embed_dim, 2 * args.embed_dim
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", USER_DIR, "--cpu"]
    cmd += ["--arch", "kaleidoscope_lightconv", "--kmatrix-layers", kmatrix_layers]
    if kmatrix_layers != "none":
        cmd += ["--kmatrix-lr-scale", str(args.kmatrix_lr_scale)]
    cmd += ["--encoder-embed-dim", str(d), "--decoder-embed-dim", str(d)]
    cmd += ["--encoder-ffn-embed-dim", str(ffn), "--decoder-ffn-embed-dim", str(ffn)]
    cmd += ["--encoder-layers", str(args.layers), "--decoder-layers", str(args.layers)]
    cmd += ["--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]
    cmd += ["--encoder-kernel-size-list", kernels, "--decoder-kernel-size-list", kernels]
    if args.share_embeddings:
        cmd += ["--share-all-embeddings"]
    cmd += ["--dropout", str(args.dropout), "--weight-decay", "0.0001"]
    cmd += ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(args.lr), "--clip-norm", "0"]
    cmd += ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(args.warmup), "--warmup-init-lr", "1e-07"]
    cmd += ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    cmd += ["--max-tokens", str(args.max_tokens), "--max-update", str(args.max_update)]
    cmd += ["--save-dir", str(save), "--no-epoch-checkpoints", "--disable-validation", "--no-save-optimizer-state"]
    cmd += ["--num-workers", "0", "--no-progress-bar", "--log-interval", str(args.log_interval), "--seed", "1"]
    return cmd + args.train_extra


def train_both(args: argparse.Namespace, data: Path, work: Path) -> dict[str, Path]:
    """Train the dense and the K-matrix model: side by side when there are cores for both."""
    layers = {"dense": "none", "kmatrix": args.kmatrix_layers}
    jobs = {name: train_command(args, data, work / f"checkpoints_{name}", kl) for name, kl in layers.items()}
    logs = {name: work / f"train_{name}.log" for name in jobs}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.train_threads))
    side_by_side = (os.cpu_count() or 1) >= 2 * args.train_threads
    stage(
        f"[3/5] training dense and K-matrix (--kmatrix-layers {args.kmatrix_layers}), {args.max_update} updates "
        f"each, width {args.embed_dim}, {'side by side' if side_by_side else 'one after the other'}"
    )
    start = time.perf_counter()
    if side_by_side:
        run_commands(jobs, logs, env)
    else:
        for name in jobs:
            run_commands({name: jobs[name]}, {name: logs[name]}, env)
    print(f"    trained in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return {name: work / f"checkpoints_{name}" / "checkpoint_last.pt" for name in jobs}


def speed_options(kmatrix_layers: str) -> str:
    return f"--arch {SPEED_ARCH} --kmatrix-layers {kmatrix_layers}"


def decode(args: argparse.Namespace, data: Path, out: Path, options: list[str]) -> dict:
    """One ``decode_bench`` run on one thread (its report), with the options of one part."""
    from . import decode_bench

    bench = [str(data), "--out-dir", str(out), "--threads", "1", "--progress-every", "1000", *options]
    if args.remove_bpe:
        bench.append("--remove-bpe")
    return decode_bench.run_benchmark(decode_bench.build_parser().parse_args(bench))


def decode_quality(args: argparse.Namespace, data: Path, checkpoints: dict[str, Path], out: Path) -> dict:
    bench = [arg for name, path in checkpoints.items() for arg in ("--checkpoint", f"{name}={path}")]
    bench += ["--setting", f"beam{args.quality_beam}:{args.quality_batch}:{args.quality_beam}"]
    return decode(args, data, out, [*bench, "--title", "Main job, quality: trained small models, natural decoding"])


def decode_speed(args: argparse.Namespace, data: Path, out: Path) -> dict:
    bench = ["--random", f"dense={speed_options('none')}"]
    bench += ["--random", f"dense-int8={speed_options('none')}", "--int8", "dense-int8=all"]
    bench += ["--random", f"kmatrix={speed_options('decoder.all')}"]
    bench += ["--random", f"kmatrix+int8={speed_options('decoder.all')}", "--int8", f"kmatrix+int8={SPEED_INT8}"]
    bench += ["--forced-length", "--max-sentences", str(args.speed_sentences), "--repeats", str(args.repeats)]
    return decode(args, data, out, [*bench, "--setting", "batch1-greedy:1:1", "--title",
                                    f"Main job, speed: {SPEED_ARCH}, forced lengths"])


def combine(quality: dict, speed: dict, seconds: float, args: argparse.Namespace) -> dict:
    """The main job's report: one row per (part, model), the fields a reader compares."""
    keep = ("setting", "batch", "beam", "model", "params", "kmatrix_params", "seconds", "speedup")
    rows = []
    for part, report in (("quality", quality), ("speed", speed)):
        for r in report["rows"]:
            rows.append(
                {
                    "part": part,
                    **{k: r[k] for k in keep},
                    "bleu": r["bleu_tokenized"],
                    "length_ratio": r["length_ratio"],
                    "trained": part == "quality",
                    "forced_length": report["forced_length"],
                }
            )
    from ..kmatrix.cpu_kernel import get_cpu_kernel

    return {
        "machine": speed["machine"],
        "kernel_isa": get_cpu_kernel()[0],
        "threads": 1,
        "seconds": seconds,
        "command": " ".join(["python -m fairseq_kaleidoscope demo", *map(shlex.quote, args.argv)]).strip(),
        "quality_models": quality["models"],
        "speed_models": speed["models"],
        "quality_width": args.embed_dim,
        "speed_sentences": speed["sentences"],
        "quality_sentences": quality["sentences"],
        "rows": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        "| part | setting | model | params | K-matrix params | seconds | speed-up | BLEU | length / ref |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        bleu = f"{r['bleu']:.2f}" if r["trained"] else "(random weights)"
        lines.append(
            f"| {r['part']} | {r['setting']} | {r['model']} | {r['params']:,} | {r['kmatrix_params']:,} "
            f"| {r['seconds']:.2f} | {r['speedup']:.2f}× | {bleu} | {r['length_ratio']:.3f} |"
        )
    lines += [
        "",
        f"- machine: {report['machine']}; decoding on 1 thread",
        f"- quality: models trained here, test set ({report['quality_sentences']} sentences), natural decoding",
        f"- speed: {SPEED_ARCH}, random weights, {report['speed_sentences']} test sentences, each forced to its "
        "reference's length (same decoder steps for every model); median of interleaved runs",
        f"- command: `{report['command']}` ({report['seconds']:.0f} s in all)",
    ]
    return "\n".join(lines) + "\n"


def reading(report: dict) -> str:
    """A short plain-language reading of the numbers, worded from the numbers."""
    rows = {(r["part"], r["model"]): r for r in report["rows"]}
    dense_q, kmat_q = rows[("quality", "dense")], rows[("quality", "kmatrix")]
    kmat_s, int8_s = rows[("speed", "kmatrix")], rows[("speed", "kmatrix+int8")]
    dense_s, dense_int8_s = rows[("speed", "dense")], rows[("speed", "dense-int8")]
    gap = kmat_q["bleu"] - dense_q["bleu"]
    quality = (
        f"the K-matrix model scores {kmat_q['bleu']:.1f} BLEU against dense {dense_q['bleu']:.1f} "
        f"({'+' if gap >= 0 else '-'}{abs(gap):.1f}), with outputs {kmat_q['length_ratio']:.2f}× the reference "
        f"length (dense {dense_q['length_ratio']:.2f}×)"
    )
    faster = "faster" if kmat_s["speedup"] >= 1 else "slower"
    speed = (
        f"at the paper's size the K-matrix decoder decodes {kmat_s['speedup']:.2f}× {faster} than dense at batch 1 "
        f"greedy ({int8_s['speedup']:.2f}× with int8 for the dense remainder, against {dense_int8_s['speedup']:.2f}× "
        f"for the dense model in int8), with {kmat_s['params'] / dense_s['params']:.0%} of the parameters"
    )
    small = kmat_q["speedup"]
    note = (
        f"At width {report['quality_width']} the small models decode at {small:.2f}× dense speed: "
        "K-matrices pay off where dense layers are wide (512 and up), which is why speed is measured at the "
        "paper's size."
    )
    return f"Reading: {speed}. Trained for the same budget, {quality}. {note}"


def plot(report: dict, path: Path) -> None:
    fig, (ax_q, ax_s) = pyplot().subplots(1, 2, figsize=(10, 4))
    for ax, part, key, label in ((ax_q, "quality", "bleu", "BLEU (test)"), (ax_s, "speed", "speedup", "speed-up")):
        rows = [r for r in report["rows"] if r["part"] == part]
        bars = ax.bar([r["model"] for r in rows], [r[key] for r in rows], color=[f"C{i}" for i in range(len(rows))])
        for bar, r in zip(bars, rows, strict=True):
            text = f"{r[key]:.1f}" if key == "bleu" else f"{r[key]:.2f}×\n{r['params'] / 1e6:.1f}M params"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
        ax.set_ylabel(label)
        ax.margins(y=0.2)
    ax_q.set_title(f"quality: trained, width {report['quality_width']}, beam 4", fontsize=10)
    ax_s.set_title("speed: paper's size (width 512), batch 1 greedy", fontsize=10)
    fig.suptitle(f"fairseq-kaleidoscope main job — {report['machine']}", fontsize=9)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir)
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.data_bin:
        data = Path(args.data_bin)
        if not (data / "dict.en.txt").is_file():
            raise SystemExit(f"main job: {data} is not a fairseq-preprocess'ed directory (no dict.en.txt)")
    else:
        from .synthetic import write_corpus

        stage(f"[1/5] synthetic corpus: {args.train_size} training pairs (reordering, agreement, Zipf lexicon)")
        write_corpus(work / "text", args.train_size, args.test_size, args.test_size, seed=args.seed)
        stage("[2/5] fairseq-preprocess")
        data = work / "data-bin"
        preprocess(work / "text", data, work / "preprocess.log")
    checkpoints = train_both(args, data, work)
    stage(f"[4/5] quality: decoding the test set with both trained models (beam {args.quality_beam})")
    quality = decode_quality(args, data, checkpoints, work / "quality")
    stage(f"[5/5] speed: {SPEED_ARCH} dense vs K-matrix, batch 1 greedy, forced lengths, 1 thread")
    speed = decode_speed(args, data, work / "speed")
    report = combine(quality, speed, time.perf_counter() - start, args)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (work / "report.md").write_text(markdown(report), encoding="utf-8")
    plot(report, work / "report.png")
    print(markdown(report))
    print(reading(report))
    print(f"main job: done in {report['seconds']:.0f} s; report in {work}/report.{{md,json,png}}", file=sys.stderr)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="runs/demo", help="where data, checkpoints, logs and the report go")
    p.add_argument("--keep", action="store_true", help="do not wipe --work-dir first")
    p.add_argument("--data-bin", default=None, help="train on this fairseq-preprocess'ed data instead")
    p.add_argument("--remove-bpe", action="store_true", help="the data is '@@ ' BPE'd: strip it before BLEU")
    p.add_argument("--train-size", type=int, default=12000, help="synthetic training pairs")
    p.add_argument("--test-size", type=int, default=300, help="synthetic valid and test pairs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--embed-dim", type=int, default=64, help="width of the trained (quality) models")
    p.add_argument("--layers", type=int, default=3, choices=[1, 2, 3, 4])
    p.add_argument("--kmatrix-layers", default="decoder.all")
    p.add_argument("--no-share-embeddings", dest="share_embeddings", action="store_false",
                   help="separate embeddings (for --data-bin with a dictionary per language)")
    p.add_argument("--kmatrix-lr-scale", type=float, default=3.0, help="chosen on validation BLEU at this budget")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--max-update", type=int, default=400, help="updates per model")
    p.add_argument("--log-interval", type=int, default=100)
    p.add_argument("--train-threads", type=int, default=1, help="threads of each training run")
    p.add_argument("--quality-batch", type=int, default=64)
    p.add_argument("--quality-beam", type=int, default=4)
    p.add_argument("--speed-sentences", type=int, default=60, help="test sentences decoded for the speed part")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs of the speed part (median reported)")
    p.add_argument("--train-extra", nargs=argparse.REMAINDER, default=[], help="more fairseq-train options (last)")
    return p


def main(argv: list[str] | None = None) -> None:
    # force: a caller that imported fairseq directly has its DEBUG root logger (one of fairseq's
    # task modules calls logging.basicConfig(level=DEBUG)). The job's progress goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for the report's command line
    run(args)


if __name__ == "__main__":
    main()
