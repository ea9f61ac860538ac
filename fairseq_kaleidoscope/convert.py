"""Turn a trained dense model into a K-matrix one: fit each replaced linear layer, copy the rest.

    python -m fairseq_kaleidoscope convert --input dense.pt --output kmat.pt --kmatrix-layers decoder.all \\
        [--kmatrix-nblocks 1] [--data-bin DIR --activations 4096] [--steps 1000] [--time-budget 30]

The input is a checkpoint of one of our architectures trained with ``--kmatrix-layers none``
(or with fewer K-matrix layers than asked). Every parameter whose layer is unchanged is copied
bit for bit; each newly replaced ``nn.Linear`` becomes a :class:`KaleidoscopeLinear` fitted to
its weight ``W`` (minimising ``‖W_k − W‖``) or, with ``--data-bin`` and ``--activations N``,
to ``N`` real input rows ``X`` of that layer recorded while the dense model runs on the data
(minimising ``‖X W_kᵀ − X Wᵀ‖``: what the network sees; padding positions are left out and
every 10th row is held out to report the output error). ``--fit-on weights`` with
``--activations`` fits the weights but still reports that output error. Layers are fitted
independently, each on the dense model's own activations. The bias is copied. The output
checkpoint's config names the K-matrix layers (no optimizer state), so ``fairseq-generate
--user-dir ... --path`` loads it as is and ``fairseq-train --restore-file ... --reset-optimizer``
fine-tunes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


class ConversionError(ValueError):
    """The input cannot be converted as asked (message says why)."""


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    weight_rel_error: float  # ‖W_k − W‖_F / ‖W‖_F
    output_rel_error: float | None  # ‖X W_kᵀ − X Wᵀ‖_F / ‖X Wᵀ‖_F on held-out recorded activations
    rows: int  # input rows (non-padding token positions) recorded for this layer; 0 without data
    seconds: float


def load_state(path: str) -> dict:
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if not (zipfile.is_zipfile(path) or head.startswith(b"\x80")):  # torch.save: a zip archive (or a legacy pickle)
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint (a file written by torch.save, such as fairseq's "
            f"checkpoint_best.pt); it starts with {head!r}"
        )
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as e:  # torch/pickle/fairseq-upgrade errors of a file that is not a fairseq checkpoint
        raise ConversionError(f"cannot read {path} as a fairseq checkpoint: {type(e).__name__}: {e}") from e
    if state.get("cfg") is None or state["cfg"].get("model") is None or "model" not in state:
        raise ConversionError(f"{path} is not a fairseq model checkpoint (no cfg.model / model entries)")
    return state


def _model_config(state: dict) -> object:
    """The checkpoint's ``cfg.model`` as one of our dataclass configs (stock ``lightconv`` mapped onto ours)."""
    from omegaconf import OmegaConf

    model_cfg = state["cfg"]["model"]
    if isinstance(model_cfg, argparse.Namespace):
        arch = getattr(model_cfg, "arch", "?")
        if not str(arch).startswith("lightconv"):
            raise ConversionError(f"unsupported architecture {arch!r}: expected a kaleidoscope_* or lightconv model")
        from .models.kaleidoscope_lightconv import KaleidoscopeLightConvConfig

        # fairseq's lightconv uses the same option and parameter names as our dense lightconv.
        ours = OmegaConf.structured(KaleidoscopeLightConvConfig)
        for key in ours:
            value = getattr(model_cfg, key, None)
            if value is not None:
                # fairseq stores some int flags (weight_softmax) as bools
                is_int_flag = isinstance(ours[key], int) and not isinstance(ours[key], bool)
                ours[key] = int(value) if isinstance(value, bool) and is_int_flag else value
        ours.kmatrix_layers = "none"
        ours._name = "kaleidoscope_lightconv"
        return ours
    name = str(model_cfg.get("_name", ""))
    if not name.startswith("kaleidoscope_") or "kmatrix_layers" not in model_cfg:
        raise ConversionError(f"unsupported architecture {name!r}: expected a kaleidoscope_* or lightconv model")
    return OmegaConf.create(OmegaConf.to_container(model_cfg))


