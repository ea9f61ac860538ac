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


def test_composite_optimizer_scales_the_kmatrix_lr_once(caplog) -> None:
    """fairseq's composite optimizer applies lr_scale itself: base x scale, not base x scale²."""
    from fairseq import optim
    from fairseq.optim import lr_scheduler
    from omegaconf import OmegaConf

    from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear
    from fairseq_kaleidoscope.modules import KMatrixOptions, make_linear

    layer = make_linear(8, 8, True, KMatrixOptions(lr_scale=3.0))
    assert isinstance(layer, KaleidoscopeLinear)

    def group(weight_decay: float = 0.0) -> dict:
        return {"optimizer": {"_name": "sgd", "lr": [0.01], "momentum": 0.0, "weight_decay": weight_decay},
                "lr_scheduler": {"_name": "fixed", "lr": [0.01]}}  # fmt: skip

    cfg = OmegaConf.create({"_name": "composite", "dynamic_groups": False,
                            "groups": {"default": group(0.1), "kmatrix": group()}})  # fmt: skip
    with caplog.at_level("WARNING"):
        opt = optim.build_optimizer(cfg, list(layer.parameters()))
    assert "K-matrix parameter" not in caplog.text
    scheduler = lr_scheduler.build_lr_scheduler(OmegaConf.create({"_name": "pass_through"}), opt)
    for num_updates in (0, 10):
        scheduler.step_update(num_updates)
        lrs = {type(g["params"][0]).__name__: g["lr"] for g in opt.param_groups}
        assert lrs == {"Parameter": pytest.approx(0.01), "TwiddleParameter": pytest.approx(0.03)}
    # fairseq's composite ignores weight_decay_scale: a decayed twiddle group gets a warning, not silence.
    # (Last: fairseq keeps the sub-optimizers in a class attribute, so a second build replaces them.)
    decayed = OmegaConf.create({"_name": "composite", "dynamic_groups": False,
                                "groups": {"default": group(0.1), "kmatrix": group(0.1)}})  # fmt: skip
    with caplog.at_level("WARNING"):
        optim.build_optimizer(decayed, list(layer.parameters()))
    assert "applies weight decay 0.1 to 1 K-matrix parameter(s)" in caplog.text


def _import_plugin_in_a_subprocess(opt_out: str | None) -> str:
    import os
    import subprocess
    import sys

    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "from fairseq.data import data_utils\n"
        "from fairseq import optim\n"
        "original = data_utils.batch_by_size\n"
        "import fairseq_kaleidoscope.models\n"
        "print('batching patched:', data_utils.batch_by_size is not original)\n"
        "print('optimizer patched:', optim.build_optimizer.__module__ == 'fairseq_kaleidoscope.compat.optimizer')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES"}
    if opt_out is not None:
        env["KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES"] = opt_out
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout + run.stderr


def test_each_fairseq_fix_logs_one_line_and_can_be_left_out() -> None:
    out = _import_plugin_in_a_subprocess(None)
    for name in ("safe_globals", "optimizer", "batching", "lean_search"):
        assert out.count(f"fairseq fix '{name}' installed") == 1, out
    assert "batching patched: True" in out and "optimizer patched: True" in out
    out = _import_plugin_in_a_subprocess("batching")
    assert "batching patched: False" in out and "optimizer patched: True" in out
    assert "fairseq fix 'batching' left out" in out
    out = _import_plugin_in_a_subprocess("all")
    assert "batching patched: False" in out and "optimizer patched: False" in out


def test_unknown_opt_out_names_are_refused(monkeypatch) -> None:
    from fairseq_kaleidoscope import compat

    monkeypatch.setenv("KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES", "batching,optimiser")
    with pytest.raises(ValueError, match=r"unknown \['optimiser'\]; use all or safe_globals, optimizer, batching"):
        compat.disabled_patches()
