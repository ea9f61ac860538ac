"""The compatibility fixes applied when the plugin is imported next to fairseq."""

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")

from fairseq.data import data_utils

import fairseq_kaleidoscope.models  # noqa: F401  (applies the fixes)
from fairseq_kaleidoscope.compat import batching, optimizer


def test_last_partial_batch_is_kept() -> None:
    indices = np.arange(20, dtype=np.int64)
    kwargs = {"max_tokens": 1000, "required_batch_size_multiple": 8}
    original = batching._original_batch_by_size(indices, lambda i: 5, **kwargs)
    assert sum(len(b) for b in original) == 16  # fairseq drops the last 4 sentences
    fixed = data_utils.batch_by_size(indices, lambda i: 5, **kwargs)
    assert [list(b) for b in fixed[: len(original)]] == [list(b) for b in original]
    assert np.array_equal(np.concatenate(fixed), indices)


def test_full_batches_are_left_alone() -> None:
    indices = np.arange(16, dtype=np.int64)
    fixed = data_utils.batch_by_size(indices, lambda i: 5, max_sentences=8, required_batch_size_multiple=8)
    assert [len(b) for b in fixed] == [8, 8]


def _tagged(value: float, lr_scale: float, wd_scale: float) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.full((2,), value))
    p.optim_overrides = {"optimizer": {"lr_scale": lr_scale, "weight_decay_scale": wd_scale}}
    return p


def test_tagged_param_groups_put_untagged_parameters_first() -> None:
    plain, frozen = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    a, b = _tagged(1.0, 2.0, 0.0), _tagged(2.0, 0.5, 1.0)
    groups = optimizer.tagged_param_groups([a, plain, b, frozen], weight_decay=0.1)
    assert [len(g["params"]) for g in groups] == [1, 1, 1]
    assert groups[0]["params"][0] is plain and groups[0]["lr_scale"] == 1.0 and groups[0]["weight_decay"] == 0.1
    by_param = {id(g["params"][0]): g for g in groups}
    assert (by_param[id(a)]["lr_scale"], by_param[id(a)]["weight_decay"]) == (2.0, 0.0)
    assert (by_param[id(b)]["lr_scale"], by_param[id(b)]["weight_decay"]) == (0.5, 0.1)


@pytest.mark.parametrize("copy_how", ["deepcopy", "pickle"])
def test_copied_twiddles_keep_their_lr_scale_and_no_weight_decay(copy_how: str) -> None:
    """EMA copies, clones and pickles keep the twiddle's options: one mechanism, on the parameter."""
    import copy
    import pickle

    from fairseq_kaleidoscope.kmatrix import TwiddleParameter
    from fairseq_kaleidoscope.modules import KMatrixOptions, make_linear

    layer = make_linear(8, 8, True, KMatrixOptions(lr_scale=3.0))
    layer = copy.deepcopy(layer) if copy_how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert isinstance(layer.twiddle, TwiddleParameter) and layer.twiddle.lr_scale == 3.0
    assert layer.twiddle.optim_overrides == {"optimizer": {"lr_scale": 3.0, "weight_decay_scale": 0.0}}
    assert layer.twiddle.param_group == "kmatrix"
    groups = optimizer.tagged_param_groups(layer.parameters(), weight_decay=0.1)
    assert [(len(g["params"]), g["lr_scale"], g["weight_decay"]) for g in groups] == [(1, 1.0, 0.1), (1, 3.0, 0.0)]


def _fairseq_optimizer(groups: list[dict]) -> object:
    """A FairseqOptimizer the way our build_optimizer returns it (the scaled set_lr is per instance)."""
    import types

    from fairseq.optim.fairseq_optimizer import FairseqOptimizer

    opt = FairseqOptimizer(cfg=None)
    opt._optimizer = torch.optim.SGD(groups, lr=1.0)
    opt.set_lr = types.MethodType(optimizer._scaled_set_lr, opt)
    return opt


def test_set_lr_scales_each_group() -> None:
    opt = _fairseq_optimizer(
        [{"params": [torch.nn.Parameter(torch.zeros(1))]},
         {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 4.0}])  # fmt: skip
    opt.set_lr(0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 1.0]
    assert opt.get_lr() == 0.25


def test_set_lr_follows_the_parameters_tags_after_a_resume() -> None:
    twiddle = _tagged(1.0, 2.0, 0.0)
    opt = _fairseq_optimizer(optimizer.tagged_param_groups([twiddle], weight_decay=None))
    opt.set_lr(0.5)
    assert opt.param_groups[0]["lr"] == 1.0
    twiddle.optim_overrides = {"optimizer": {"lr_scale": 3.0, "weight_decay_scale": 0.0}}  # new --kmatrix-lr-scale
    opt.set_lr(0.5)
    assert opt.param_groups[0]["lr"] == 1.5


def test_composite_optimizer_scales_the_kmatrix_lr_once() -> None:
    """fairseq's composite optimizer applies lr_scale itself: base x scale, not base x scale²."""
    from fairseq import optim
    from fairseq.optim import lr_scheduler
    from omegaconf import OmegaConf

    from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear
    from fairseq_kaleidoscope.modules import KMatrixOptions, make_linear

    layer = make_linear(8, 8, True, KMatrixOptions(lr_scale=3.0))
    assert isinstance(layer, KaleidoscopeLinear)

    def group() -> dict:
        return {"optimizer": {"_name": "sgd", "lr": [0.01], "momentum": 0.0, "weight_decay": 0.0},
                "lr_scheduler": {"_name": "fixed", "lr": [0.01]}}  # fmt: skip

    cfg = OmegaConf.create({"_name": "composite", "dynamic_groups": False,
                            "groups": {"default": group(), "kmatrix": group()}})  # fmt: skip
    opt = optim.build_optimizer(cfg, list(layer.parameters()))
    scheduler = lr_scheduler.build_lr_scheduler(OmegaConf.create({"_name": "pass_through"}), opt)
    for num_updates in (0, 10):
        scheduler.step_update(num_updates)
        lrs = {type(g["params"][0]).__name__: g["lr"] for g in opt.param_groups}
        assert lrs == {"Parameter": pytest.approx(0.01), "TwiddleParameter": pytest.approx(0.03)}
