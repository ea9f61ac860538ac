"""Small, documented fixes that make fairseq 0.12 work on this stack; applied on plugin import.

* ``safe_globals``: fairseq checkpoints load under ``torch.load(weights_only=True)``.
* ``optimizer``: ordinary fairseq optimizers honour per-parameter ``lr_scale`` and
  weight-decay tags (the K-matrix learning-rate multiplier, no weight decay on twiddles).
* ``batching``: the last partial batch is no longer silently dropped (fairseq-generate
  translated up to 7 sentences fewer than the test set). Process-wide: it changes batching
  for stock fairseq models in the same process too (``batch_by_size`` does not know the model).
* ``lean_search``: ``fairseq-generate`` and ``fairseq-interactive`` search our LightConv
  models with ``LeanSequenceGenerator`` (greedy and beam search with less bookkeeping;
  identical hypotheses). Other models keep fairseq's generator.

Each fix logs one line when it is installed. ``KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES`` (a
comma-separated list of the names above, or ``all``) leaves fixes out.
"""

from __future__ import annotations

import logging
import os

from . import batching, generator, optimizer, safe_globals

logger = logging.getLogger(__name__)

OPT_OUT_VARIABLE = "KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES"
# name -> (install, what it changes)
PATCHES = {
    "safe_globals": (safe_globals.allow_fairseq_checkpoint_types,
                     "torch.load(weights_only=True) accepts argparse.Namespace (fairseq checkpoints)"),
    "optimizer": (optimizer.install, "fairseq.optim.build_optimizer and FP16Optimizer.build_optimizer honour "
                  "per-parameter lr_scale / weight-decay tags (--kmatrix-lr-scale, no decay on twiddles)"),
    "batching": (batching.install, "fairseq.data.data_utils.batch_by_size keeps the last partial batch "
                 "(for every model in this process)"),
    "lean_search": (generator.install, "FairseqTask.build_generator picks LeanSequenceGenerator for "
                    "kaleidoscope_lightconv models (other models keep fairseq's generator)"),
}  # fmt: skip
_installed: set[str] = set()


def disabled_patches() -> set[str]:
    """The fixes ``KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES`` leaves out (ValueError for unknown names)."""
    names = {s.strip() for s in os.environ.get(OPT_OUT_VARIABLE, "").split(",") if s.strip()}
    if "all" in names:
        return set(PATCHES)
    unknown = names - set(PATCHES)
    if unknown:
        raise ValueError(f"{OPT_OUT_VARIABLE}: unknown {sorted(unknown)}; use all or {', '.join(PATCHES)}")
    return names


def install() -> None:
    """Install every fix not opted out, once per process, with one log line each."""
    disabled = disabled_patches()
    for name, (install_patch, what) in PATCHES.items():
        if name in _installed:
            continue
        _installed.add(name)
        if name in disabled:
            logger.warning("fairseq_kaleidoscope: fairseq fix %r left out (%s=%s): %s is NOT changed",
                           name, OPT_OUT_VARIABLE, os.environ.get(OPT_OUT_VARIABLE), what)  # fmt: skip
            continue
        install_patch()
        logger.info("fairseq_kaleidoscope: fairseq fix %r installed: %s (opt out: %s=%s)",
                    name, what, OPT_OUT_VARIABLE, name)  # fmt: skip


__all__ = ["PATCHES", "batching", "disabled_patches", "generator", "install", "optimizer", "safe_globals"]
