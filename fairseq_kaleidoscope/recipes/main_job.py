"""The main job (``make demo``): a dense and a K-matrix DynamicConv, trained and compared, no download.

Steps, with progress on stderr:

1. generate a synthetic German→English corpus (``synthetic.py``: reordering, agreement);
2. binarize it with fairseq-preprocess (joined dictionary);
3. train a tiny dense DynamicConv (``--kmatrix-layers none``) and its K-matrix
   counterpart (``--kmatrix-layers decoder.all``) for the same number of updates;
4. decode the test set with both (natural decoding; batch 1 greedy and batch 64 beam 4,
   one intra-op thread) and print the BLEU / time / parameters table
   (``decode_bench.{md,json,png}`` in the work directory).

Real data instead of the synthetic corpus: ``--data-bin DIR`` (a fairseq-preprocess'ed
directory, e.g. from ``recipes/multi30k_de_en/prepare.sh``) with ``--remove-bpe`` when
it is BPE'd; model size and budget with ``--embed-dim``, ``--layers``, ``--max-update``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .progress import stage

USER_DIR = str(Path(__file__).resolve().parent.parent)
# fairseq log lines worth showing while training runs (the rest goes to the log file).
SHOWN = re.compile(r"\| (train_inner|train|valid) \||done training")


def run_logged(cmd: list[str], log_path: Path, show: bool, env: dict[str, str] | None = None) -> None:
    """Run ``cmd``, writing all its output to ``log_path`` and echoing the progress lines."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if show and SHOWN.search(line):
                print("    " + line.split("| INFO | ")[-1].rstrip(), file=sys.stderr)
        if proc.wait() != 0:
            tail = "".join(log_path.read_text(encoding="utf-8").splitlines(True)[-20:])
            raise SystemExit(f"main job: command failed ({' '.join(cmd[:4])} ...), see {log_path}:\n{tail}")


def preprocess(text_dir: Path, dest: Path, log: Path) -> None:
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "de", "--target-lang", "en"]
    cmd += ["--trainpref", str(text_dir / "train"), "--validpref", str(text_dir / "valid")]
    cmd += ["--testpref", str(text_dir / "test"), "--destdir", str(dest), "--joined-dictionary", "--workers", "1"]
    run_logged(cmd, log, show=False)


def train_command(args: argparse.Namespace, data: Path, save: Path, kmatrix_layers: str) -> list[str]:
    kernels = "[" + ",".join(["3", "7", "15", "31"][: args.layers]) + "]"
    d, ffn = args.embed_dim, 2 * args.embed_dim
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", USER_DIR, "--cpu"]
    cmd += ["--arch", "kaleidoscope_lightconv", "--kmatrix-layers", kmatrix_layers]
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
    cmd += ["--save-dir", str(save), "--no-epoch-checkpoints", "--disable-validation"]
    cmd += ["--num-workers", "0", "--no-progress-bar", "--log-interval", str(args.log_interval), "--seed", "1"]
    return cmd + args.train_extra


def run(args: argparse.Namespace) -> Path:
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

        stage(f"[1/4] synthetic corpus: {args.train_size} training pairs (reordering + agreement)")
        write_corpus(work / "text", args.train_size, args.test_size, args.test_size, seed=args.seed)
        stage("[2/4] fairseq-preprocess")
        data = work / "data-bin"
        preprocess(work / "text", data, work / "preprocess.log")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.train_threads))
    checkpoints = {}
    for name, layers in (("dense", "none"), ("kmatrix", args.kmatrix_layers)):
        stage(f"[3/4] training {name} (--kmatrix-layers {layers}, {args.max_update} updates)")
        save = work / f"checkpoints_{name}"
        t0 = time.perf_counter()
        run_logged(train_command(args, data, save, layers), work / f"train_{name}.log", show=True, env=env)
        print(f"    {name}: trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        checkpoints[name] = save / "checkpoint_best.pt"
        if not checkpoints[name].is_file():  # --disable-validation keeps only the last one
            checkpoints[name] = save / "checkpoint_last.pt"
    stage("[4/4] decoding the test set with both models (one thread)")
    from . import decode_bench

    bench_args = [str(data), "--checkpoint", f"dense={checkpoints['dense']}"]
    bench_args += ["--checkpoint", f"kmatrix={checkpoints['kmatrix']}"]
    bench_args += ["--setting", "batch1-greedy:1:1", "--setting", "batch64-beam4:64:4", "--threads", "1"]
    bench_args += ["--repeats", "3"]  # medians: a single sub-second run can be off by 2x
    bench_args += ["--out-dir", str(work), "--progress-every", "100", "--title", args.title]
    if args.remove_bpe:
        bench_args.append("--remove-bpe")
    if args.max_sentences:
        bench_args += ["--max-sentences", str(args.max_sentences)]
    decode_bench.main(bench_args)
    print(f"main job: done in {time.perf_counter() - start:.0f} s; report in {work}", file=sys.stderr)
    return work


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="runs/demo", help="where data, checkpoints, logs and the report go")
    p.add_argument("--keep", action="store_true", help="do not wipe --work-dir first")
    p.add_argument("--data-bin", default=None, help="train on this fairseq-preprocess'ed data instead")
    p.add_argument("--remove-bpe", action="store_true", help="the data is '@@ ' BPE'd: strip it before BLEU")
    p.add_argument("--train-size", type=int, default=3000, help="synthetic training pairs")
    p.add_argument("--test-size", type=int, default=200, help="synthetic valid and test pairs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2, choices=[1, 2, 3, 4])
    p.add_argument("--kmatrix-layers", default="decoder.all")
    p.add_argument("--no-share-embeddings", dest="share_embeddings", action="store_false")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--max-update", type=int, default=600, help="updates per model")
    p.add_argument("--log-interval", type=int, default=100)
    p.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="threads of each training run (1: no oversubscription on a busy box)",
    )
    p.add_argument("--max-sentences", type=int, default=None, help="decode only this many test sentences")
    p.add_argument("--train-extra", nargs=argparse.REMAINDER, default=[], help="more fairseq-train options (last)")
    p.add_argument("--title", default="Main job: synthetic De→En, tiny dense vs K-matrix DynamicConv")
    return p


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
