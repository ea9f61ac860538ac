"""GPU benchmark of the K-matrix layer: CUDA kernels vs nn.Linear (cuBLAS) vs the pure-PyTorch reference.

For every n x n layer size, batch size and dtype it times the forward pass (no grad) and the
forward+backward pass (input and parameter gradients, as in training), reports medians over
repetitions after warm-up, measured with CUDA events, side by side in one process. It prints a
table and writes ``results.json``, ``results.md`` and ``speedup.png`` to ``--out``.

    python benchmarks/kernels_cuda.py --out benchmarks/results/cuda
    python benchmarks/kernels_cuda.py --n 1024 2048 --batch 4096 --dtype bf16 --out /tmp/b

Targets (issue 6): forward+backward faster than nn.Linear at n >= 1024 for batch >= 4096 in
float32 and at n >= 2048 in bfloat16; at least 10x faster than the reference everywhere. The
script prints whether each target holds on the measured data. ``--device cpu`` runs the same
code on the CPU (perf_counter timing) as a smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_kaleidoscope.bench.output import pyplot, save_figure
from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear, butterfly_multiply_ref, uses_compiled_kernel
from fairseq_kaleidoscope.timing import cpu_name

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLS = ("kmatrix", "linear", "reference")
PASSES = ("fwd", "fwd+bwd")


def reference_forward(layer: KaleidoscopeLinear) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same n x n K-matrix layer computed by the plain-PyTorch reference."""
    assert layer.in_features == layer.out_features == layer.n and layer.nstacks == 1

    def forward(x: torch.Tensor) -> torch.Tensor:
        return butterfly_multiply_ref(layer.twiddle, x.unsqueeze(1), False).squeeze(1) + layer.bias

    return forward


def timings_ms(fn: Callable[[], None], device: torch.device, warmup: int, reps: int, budget_s: float) -> list[float]:
    """Per-call times in ms: ``warmup`` untimed calls, then up to ``reps`` timed ones within ``budget_s``."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    out: list[float] = []
    start_all = time.perf_counter()
    while len(out) < reps and (len(out) < 3 or time.perf_counter() - start_all < budget_s):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_one(impl: str, n: int, batch: int, dtype: torch.dtype, backward: bool, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    layer = KaleidoscopeLinear(n, n, nblocks=args.nblocks).to(device, dtype)
    module: Callable[[torch.Tensor], torch.Tensor] = layer
    if impl == "linear":
        module = nn.Linear(n, n).to(device, dtype)
    elif impl == "reference":
        module = reference_forward(layer)
    params = list(module.parameters() if impl == "linear" else layer.parameters())
    x = torch.randn(batch, n, device=device, dtype=dtype, requires_grad=backward)
    grad_out = torch.randn(batch, n, device=device, dtype=dtype)

    def step() -> None:
        if backward:
            for t in [*params, x]:
                t.grad = None
            module(x).backward(grad_out)
        else:
            with torch.no_grad():
                module(x)

    row = {"impl": impl, "n": n, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "pass": PASSES[backward]}
    if impl == "kmatrix":
        row["compiled_kernel"] = uses_compiled_kernel(x)
    try:
        times = timings_ms(step, device, args.warmup, args.reps, args.budget)
        row.update(median_ms=statistics.median(times), reps=len(times))
    except torch.cuda.OutOfMemoryError:
        row.update(median_ms=None, reps=0, error="out of memory")
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def environment(args: argparse.Namespace) -> dict:
    env = {"torch": torch.__version__, "device": args.device, "cpu": cpu_name(), "threads": torch.get_num_threads(),
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "nblocks": args.nblocks, "warmup": args.warmup,
           "reps": args.reps}  # fmt: skip
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sms=props.multi_processor_count, cuda=torch.version.cuda)
    return env


def ratio(ms: dict, key: tuple, num: str, den: str = "kmatrix") -> float | None:
    """``num``'s time over ``den``'s at ``key`` = (n, batch, dtype, pass); None where either was not measured."""
    a, b = ms.get((num, *key)), ms.get((den, *key))
    return None if a is None or b is None else a / b


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def check_targets(ms: dict, keys: list[tuple]) -> list[str]:
    """The issue's targets, evaluated on the measured points only."""
    lines = []
    for dtype, min_n in (("float32", 1024), ("bfloat16", 2048)):
        goal = f"fwd+bwd faster than nn.Linear, {dtype}, n >= {min_n}, batch >= 4096"
        sel = [k for k in keys if k[3] == "fwd+bwd" and k[2] == dtype and k[0] >= min_n and k[1] >= 4096]
        rs = [ratio(ms, k, "linear") for k in sel]
        if rs and None not in rs:
            verdict = "PASS" if all(r > 1 for r in rs) else "FAIL"
            spread = f"Linear/K-matrix ratios {min(rs):.2f} .. {max(rs):.2f} over {len(rs)} points"
            lines.append(f"{verdict}: {goal} ({spread})")
        else:
            lines.append(f"not measured: {goal.replace(' faster than', ' vs')}")
    rs = [r for r in (ratio(ms, k, "reference") for k in keys) if r is not None]
    if rs:
        lines.append(f"{'PASS' if min(rs) >= 10 else 'FAIL'}: >= 10x faster than the reference everywhere "
                     f"(min {min(rs):.1f}x, max {max(rs):.1f}x over {len(rs)} points)")
    return lines