def _dictionaries(state: dict, data_bin: str | None, model_cfg: object) -> tuple[object, object, object | None]:
    """Source/target dictionaries (the task's with ``--data-bin``, else dummies of the embedding sizes)."""
    from .models.builder import dummy_dictionary

    if data_bin is not None:
        from fairseq import tasks
        from omegaconf import OmegaConf, open_dict

        task_cfg = OmegaConf.create(OmegaConf.to_container(state["cfg"]["task"]))
        with open_dict(task_cfg):
            task_cfg.data = data_bin
        task = tasks.setup_task(task_cfg)
        return task.source_dictionary, task.target_dictionary, task
    sd = state["model"]
    return (
        dummy_dictionary(sd["encoder.embed_tokens.weight"].shape[0]),
        dummy_dictionary(sd["decoder.embed_tokens.weight"].shape[0]),
        None,
    )


def _token_mask(name: str, sample: dict, task: object) -> torch.Tensor:
    """Which input rows of layer ``name`` are real tokens, laid out as the layer sees them.

    Layers run time-major ``(T, B)``; the vocabulary projection batch-major ``(B, T)``. Our
    encoder's position-wise sub-layers see only the token rows, already in ``(T, B)`` order.
    Encoder layers and the encoder-attention key/value projections see source positions.
    """
    net = sample["net_input"]
    on_source = name.startswith("encoder.") or name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj"))
    tokens = net["src_tokens"] if on_source else net["prev_output_tokens"]
    mask = tokens.ne((task.source_dictionary if on_source else task.target_dictionary).pad())
    return mask if name.endswith("output_projection") else mask.t()


