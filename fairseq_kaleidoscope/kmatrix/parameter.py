"""The parameter type of K-matrix twiddles, recognisable by optimizers."""

from torch import nn


class TwiddleParameter(nn.Parameter):
    """An ``nn.Parameter`` holding butterfly twiddles.

    A subclass rather than an attribute on a plain Parameter: ``copy.deepcopy`` (EMA
    copies, model cloning) keeps the type but drops ad-hoc attributes, and a twiddle
    that silently lost its tag would be weight-decayed. ``_optim`` follows the
    convention of per-parameter optimizer overrides (as in mamba): no weight decay.
    """

    _optim = {"weight_decay": 0.0}  # noqa: RUF012  (read-only by convention)
