"""CPU benchmark of one incremental DynamicConv decoding step: the compiled op vs today's path.

Times one decoding step (steady state, the ring buffer long wrapped around), float32,
under no_grad, side by side in one process (the implementations take turns in a random
order every round; medians after warm-up):
  module    DynamicConv.step: projection and the op on the module's ring-buffer state
  lin+op    the same calls without the module: weight_linear(x) then dynconv_step
  lin+cat   the step the op replaced: weight_linear(x), then cat+ein
  cat+ein   the convolution of that step (softmax, torch.cat of the kept inputs, slice, einsum),
            given the logits
  op        dynconv_step(x, logits, cache, step) (Python wrapper + compiled op)
  op raw    torch.ops.kaleidoscope.dynconv_step.default called directly
  ref       dynconv_step_ref, the plain-PyTorch reference
  op hot    op again, timed alone in a loop afterwards (warm caches and branch predictors:
            between two real decoding steps of a layer the rest of the model runs, so the
            interleaved figure is the more realistic one)
for batch in {1, 4, 512}, C = 512, H = 4, K in {3, 15, 31}, on one thread by default.
Writes dynconv_step.json, dynconv_step.md and dynconv_step.png to --out
(default benchmarks/results/).

    python -m fairseq_kaleidoscope bench-dynconv            # about a minute
    python -m fairseq_kaleidoscope bench-dynconv --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from fairseq_kaleidoscope.modules import DynamicConv
from fairseq_kaleidoscope.modules.dynconv_step import dynconv_step, dynconv_step_ref, has_compiled_dynconv_step
from fairseq_kaleidoscope.timing import interleaved_medians

from .output import fmt_load, pyplot, run_meta, save_figure, write_json

IMPLS = ("module", "lin+op", "lin+cat", "cat+ein", "op", "op raw", "ref", "op hot")
BATCHES = (1, 4, 512)
KERNELS = (3, 15, 31)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (min-time 0.05 s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--batch", type=int, nargs="+", default=list(BATCHES), help="batch sizes (beams x sentences)")
    p.add_argument("--kernel-size", type=int, nargs="+", default=list(KERNELS), help="kernel sizes K")
    p.add_argument("--channels", type=int, default=512, help="channels C")
    p.add_argument("--heads", type=int, default=4, help="heads H (must divide C)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--min-time", type=float, help="seconds of repeats per implementation (default 0.2, quick 0.05)")
    args = p.parse_args(argv)
    args.min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.2)
    if min(args.batch) < 1 or min(args.kernel_size) < 1 or args.threads < 1:
        p.error("--batch, --kernel-size and --threads must be >= 1")
    if args.heads < 1 or args.channels % args.heads:
        p.error(f"--heads {args.heads} must divide --channels {args.channels}")
    return args


def cat_einsum_step(x: torch.Tensor, logits: torch.Tensor, prev: list[torch.Tensor | None], K: int) -> torch.Tensor:
    """The decoding step the op replaced (torch.cat of the kept inputs, einsum) for one position, given the logits."""
    _, B, C = x.shape
    H = logits.shape[-1] // K
    w = F.softmax(logits.view(1, B, H, K), dim=-1, dtype=torch.float32)
    window = x if prev[0] is None else torch.cat([prev[0], x], dim=0)
    if K > 1:
        prev[0] = window[-(K - 1) :]
    ctx = window[max(0, window.shape[0] - K) :]
    taps = w[0, :, :, K - ctx.shape[0] :]
    return torch.einsum("bhk,kbhr->bhr", taps, ctx.view(ctx.shape[0], B, H, C // H)).reshape(B, C)


def make_calls(batch: int, C: int, H: int, K: int) -> dict[str, Callable[[], object]]:
    """One closure per implementation; each call is the next step of its own sequence."""
    torch.manual_seed(batch * 100 + K)
    conv = DynamicConv(C, K, padding_l=K - 1, num_heads=H).eval()
    x = torch.randn(1, batch, C)
    logits = conv.weight_linear(x).detach()  # (1, B, H*K)
    x2, logits3 = x[0], logits.view(batch, H, K)
    op = torch.ops.kaleidoscope.dynconv_step.default
    # A ring buffer and a position counter for each of lin+op, op, op raw, ref.
    c1, c2, c3, c4 = (torch.zeros(batch, K, C) for _ in range(4))
    n1, n2, n3, n4 = (itertools.count().__next__ for _ in range(4))
    state = conv.allocate_state(batch, x)
    prev: list[torch.Tensor | None] = [None]
    prev2: list[torch.Tensor | None] = [None]
    calls = {
        "module": lambda: conv.step(x2, state),
        "lin+op": lambda: dynconv_step(x2, conv.weight_linear(x2).view(batch, H, K), c1, n1()),
        "lin+cat": lambda: cat_einsum_step(x, conv.weight_linear(x), prev2, K),
        "cat+ein": lambda: cat_einsum_step(x, logits, prev, K),
        "op": lambda: dynconv_step(x2, logits3, c2, n2()),
        "op raw": lambda: op(x2, logits3, c3, n3(), True),
        "ref": lambda: dynconv_step_ref(x2, logits3, c4, n4()),
    }
    # Steady state: every path past its first K steps (buffers full, ring wrapped).
    for fn in calls.values():
        for _ in range(K + 1):
            fn()
    return calls


def measure(calls: dict[str, Callable[[], object]], min_time: float) -> dict[str, float]:
    """Median seconds per call, implementations interleaved (see ``interleaved_medians``); the
    calls were warmed up when they were made."""
    return interleaved_medians(calls, min_time, max_rounds=2000, warmup=0)


def check_agreement(batch: int, C: int, H: int, K: int) -> float:
    """Max |op - the cat+einsum step| over K + 3 steps of one random sequence (sanity, not a test)."""
    torch.manual_seed(0)
    xs, logits = torch.randn(K + 3, 1, batch, C), torch.randn(K + 3, 1, batch, H * K)
    cache, prev, err = torch.zeros(batch, K, C), [None], 0.0
    for t in range(K + 3):
        a = dynconv_step(xs[t, 0], logits[t, 0], cache, t)
        b = cat_einsum_step(xs[t], logits[t], prev, K)
        err = max(err, (a - b).abs().max().item())
    return err


def run_grid(args: argparse.Namespace) -> list[dict]:
    rows = []
    for K in args.kernel_size:
        for batch in args.batch:
            with torch.no_grad():
                calls = make_calls(batch, args.channels, args.heads, K)
                times = measure(calls, args.min_time)
                times["op hot"] = measure({"op": calls["op"]}, args.min_time)["op"]
                err = check_agreement(batch, args.channels, args.heads, K)
            row = {"K": K, "batch": batch, "max_abs_diff": err}
            for impl in IMPLS:
                row[f"{impl}_us"] = times[impl] * 1e6
            row["speedup_step"] = times["lin+cat"] / times["module"]
            row["speedup_conv"] = times["cat+ein"] / times["op"]
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (
    "| K | batch | module µs | lin+op µs | lin+cat µs | cat+ein µs | op µs | op raw µs | ref µs | op hot µs "
    "| lin+cat / module | cat+ein / op | max abs diff |"
)


def format_row(r: dict) -> str:
    cells = [str(r["K"]), str(r["batch"])] + [f"{r[f'{i}_us']:.1f}" for i in IMPLS]
    cells += [f"{r['speedup_step']:.1f}×", f"{r['speedup_conv']:.1f}×", f"{r['max_abs_diff']:.1e}"]
    return "| " + " | ".join(cells) + " |"


def write_markdown(path: Path, meta: dict, rows: list[dict]) -> None:
    lines = [
        "# DynamicConv decoding step: compiled op vs torch.cat + einsum",
        "",
        f"{meta['machine']} ({meta['cpus']} logical CPUs); C={meta['C']}, H={meta['H']}; float32, no_grad; "
        f"{meta['date']}.",
        f"Command: `{meta['command']}`",
        "",
        "µs per step, medians after warm-up, the implementations interleaved in random order. "
        "module: DynamicConv.step (projection + op on its state); "
        "lin+op: weight_linear + dynconv_step; lin+cat: the step the op replaced (weight_linear + softmax + cat + "
        "einsum); cat+ein: its convolution given the logits; "
        "op: dynconv_step (wrapper); op raw: the compiled op called directly; ref: dynconv_step_ref; "
        "op hot: op timed alone in a loop (warm caches; the interleaved op column is closer to decoding). "
        "max abs diff: op vs cat+ein over K+3 steps.",
        f"Load average (1, 5, 15 min) at the start {fmt_load(meta['loadavg_start'])}, at the end "
        f"{fmt_load(meta['loadavg_end'])} (the cores are shared: timings are noisier under load).",
        "",
        HEADER,
        "|" + "---|" * 13,
        *(format_row(r) for r in rows),
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, rows: list[dict]) -> None:
    plt = pyplot()
    ks = sorted({r["K"] for r in rows})
    fig, axes = plt.subplots(1, len(ks), figsize=(3.4 * len(ks), 3.0), squeeze=False, sharey=True)
    styles = {
        "module": "k-o", "lin+op": "C0-s", "lin+cat": "C5-v", "cat+ein": "C1-^", "op": "C2-D", "op raw": "C2:",
        "ref": "C3--x",
        "op hot": "C4:.",
    }
    for ax, K in zip(axes[0], ks, strict=True):
        sel = sorted((r for r in rows if r["K"] == K), key=lambda r: r["batch"])
        for impl in IMPLS:
            ax.plot([r["batch"] for r in sel], [r[f"{impl}_us"] for r in sel], styles[impl], label=impl, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"K={K}", fontsize=9)
        ax.set_xlabel("batch")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("µs per step")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not has_compiled_dynconv_step():
        print("the compiled extension is not built: the op's times would be the reference's", file=sys.stderr)
        return 1
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    meta = {**run_meta("python -m fairseq_kaleidoscope bench-dynconv", argv), "C": args.channels, "H": args.heads,
            "threads": args.threads}  # fmt: skip
    print(meta["machine"])
    print(HEADER)
    rows = run_grid(args)
    torch.set_num_threads(default_threads)
    write_json(args.out / "dynconv_step.json", meta, rows)
    write_markdown(args.out / "dynconv_step.md", meta, rows)
    plot(args.out / "dynconv_step.png", rows)
    print(f"wrote {args.out / 'dynconv_step.json'}, dynconv_step.md, dynconv_step.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
