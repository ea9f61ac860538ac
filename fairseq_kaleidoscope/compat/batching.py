"""Keep the last, partial batch that fairseq 0.12 silently drops.

``fairseq.data.data_utils.batch_by_size`` ends with
``if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0: b = b[:-1]``; with the default
``--required-batch-size-multiple 8`` fairseq-generate therefore skips up to 7 sentences
of every test set (BLEU on an incomplete set) and training skips them every epoch
(facebookresearch/fairseq#5036, #5351). The wrapper appends the dropped sentences as
one final batch; every other batch is unchanged.
"""

from __future__ import annotations

import numpy as np
from fairseq.data import data_utils

_original_batch_by_size = None


def batch_by_size(indices: object, num_tokens_fn: object, *args: object, **kwargs: object) -> list:
    batches = _original_batch_by_size(indices, num_tokens_fn, *args, **kwargs)
    indices = np.asarray(indices, dtype=np.int64)
    covered = sum(len(b) for b in batches)
    # fairseq only ever drops the final batch, so the missing sentences are the tail.
    if covered < len(indices):
        batches = [*batches, indices[covered:]]
    return batches


def install() -> None:
    """Idempotent."""
    global _original_batch_by_size
    if _original_batch_by_size is None:
        _original_batch_by_size = data_utils.batch_by_size
        data_utils.batch_by_size = batch_by_size
