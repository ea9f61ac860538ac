"""Small, documented fixes that make fairseq 0.12 work on this stack; applied on plugin import.

* :mod:`.safe_globals`: fairseq checkpoints load under ``torch.load(weights_only=True)``.
* :mod:`.optimizer`: ordinary fairseq optimizers honour per-parameter ``lr_scale`` and
  weight-decay tags (the K-matrix learning-rate multiplier, no weight decay on twiddles).
* :mod:`.batching`: the last partial batch is no longer silently dropped (fairseq-generate
  translated up to 7 sentences fewer than the test set).
"""

from . import batching, optimizer, safe_globals


def install() -> None:
    safe_globals.allow_fairseq_checkpoint_types()
    optimizer.install()
    batching.install()


__all__ = ["batching", "install", "optimizer", "safe_globals"]
