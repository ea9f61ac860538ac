"""Demo: KaleidoscopeLinear against nn.Linear on a few sizes — parameters, accuracy, speed.

Run with ``make demo`` or ``python -m fairseq_kaleidoscope.demo``; needs no download.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from .kmatrix import HAS_EXTENSION, KaleidoscopeLinear
from .timing import interleaved_medians, machine_description


def compare(n: int, batch: int, nblocks: int) -> dict:
    """Parameters, forward times (seconds) and the dense-form error of one size."""
    dense = nn.Linear(n, n)
    kmat = KaleidoscopeLinear(n, n, nblocks=nblocks)
    x = torch.randn(batch, n)
    with torch.inference_mode():
        # Interleaved, so that a slow spell of the machine hits both alike.
        times = interleaved_medians({"dense": lambda: dense(x), "kmat": lambda: kmat(x)}, min_time=0.2)
        t_dense, t_kmat = times["dense"], times["kmat"]
        err = (kmat(x) - (x @ kmat.to_dense().T + kmat.bias)).abs().max().item()
    return {
        "n": n,
        "batch": batch,
        "nblocks": nblocks,
        "params_dense": sum(p.numel() for p in dense.parameters()),
        "params_kmat": sum(p.numel() for p in kmat.parameters()),
        "t_dense": t_dense,
        "t_kmat": t_kmat,
        "max_err": err,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--nblocks", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, as in the paper)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    kernel = "compiled CPU kernel" if HAS_EXTENSION else "pure-PyTorch reference (extension not built)"
    print(f"KaleidoscopeLinear vs nn.Linear, float32 forward, {machine_description()}, {kernel}\n")
    print("| n | batch | params nn.Linear | params K-matrix | nn.Linear µs | K-matrix µs | speed-up | max err |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for batch in args.batches:
            r = compare(n, batch, args.nblocks)
            print(
                f"| {n} | {batch} | {r['params_dense']:,} | {r['params_kmat']:,} "
                f"({r['params_kmat'] / r['params_dense']:.1%}) | {r['t_dense'] * 1e6:.1f} | "
                f"{r['t_kmat'] * 1e6:.1f} | {r['t_dense'] / r['t_kmat']:.2f}× | {r['max_err']:.1e} |"
            )
    print("\nTimes are medians after warm-up, measured side by side in this process.")


if __name__ == "__main__":
    main()