def table(ms: dict, keys: list[tuple]) -> list[str]:
    lines = ["| dtype | pass | n | batch | K-matrix ms | nn.Linear ms | reference ms | Linear / K | reference / K |",
             "|" + "---|" * 9]  # fmt: skip
    for n, batch, dtype, pass_ in keys:
        cells = [fmt(ms.get((i, n, batch, dtype, pass_))) for i in IMPLS]
        key = (n, batch, dtype, pass_)
        cells += [fmt(ratio(ms, key, "linear"), ".2f"), fmt(ratio(ms, key, "reference"), ".1f")]
        lines.append(f"| {dtype} | {pass_} | {n} | {batch} | " + " | ".join(cells) + " |")
    return lines


def plot(path: Path, ms: dict, keys: list[tuple], env: dict) -> None:
    dtypes = sorted({k[2] for k in keys})
    fig, axes = pyplot().subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        for batch in sorted({k[1] for k in keys}):
            pts = [(k[0], ratio(ms, k, "linear")) for k in keys if k[1:] == (batch, dtype, "fwd+bwd")]
            pts = [(n, r) for n, r in pts if r is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"batch {batch}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n (n x n layer)")
        ax.set_ylabel("nn.Linear time / K-matrix time (fwd+bwd)")
        ax.set_title(f"{dtype}, {env.get('gpu', env['device'])}")
        ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64, 4096, 65536])
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    p.add_argument("--nblocks", type=int, default=1, help="B Bᵀ blocks per K-matrix")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per point (at least 3 calls)")
    p.add_argument("--max-elements", type=float, default=2**29, help="skip points with batch*n above this")
    p.add_argument("--tf32", action="store_true", help="let nn.Linear use TF32 in float32 (off by default)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke test of this script")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cuda"))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("kernels_cuda.py: no CUDA GPU here; nothing to measure (use --device cpu for a smoke test)")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    env = environment(args)
    print(json.dumps(env))

    results, ms, keys = [], {}, []  # ms: (impl, n, batch, dtype, pass) -> median ms (None: out of memory)
    for dtype in (DTYPES[d] for d in args.dtype):
        for n in args.n:
            for batch in (b for b in args.batch if b * n <= args.max_elements):
                for backward in (False, True):
                    key = (n, batch, str(dtype).removeprefix("torch."), PASSES[backward])
                    keys.append(key)
                    for impl in args.impl:
                        results.append(bench_one(impl, n, batch, dtype, backward, args))
                        ms[(impl, *key)] = results[-1]["median_ms"]
                    print(f"{key[2]:>8} {key[3]:>7} n={n:5d} batch={batch:6d}  "
                          + "  ".join(f"{i} {fmt(ms[(i, *key)])} ms" for i in args.impl), flush=True)

    lines, targets = table(ms, keys), check_targets(ms, keys)
    print("\n".join(lines + targets))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"environment": env, "results": results, "targets": targets},
                                                      indent=1))  # fmt: skip
    md = ["# K-matrix CUDA kernels vs nn.Linear vs reference", "", f"Environment: `{json.dumps(env)}`", "", *lines]
    (args.out / "results.md").write_text("\n".join([*md, "", "## Targets", "", *[f"- {t}" for t in targets], ""]))
    plot(args.out / "speedup.png", ms, keys, env)
    print(f"wrote {args.out}/results.json, results.md, speedup.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
