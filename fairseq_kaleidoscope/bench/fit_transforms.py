"""Can a K-matrix *learn* a fast transform? Reproduces the seed experiment of Dao et al. (ICML 2019).

For each target (DFT, DCT-II, Walsh–Hadamard, a random permutation, a random Toeplitz
matrix and, as the contrast, a random dense matrix) and each n, ``kmatrix.fit`` learns the
twiddles from random initialisations and we report the RMSE reached and the time taken.

Targets are scaled like orthogonal matrices (entries of size ~1/sqrt(n), Frobenius norm
sqrt(n)), so the RMSEs of different n and targets compare; 1e-4 is the "recovered" threshold
of the paper. The model is one learned ``B Bᵀ`` block with complex twiddles (as in the paper),
half of the restarts preceded by a fixed bit-reversal permutation (the paper's "BP" model,
whose permutation was learned; here it is chosen from {identity, bit reversal} by the fit).

Usage::

    python -m fairseq_kaleidoscope fit-transforms                  # n = 8 ... 1024 (long: tens of minutes)
    python -m fairseq_kaleidoscope fit-transforms --quick          # n = 8, 32
    python -m fairseq_kaleidoscope fit-transforms --sizes 64 256 --targets dft hadamard

Prints a markdown table; writes fit_transforms.{json,png} to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.linalg
import torch

from fairseq_kaleidoscope.kmatrix.constructors import bit_reversal_permutation
from fairseq_kaleidoscope.kmatrix.fit import fit

from .output import pyplot, run_meta, save_figure, write_json

TARGETS = ("dft", "dct", "hadamard", "permutation", "toeplitz", "random")
SIZES = (8, 32, 128, 512, 1024)


def make_target(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """The n×n target matrix (float64 or complex128), entries of typical size 1/sqrt(n)."""
    rng = np.random.default_rng(seed)
    eye = np.eye(n)
    if name == "dft":
        t = scipy.fft.fft(eye, axis=0, norm="ortho")
    elif name == "dct":
        t = scipy.fft.dct(eye, type=2, axis=0, norm="ortho")
    elif name == "hadamard":
        t = scipy.linalg.hadamard(n) / math.sqrt(n)
    elif name == "permutation":
        t = eye[rng.permutation(n)]
    elif name == "toeplitz":
        t = scipy.linalg.toeplitz(rng.standard_normal(n), rng.standard_normal(n)) / math.sqrt(n)
    elif name == "random":
        t = rng.standard_normal((n, n)) / math.sqrt(n)
    else:
        raise ValueError(f"unknown target {name!r}; choose from {TARGETS}")
    return torch.from_numpy(np.ascontiguousarray(t))



def default_budget(n: int) -> float:
    """Seconds per fit: 30 s for small n, about 5 minutes at n = 1024."""
    return 30.0 + 0.27 * n


def run_one(name: str, n: int, args: argparse.Namespace) -> dict:
    target = make_target(name, n, seed=args.seed)
    real = not target.is_complex()
    dtype = torch.float32 if (args.real and real) else torch.complex64
    perm = {"none": None, "bitrev": bit_reversal_permutation(n), "both": [None, bit_reversal_permutation(n)]}[
        args.permutation]
    res = fit(
        target,
        nblocks=args.nblocks,
        restarts=args.restarts,
        max_steps=args.max_steps,
        lr=args.lr,
        target_rmse=args.target_rmse,
        patience=args.patience,
        time_budget=args.time_budget or default_budget(n),
        permutation=perm,
        dtype=dtype,
        seed=args.seed,
        probes=args.probes,
    )
    dense = res.layer.to_dense().detach()
    rel = (torch.linalg.matrix_norm(dense - target.to(dense.dtype)) / torch.linalg.matrix_norm(target)).item()
    return {
        "permutation": args.permutation, "nblocks_returned": res.layer.nblocks,
        "probes": args.probes, "probes_at_end": res.probes,
        "target": name, "n": n, "rmse": res.rmse, "relative_error": rel, "seconds": res.seconds,
        "steps": res.steps, "restarts": res.restarts, "stop": res.stop_reason, "reached": res.reached,
        "dtype": str(dtype).replace("torch.", ""),
    }


def markdown(rows: list[dict], sizes: list[int], targets: list[str]) -> str:
    cell = {(r["target"], r["n"]): r for r in rows}
    head = "| target | " + " | ".join(f"n={n}" for n in sizes) + " |"
    lines = [head, "|" + "---|" * (len(sizes) + 1)]
    for t in targets:
        vals = []
        for n in sizes:
            r = cell.get((t, n))
            vals.append("" if r is None else f"{r['rmse']:.1e} ({r['seconds']:.0f} s){'' if r['reached'] else ' ✗'}")
        lines.append(f"| {t} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], targets: list[str], threshold: float, path: Path) -> None:
    fig, (ax1, ax2) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for t in targets:
        rs = sorted((r for r in rows if r["target"] == t), key=lambda r: r["n"])
        if not rs:
            continue
        ns = [r["n"] for r in rs]
        ax1.plot(ns, [max(r["rmse"], 1e-12) for r in rs], "o-", label=t)
        ax2.plot(ns, [r["seconds"] for r in rs], "o-", label=t)
    ax1.axhline(threshold, color="k", ls="--", lw=1, label=f"{threshold:g}")
    for ax, title in ((ax1, "RMSE reached"), (ax2, "seconds to fit")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle("Learning K-matrix twiddles for structured transforms (one BBᵀ block, complex twiddles)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--quick", action="store_true", help="n = 8 and 32 only")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--patience", type=int, default=400)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--nblocks", type=int, default=1)
    p.add_argument("--target-rmse", type=float, default=1e-4)
    p.add_argument("--time-budget", type=float, default=None, help="seconds per fit (default 30 + 0.27 n)")
    p.add_argument("--permutation", choices=("both", "bitrev", "none"), default="both",
                   help="fixed first permutation: none (plain K-matrix), bitrev (BP), both (half the restarts each)")
    p.add_argument("--probes", type=int, default=None,
                   help="random probes per step, fixed (default: fit's, 32 doubled at each plateau up to n; "
                        "0: the whole basis)")
    p.add_argument("--real", action="store_true", help="real twiddles (compiled kernel) for real targets")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sizes = [8, 32] if args.quick else args.sizes
    for n in sizes:
        if n < 2 or n & (n - 1):
            p.error(f"sizes must be powers of two >= 2, got {n}")
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = run_meta("python -m fairseq_kaleidoscope fit-transforms", argv)
    print(f"# {meta['machine']}, load average {meta['loadavg_start']}", flush=True)
    rows: list[dict] = []
    start = time.perf_counter()
    for n in sizes:
        for name in args.targets:
            r = run_one(name, n, args)
            rows.append(r)
            print(f"{name:12s} n={n:5d}  rmse {r['rmse']:.2e}  rel {r['relative_error']:.1e}  {r['seconds']:7.1f} s  "
                  f"{r['steps']:5d} steps  stop={r['stop']}", flush=True)
            write_json(args.out / "fit_transforms.json", meta, rows)  # partial results survive an interrupted run
    meta["total_seconds"] = time.perf_counter() - start
    write_json(args.out / "fit_transforms.json", meta, rows)
    print()
    print(markdown(rows, sizes, args.targets))
    print(f"\ncells: RMSE reached (seconds); ✗ = target RMSE {args.target_rmse:g} not reached. "
          f"Total {meta['total_seconds']:.0f} s.")
    plot(rows, args.targets, args.target_rmse, args.out / "fit_transforms.png")
    print(f"wrote {args.out / 'fit_transforms.json'} and {args.out / 'fit_transforms.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
