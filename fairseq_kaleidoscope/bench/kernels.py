"""CPU benchmark of the K-matrix multiply against the dense nn.Linear it replaces.

Times one call of, side by side in one process, medians after warm-up (dense and the
K-matrices interleaved, the reference on its own):
  dense  F.linear(x, W, b)                     (what nn.Linear runs; MKL)
  kmat1  kmatrix_linear(x, twiddle, b, n)      (what KaleidoscopeLinear runs), nblocks=1 (one B Bᵀ block)
  kmat2  kmatrix_linear, nblocks=2
  ref    the plain-PyTorch reference (nblocks=1), where it takes under a second or so
for n in {256, ..., 4096}, batch in {1, ..., 4096}, forward (under no_grad) and
forward+backward (gradients of input, weights and bias), with 1 thread and all threads.
Writes results.json, results.md and results.png to --out (default benchmarks/results/).

    python -m fairseq_kaleidoscope bench-kernels            # full grid, a few minutes on 2 cores
    python -m fairseq_kaleidoscope bench-kernels --quick    # a subset, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from fairseq_kaleidoscope.kmatrix.ops import HAS_EXTENSION, kmatrix_linear
from fairseq_kaleidoscope.kmatrix.reference import butterfly_multiply_ref
from fairseq_kaleidoscope.timing import cpu_name, interleaved_medians

IMPLS = ("dense", "kmat1", "kmat2", "ref")
FULL_N = (256, 512, 1024, 2048, 4096)
FULL_BATCH = (1, 8, 64, 512, 4096)
QUICK_N = (512, 1024)
QUICK_BATCH = (1, 8, 64, 512)
# The reference is slow: skip it above this many input elements (batch * n).
REF_MAX_ELEMENTS = 1 << 19


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"n in {QUICK_N}, batch in {QUICK_BATCH}, fewer repeats")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--n", type=int, nargs="+", help="sizes to run (default: the full or quick grid)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes to run")
    p.add_argument(
        "--threads", type=int, nargs="+", help="thread counts (default: 1 and all, i.e. os.cpu_count())"
    )
    p.add_argument("--min-time", type=float, help="seconds of repeats per measurement (default 0.3, quick 0.1)")
    args = p.parse_args(argv)
    args.n = args.n or list(QUICK_N if args.quick else FULL_N)
    args.batch = args.batch or list(QUICK_BATCH if args.quick else FULL_BATCH)
    args.threads = args.threads or sorted({1, os.cpu_count() or 1})
    args.min_time = args.min_time if args.min_time is not None else (0.1 if args.quick else 0.3)
    for n in args.n:
        if n < 2 or n & (n - 1):
            p.error(f"--n: sizes must be powers of two >= 2, got {n}")
    if min(args.batch) < 1 or min(args.threads) < 1:
        p.error("--batch and --threads must be >= 1")
    return args



def flops(impl: str, n: int, batch: int, backward: bool) -> float:
    """Arithmetic of one call: 2n² per row dense; 3n per factor per row (2 mul + 1 add per
    element) for a K-matrix of 2·nblocks butterflies of log2 n factors; x3 with backward."""
    if impl == "dense":
        f = 2.0 * n * n
    else:
        f = 3.0 * n * 2 * (2 if impl == "kmat2" else 1) * (n.bit_length() - 1)
    return f * batch * (3 if backward else 1)


def make_calls(n: int, batch: int, backward: bool, with_ref: bool) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(n + batch)
    log_n = n.bit_length() - 1
    x = torch.randn(batch, n, generator=g)
    grad = torch.randn(batch, n, generator=g)
    weight = torch.randn(n, n, generator=g) / n**0.5
    bias = torch.randn(n, generator=g)
    tws = {k: torch.randn(1, 2 * k, log_n, n // 2, 2, 2, generator=g) / 2**0.5 for k in (1, 2)}
    params = [weight, bias, x, *tws.values()]
    if backward:
        for t in params:
            t.requires_grad_()
    x3, bias2 = x.view(batch, 1, n), bias.view(1, n)  # the reference's layout

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        if not backward:

            def forward() -> object:
                with torch.no_grad():
                    return fn()

            return forward

        def forward_backward() -> object:
            for t in params:
                t.grad = None
            fn().backward(grad)
            return None

        return forward_backward

    calls = {"dense": run(lambda: F.linear(x, weight, bias))}
    for k, name in ((1, "kmat1"), (2, "kmat2")):
        calls[name] = run(lambda tw=tws[k]: kmatrix_linear(x, tw, bias, n))
    if with_ref:
        calls["ref"] = run(lambda: (butterfly_multiply_ref(tws[1], x3, False) + bias2).view(batch, n))
    return calls


def measure(calls: dict[str, Callable[[], object]], min_time: float) -> dict[str, float]:
    """Median seconds per call after warm-up, implementations interleaved (see ``interleaved_medians``)."""
    return interleaved_medians(calls, min_time, max_rounds=200, warmup=2)


def run_grid(args: argparse.Namespace) -> list[dict]:
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for backward in (False, True):
            for n in args.n:
                for batch in args.batch:
                    with_ref = batch * n <= REF_MAX_ELEMENTS
                    calls = make_calls(n, batch, backward, with_ref)
                    # dense and the K-matrices take turns; the reference (only context, and a
                    # heavy allocator that would leave the others cold caches) runs on its own.
                    ref = calls.pop("ref", None)
                    times = measure(calls, args.min_time)
                    if ref is not None:
                        times.update(measure({"ref": ref}, args.min_time))
                    row = {"threads": threads, "mode": "fwd+bwd" if backward else "fwd", "n": n, "batch": batch}
                    for impl in IMPLS:
                        t = times.get(impl)
                        row[f"{impl}_us"] = None if t is None else t * 1e6
                        row[f"{impl}_gflops"] = None if t is None else flops(impl, n, batch, backward) / t / 1e9
                        row[f"{impl}_speedup"] = None if t is None else times["dense"] / t
                    rows.append(row)
                    print(format_row(row), flush=True)
    return rows


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def format_row(r: dict) -> str:
    cells = [str(r["threads"]), r["mode"], str(r["n"]), str(r["batch"])]
    cells += [fmt(r[f"{i}_us"], ".1f") for i in IMPLS]
    cells += [fmt(r[f"{i}_gflops"], ".1f") for i in IMPLS]
    cells += [fmt(r[f"{i}_speedup"], ".2f") for i in IMPLS[1:]]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| threads | pass | n | batch | dense µs | kmat1 µs | kmat2 µs | ref µs "
    "| dense GF/s | kmat1 GF/s | kmat2 GF/s | ref GF/s | kmat1 × | kmat2 × | ref × |"
)


def targets(rows: list[dict]) -> list[str]:
    """The kernel targets (single thread, float32, nblocks=1, on every ISA), checked on what was measured."""
    def ratio(mode: str, n: int, batch: int) -> float | None:
        for r in rows:
            if (r["threads"], r["mode"], r["n"], r["batch"]) == (1, mode, n, batch):
                return r["kmat1_speedup"]
        return None

    goals = [("fwd", 512, 1, 5.0), ("fwd", 512, 64, 8.0), ("fwd", 1024, 64, 15.0), ("fwd+bwd", 512, 4096, 4.0)]
    lines = []
    for mode, n, batch, goal in goals:
        got = ratio(mode, n, batch)
        if got is not None:
            verdict = "met" if got >= goal else f"NOT met ({got / goal:.0%} of the target)"
            lines.append(f"- {mode}, n={n}, batch={batch}: {got:.1f}× dense speed (target ≥ {goal:g}×): {verdict}")
    return lines


def fixed_overhead() -> dict[str, float]:
    """Per-call cost at n=2, batch 1 (Python and dispatch, no arithmetic to speak of)."""
    calls = make_calls(2, 1, False, False)
    return {k: v * 1e6 for k, v in measure({k: calls[k] for k in ("dense", "kmat1")}, 0.2).items()}


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.1f}" for v in load)


def write_markdown(path: Path, meta: dict, rows: list[dict]) -> None:
    lines = [
        "# K-matrix vs dense: CPU time per call",
        "",
        f"CPU: {meta['cpu']} ({meta['cpus']} logical CPUs); torch {meta['torch']}; "
        f"kernel ISA {meta['isa']}; float32; {meta['date']}.",
        f"Command: `{meta['command']}`",
        "",
        "Medians of repeats after warm-up (dense and K-matrices interleaved in random order, the "
        "reference on its own). µs per call; GF/s = arithmetic actually done "
        "(dense 2n²·batch, K-matrix 3n·factors·batch, ×3 with backward) per second; × = dense time / time "
        "(speed-up over dense). kmat1 / kmat2: K-matrix with nblocks = 1 / 2 (bias fused). "
        "ref: the plain-PyTorch reference, nblocks = 1 (— where too slow to run).",
        f"Fixed per-call cost at n=2, batch 1, 1 thread: dense {meta['overhead']['dense']:.1f} µs, "
        f"kmat1 {meta['overhead']['kmat1']:.1f} µs. Load average (1, 5, 15 min) at the start "
        f"{fmt_load(meta['loadavg_start'])}, at the end {fmt_load(meta['loadavg_end'])}: other processes "
        "sharing the cores make the timings noisier, the all-thread ones most.",
        "",
    ]
    for threads in sorted({r["threads"] for r in rows}):
        lines += [f"## {threads} thread{'s' if threads > 1 else ''}", "", HEADER, "|" + "---|" * 15]
        lines += [format_row(r) for r in rows if r["threads"] == threads]
        lines.append("")
    tl = targets(rows)
    if tl:
        lines += ["## Targets (1 thread, nblocks=1)", "", *tl, ""]
    path.write_text("\n".join(lines))


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["n"] for r in rows})
    panels = sorted({(r["threads"], r["mode"]) for r in rows}, key=lambda p: (p[0], p[1] != "fwd"))
    fig, axes = plt.subplots(
        len(panels), len(ns), figsize=(3.2 * len(ns), 2.8 * len(panels)), squeeze=False, sharex=True
    )
    styles = {"dense": "k-o", "kmat1": "C0-s", "kmat2": "C1-^", "ref": "C2--x"}
    for i, (threads, mode) in enumerate(panels):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            sel = sorted((r for r in rows if (r["threads"], r["mode"], r["n"]) == (threads, mode, n)),
                         key=lambda r: r["batch"])
            for impl in IMPLS:
                pts = [(r["batch"], r[f"{impl}_us"]) for r in sel if r[f"{impl}_us"] is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), styles[impl], label=impl, markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"n={n}, {mode}, {threads} thr", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("µs per call")
            if i == len(panels) - 1:
                ax.set_xlabel("batch")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not HAS_EXTENSION:
        print("the compiled extension is not built: K-matrix times would be the reference's", file=sys.stderr)
        return 1
    isa = torch.ops.kaleidoscope.get_cpu_kernel()[0]
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    meta = {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "isa": isa,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m fairseq_kaleidoscope bench-kernels " + " ".join(sys.argv[1:] if argv is None else argv),
        "threads": args.threads,
        "overhead": fixed_overhead(),
        "loadavg_start": os.getloadavg(),
    }
    print(f"CPU: {meta['cpu']}; threads {args.threads}; kernel ISA {isa}; torch {meta['torch']}")
    print(HEADER)
    rows = run_grid(args)
    torch.set_num_threads(default_threads)
    meta["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_markdown(args.out / "results.md", meta, rows)
    plot(args.out / "results.png", rows)
    print("\n".join(targets(rows)))
    print(f"wrote {args.out / 'results.json'}, results.md, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