def _record_inputs(dense: nn.Module, names: Sequence[str], task: object, count: int, subset: str) -> dict:
    """Up to ``count`` input rows of each named linear layer (padding left out), from the dense model on data."""
    from fairseq.modules import MultiheadAttention

    from .compat.fairseq_private import route_attention_through_projections

    modules = dict(dense.named_modules())
    for n in names:
        parent = modules[n.rpartition(".")[0]]
        if isinstance(parent, MultiheadAttention):  # so that the hooks below fire
            route_attention_through_projections(parent)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    seen = dict.fromkeys(names, 0)
    current: dict = {}

    def hook(name: str):
        def record(_m: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            if seen[name] >= count:
                return
            x = args[0].detach()
            mask = _token_mask(name, current["sample"], task)
            if x.dim() == 2 and x.shape[0] == int(mask.sum()):
                pass  # already the token rows, in (T, B) order (our encoder layers skip pad positions)
            elif mask.shape == x.shape[:-1]:
                x = x[mask]
            else:
                raise ConversionError(f"{name}: unexpected input layout {tuple(x.shape)} (tokens {tuple(mask.shape)})")
            x = x[: count - seen[name]]
            rows[name].append(x.float())
            seen[name] += x.shape[0]

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        task.load_dataset(subset)
        itr = task.get_batch_iterator(
            task.dataset(subset), max_tokens=4096, max_positions=dense.max_positions(), seed=1
        ).next_epoch_itr(shuffle=True)
        dense.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # fairseq's data loader asks for pinned memory on a CPU-only machine too.
            warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")
            for sample in itr:
                if min(seen.values()) >= count:
                    break
                current["sample"] = sample
                dense(**sample["net_input"])
    finally:
        for h in handles:
            h.remove()
    never = [n for n in names if not seen[n]]
    if never:
        raise ConversionError(f"no input rows were recorded for {', '.join(never)} (layer not called?)")
    return {n: torch.cat(r) for n, r in rows.items()}


def convert(
    input_path: str,
    output_path: str,
    kmatrix_layers: str,
    *,
    nblocks: int = 1,
    data_bin: str | None = None,
    activations: int = 0,
    subset: str = "train",
    fit_on: str | None = None,
    steps: int = 1000,
    restarts: int = 2,
    time_budget: float | None = None,
    log: Callable[[str], None] = print,
) -> list[LayerReport]:
    """Convert ``input_path`` to a K-matrix checkpoint at ``output_path``; returns the per-layer fit report."""
    from omegaconf import OmegaConf, open_dict

    from .kmatrix import KaleidoscopeLinear
    from .kmatrix.fit import fit
    from .models.builder import build_model_from_config

    if activations and data_bin is None:
        raise ConversionError("--activations needs --data-bin (the data to run the dense model on)")
    fit_on = fit_on or ("activations" if activations else "weights")
    if fit_on not in ("weights", "activations") or (fit_on == "activations" and not activations):
        raise ConversionError(f"--fit-on {fit_on!r}: use 'weights', or 'activations' with --activations N")
    state = load_state(input_path)
    dense_cfg = _model_config(state)
    src, tgt, task = _dictionaries(state, data_bin, dense_cfg)
    dense = build_model_from_config(dense_cfg, src, tgt)
    dense_sd = state["model"]
    dense.upgrade_state_dict(dense_sd)  # as load_state_dict would (drops stock lightconv's unused conv_bias)
    missing, unexpected = dense.load_state_dict(dense_sd, strict=False)
    if missing or unexpected:
        raise ConversionError(
            f"{input_path} does not match its own config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    kcfg = OmegaConf.create(OmegaConf.to_container(dense_cfg))
    with open_dict(kcfg):
        old = str(dense_cfg.kmatrix_layers)
        # Layers that already are K-matrices stay so (their twiddles are copied).
        kcfg.kmatrix_layers = kmatrix_layers if old == "none" else f"{old},{kmatrix_layers}"
        kcfg.kmatrix_nblocks = nblocks
    try:
        kmodel = build_model_from_config(kcfg, src, tgt)
    except ValueError as e:  # unknown --kmatrix-layers entries: the parser lists the valid ones
        raise ConversionError(str(e)) from e
    dense_modules = dict(dense.named_modules())
    targets = [
        n
        for n, m in kmodel.named_modules()
        if isinstance(m, KaleidoscopeLinear) and not isinstance(dense_modules.get(n), KaleidoscopeLinear)
    ]
    already = [n for n, m in kmodel.named_modules() if isinstance(m, KaleidoscopeLinear) and n not in targets]
    if not targets:
        detail = f" (already K-matrices: {', '.join(already)})" if already else ""
        raise ConversionError(f"--kmatrix-layers {kmatrix_layers!r} replaces no dense layer of {input_path}{detail}")
    for n in targets:
        if not isinstance(dense_modules.get(n), nn.Linear):
            raise ConversionError(f"{n} is {type(dense_modules.get(n)).__name__} in {input_path}, not nn.Linear")
    inputs = _record_inputs(dense, targets, task, activations, subset) if activations else {}
    if activations:
        counts = sorted({r.shape[0] for r in inputs.values()})
        got = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        short = f" (asked for {activations}; the data has fewer tokens)" if counts[0] < activations else ""
        log(f"recorded {got} input rows per layer from {data_bin} ({subset}){short}")

    new_sd = kmodel.state_dict()
    copied = 0
    converted_keys = {f"{n}.{p}" for n in targets for p in ("twiddle", "bias")}
    for key in new_sd:
        if key in converted_keys:
            continue
        if key not in dense_sd or dense_sd[key].shape != new_sd[key].shape:
            raise ConversionError(f"parameter {key} of the K-matrix model has no counterpart in {input_path}")
        new_sd[key] = dense_sd[key]
        copied += 1
    reports = []
    for i, name in enumerate(targets, 1):
        layer: nn.Linear = dense_modules[name]
        w = layer.weight.detach().float()
        start = time.perf_counter()
        x_fit = x_test = None
        if name in inputs:
            # Every 10th recorded row is held out to measure the output error honestly.
            rows = inputs[name]
            test = torch.arange(rows.shape[0]) % 10 == 9
            x_fit, x_test = (rows[~test], rows[test]) if test.any() else (rows, rows)
        on_acts = fit_on == "activations"
        target = (x_fit, x_fit @ w.t()) if on_acts else w
        result = fit(
            target,
            nblocks=nblocks,
            restarts=restarts,
            max_steps=steps,
            time_budget=time_budget,
            batch_size=min(1024, x_fit.shape[0]) if on_acts else None,
        )
        seconds = time.perf_counter() - start
        twiddle = result.layer.twiddle.detach()
        if twiddle.shape != new_sd[f"{name}.twiddle"].shape:
            raise ConversionError(
                f"{name}: fitted twiddle {tuple(twiddle.shape)} != {tuple(new_sd[name + '.twiddle'].shape)}"
            )
        new_sd[f"{name}.twiddle"] = twiddle.to(layer.weight.dtype).clone()
        if layer.bias is not None:
            new_sd[f"{name}.bias"] = dense_sd[f"{name}.bias"]
        with torch.no_grad():
            wk = result.layer.to_dense().float()
            werr = float((wk - w).norm() / w.norm().clamp_min(1e-30))
            oerr = None
            if x_test is not None:
                want = x_test @ w.t()
                oerr = float((x_test @ wk.t() - want).norm() / want.norm().clamp_min(1e-30))
        nrows = inputs[name].shape[0] if name in inputs else 0
        reports.append(LayerReport(name, (w.shape[0], w.shape[1]), werr, oerr, nrows, seconds))
        out_txt = "" if oerr is None else f", held-out output rel. error {oerr:.4f}"
        log(
            f"[{i}/{len(targets)}] {name} {w.shape[0]}x{w.shape[1]}: weight rel. error {werr:.4f}{out_txt} "
            f"({result.steps} steps, {seconds:.1f} s, {result.stop_reason})"
        )
    kmodel.load_state_dict(new_sd)  # strict: proves the new state matches the new config

    cfg = (
        OmegaConf.create(OmegaConf.to_container(state["cfg"]))
        if not isinstance(state["cfg"]["model"], argparse.Namespace)
        else _stock_cfg(state)
    )
    with open_dict(cfg):
        cfg.model = kcfg
    out = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": new_sd,
        # fairseq's loader wants one history entry; no optimizer state (its shapes changed).
        "optimizer_history": [{**state["optimizer_history"][-1], "optimizer_name": "none"}],
        "extra_state": {"converted_from": os.path.abspath(input_path), "kmatrix_layers": kmatrix_layers},
        "last_optimizer_state": None,
    }
    torch.save(out, output_path)
    log(f"wrote {output_path} ({len(targets)} layers converted, {copied} tensors copied unchanged)")
    return reports


def _stock_cfg(state: dict) -> object:
    """A stock fairseq checkpoint's cfg with the Namespace entries dropped (we only keep task options)."""
    from omegaconf import OmegaConf

    cfg = state["cfg"]
    plain = {k: OmegaConf.to_container(v) for k, v in cfg.items() if k != "model" and OmegaConf.is_config(v)}
    return OmegaConf.create(plain)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fairseq_kaleidoscope convert", description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="dense checkpoint (trained with --kmatrix-layers none)")
    p.add_argument("--output", required=True, help="where to write the K-matrix checkpoint")
    p.add_argument("--kmatrix-layers", default="decoder.all", help="layers to replace (as in fairseq-train)")
    p.add_argument("--kmatrix-nblocks", type=int, default=1, help="B·Bᵀ blocks per K-matrix")
    p.add_argument("--data-bin", help="fairseq data-bin directory to record real layer inputs from")
    p.add_argument("--activations", type=int, default=0, help="input rows per layer to fit on (needs --data-bin)")
    p.add_argument("--subset", default="train", help="data split the activations come from")
    p.add_argument(
        "--fit-on",
        choices=["weights", "activations"],
        help="what to fit (default: activations when --activations is given); "
        "--fit-on weights --activations N fits the weights but still reports the output error",
    )
    p.add_argument("--steps", type=int, default=1000, help="Adam steps per layer")
    p.add_argument("--restarts", type=int, default=2, help="random initialisations per layer")
    p.add_argument("--time-budget", type=float, help="seconds per layer")
    args = p.parse_args(argv)
    try:
        convert(
            args.input, args.output, args.kmatrix_layers, nblocks=args.kmatrix_nblocks, data_bin=args.data_bin,
            activations=args.activations, subset=args.subset, fit_on=args.fit_on, steps=args.steps,
            restarts=args.restarts, time_budget=args.time_budget, log=lambda s: print(s, flush=True),
        )  # fmt: skip
    except ConversionError as e:
        sys.exit(f"convert: error: {e}")


if __name__ == "__main__":
    main()
