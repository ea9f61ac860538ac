"""Average the parameters of fairseq checkpoints (the job of fairseq's ``scripts/average_checkpoints.py``).

The fairseq wheel does not ship ``scripts/``; this is a compatible replacement with the
same options (``--inputs``, ``--output``, ``--num-epoch-checkpoints``,
``--num-update-checkpoints``, ``--checkpoint-upper-bound``). Checkpoints are read with
``torch.load(weights_only=True)``. The first checkpoint's other entries (config,
optimizer history) are kept, as fairseq's script does.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict
from collections.abc import Sequence

import torch

from .safe_globals import allow_fairseq_checkpoint_types


def last_checkpoints(directory: str, n: int, update_based: bool, upper_bound: int | None = None) -> list[str]:
    """The ``n`` newest ``checkpointE.pt`` (or ``checkpoint_E_U.pt``) files in ``directory``, newest first."""
    pattern = re.compile(r"checkpoint_\d+_(\d+)\.pt" if update_based else r"checkpoint(\d+)\.pt")
    found = []
    for name in os.listdir(directory):
        m = pattern.fullmatch(name)
        if m and (upper_bound is None or int(m.group(1)) <= upper_bound):
            found.append((int(m.group(1)), name))
    if len(found) < n:
        raise ValueError(f"found {len(found)} matching checkpoints in {directory}, need {n}")
    return [os.path.join(directory, name) for _, name in sorted(found, reverse=True)[:n]]


def average_checkpoints(paths: Sequence[str]) -> dict:
    """Load ``paths`` and return the first checkpoint with ``model`` replaced by the mean parameters."""
    if not paths:
        raise ValueError("no checkpoints to average")
    allow_fairseq_checkpoint_types()  # dense fairseq checkpoints store an argparse.Namespace
    sums: OrderedDict[str, torch.Tensor] = OrderedDict()
    first = None
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        params = state["model"]
        if first is None:
            first = state
        elif list(params) != list(sums):
            raise KeyError(f"{path} has different parameter names than {paths[0]}")
        for k, v in params.items():
            v = v.float() if v.dtype == torch.half else v
            sums[k] = v.clone() if k not in sums else sums[k] + v
    # Integer buffers (e.g. step counters) are floor-divided, as fairseq's script does.
    first["model"] = OrderedDict(
        (k, v / len(paths) if v.is_floating_point() else torch.div(v, len(paths), rounding_mode="floor"))
        for k, v in sums.items()
    )
    (first.get("extra_state") or {}).pop("val_loss", None)  # that of one input, not of the average
    return first


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_kaleidoscope average-checkpoints",
        description="Average the parameters of fairseq checkpoints into a new checkpoint.",
    )
    parser.add_argument("--inputs", required=True, nargs="+", help="checkpoint files, or one directory with -num-*")
    parser.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    num = parser.add_mutually_exclusive_group()
    num.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpointE.pt in the directory")
    num.add_argument("--num-update-checkpoints", type=int, help="average the last N checkpoint_E_U.pt")
    parser.add_argument("--checkpoint-upper-bound", type=int, help="ignore checkpoints after this epoch/update")
    args = parser.parse_args(argv)
    n = args.num_epoch_checkpoints or args.num_update_checkpoints
    if args.checkpoint_upper_bound is not None and n is None:
        parser.error("--checkpoint-upper-bound needs --num-epoch-checkpoints or --num-update-checkpoints")
    paths = args.inputs
    if n is not None:
        if len(paths) != 1 or not os.path.isdir(paths[0]):
            parser.error("with --num-*-checkpoints, --inputs must be one directory")
        paths = last_checkpoints(paths[0], n, args.num_update_checkpoints is not None, args.checkpoint_upper_bound)
    print("averaging checkpoints:", " ".join(paths))
    torch.save(average_checkpoints(paths), args.output)
    print(f"wrote {args.output}")
