"""Let ``torch.load(weights_only=True)`` (torch's default since 2.6) read fairseq checkpoints.

fairseq's argparse-configured models (``lightconv``, ``transformer``, ...) pickle their
options as an ``argparse.Namespace`` (``cfg["model"]``, or ``args`` in older files),
which torch refuses by default. A Namespace is a plain attribute container, so we
allow-list exactly that type instead of turning ``weights_only`` off. (Our own models
are dataclass-configured and store no Namespace at all.)
"""

import argparse

import torch

FAIRSEQ_CHECKPOINT_TYPES = (argparse.Namespace,)


def allow_fairseq_checkpoint_types() -> None:
    torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_TYPES))
