"""Our DynamicConv: matches the loop definition, and full-sequence == step-by-step for every length."""

import contextlib

import pytest
import torch

pytest.importorskip("fairseq")

from fairseq.modules import DynamicConv_scripatable

from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear
from fairseq_kaleidoscope.modules import (
    DynamicConv,
    KMatrixOptions,
    dynamic_conv_reference,
    dynamic_convolution,
    make_linear,
)
from fairseq_kaleidoscope.modules.dynamic_convolution import DynamicConvState

C, H, B = 8, 2, 3


def _kmatrix_factory(i: int, o: int, bias: bool):
    return make_linear(i, o, bias, KMatrixOptions(init="randn"))


def _conv(K: int, causal: bool = True, kmatrix: bool = False) -> DynamicConv:
    torch.manual_seed(K)
    kw = {"linear": _kmatrix_factory} if kmatrix else {}
    conv = DynamicConv(C, K, padding_l=K - 1 if causal else K // 2, num_heads=H, weight_dropout=0.3, **kw)
    return conv.double().eval()


def _step_by_step(
    conv: DynamicConv, x: torch.Tensor, reorder_at: int | None = None, order=None, state: dict | None = None
) -> torch.Tensor:
    state = {} if state is None else state
    out = []
    for t in range(x.shape[0]):
        if reorder_at is not None and t == reorder_at:
            conv.reorder_incremental_state(state, order)
        out.append(conv(x[t : t + 1], incremental_state=state))
    return torch.cat(out, 0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("K", [1, 3, 7])
@pytest.mark.parametrize("T", [1, 2, 5, 9])
def test_full_forward_matches_loop_definition(K: int, T: int, causal: bool) -> None:
    conv = _conv(K, causal)
    x = torch.randn(T, B, C, dtype=torch.double)
    taps = torch.softmax(conv.weight_linear(x).view(T, B, H, K), dim=-1)
    torch.testing.assert_close(conv(x), dynamic_conv_reference(x, taps, conv.padding_l))


@pytest.mark.parametrize("kmatrix", [False, True])
@pytest.mark.parametrize(("K", "T"), [(31, 5), (7, 3), (7, 7), (3, 12), (1, 4)])
def test_full_forward_equals_incremental_decoding(K: int, T: int, kmatrix: bool) -> None:
    conv = _conv(K, kmatrix=kmatrix).float()
    x = torch.randn(T, B, C)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), _step_by_step(conv, x), atol=1e-5, rtol=0)
        torch.testing.assert_close(conv(x), conv(x, incremental_state={}), atol=1e-5, rtol=0)  # T positions at once


@pytest.mark.parametrize("K", [3, 5])  # the reorder at step 3 comes before and after the ring buffer wraps
@pytest.mark.parametrize(
    ("path", "dtype"),
    # the compiled op (float32), the reference (float64, or under autograd), the reference asked for
    [("op", torch.float), ("ref", torch.double), ("autograd", torch.double), ("reference_step", torch.float)],
)
def test_beam_reordering_moves_the_kept_inputs(path: str, dtype: torch.dtype, K: int) -> None:
    conv = _conv(K).to(dtype)
    conv.reference_step = path == "reference_step"
    x = torch.randn(6, B, C, dtype=dtype)
    order = torch.tensor([2, 0, 0])
    # After the reorder at step 3, row b continues the history of row order[b].
    x_reordered = torch.cat([x[:3, order], x[3:]], 0)
    with torch.no_grad():
        expected = conv(x_reordered)[3:]
    grad = torch.enable_grad() if path == "autograd" else contextlib.nullcontext()
    calls = []
    with torch.no_grad(), grad, _spy_on_steps(calls):
        state: dict = {}
        got = _step_by_step(conv, x, reorder_at=3, order=order, state=state)[3:]
    assert (path == "autograd") == got.requires_grad
    # float64 goes through dynconv_step, which runs the reference for any dtype but float32
    assert set(calls) == {"dynconv_step" if path in ("op", "ref") else "dynconv_step_ref"}
    (conv_state,) = state.values()  # one typed state under the module's one key
    assert isinstance(conv_state, DynamicConvState) and conv_state.steps == 6
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@contextlib.contextmanager
def _spy_on_steps(calls: list):
    """Record which step function DynamicConv.step calls."""
    saved = {name: getattr(dynamic_convolution, name) for name in ("dynconv_step", "dynconv_step_ref")}

    def spy(name):
        def call(*args):
            calls.append(name)
            return saved[name](*args)

        return call

    for name in saved:
        setattr(dynamic_convolution, name, spy(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(dynamic_convolution, name, fn)


def test_fairseq_scriptable_dynamicconv_disagrees_when_kernel_is_longer_than_sequence() -> None:
    """The upstream bug our module fixes: if this starts failing, fairseq fixed it."""
    torch.manual_seed(0)
    K, T = 31, 5
    ours = DynamicConv(C, K, padding_l=K - 1, num_heads=H).eval()
    theirs = DynamicConv_scripatable(C, K, padding_l=K - 1, num_heads=H, weight_softmax=True).eval()
    theirs.weight_linear.weight.data.copy_(ours.weight_linear.weight.data)
    x = torch.randn(T, B, C)
    with torch.no_grad():
        ours_full, theirs_full = ours(x), theirs(x)
        theirs_steps = torch.cat([theirs(x[t : t + 1], incremental_state=s) for s in [{}] for t in range(T)], 0)
        torch.testing.assert_close(ours_full, _step_by_step(ours, x), atol=1e-5, rtol=0)
        # fairseq's two modes disagree; its step-by-step output is the one we reproduce.
        assert (theirs_full - theirs_steps).abs().max() > 1e-3
        torch.testing.assert_close(theirs_steps, ours_full, atol=1e-5, rtol=0)


def test_kmatrix_weight_projection_trains() -> None:
    conv = DynamicConv(C, 3, padding_l=2, num_heads=H, linear=_kmatrix_factory).train()
    assert isinstance(conv.weight_linear, KaleidoscopeLinear)
    x = torch.randn(4, B, C, requires_grad=True)
    conv(x).square().sum().backward()
    assert conv.weight_linear.twiddle.grad is not None and conv.weight_linear.twiddle.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DynamicConv(6, 3, padding_l=2, num_heads=4)
    with pytest.raises(ValueError, match="padding_l"):
        DynamicConv(8, 3, padding_l=3)
    with pytest.raises(ValueError, match="expected input"):
        DynamicConv(8, 3, padding_l=2)(torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match="causal"):
        DynamicConv(8, 3, padding_l=1).eval()(torch.randn(1, 1, 8), incremental_state={})
    with pytest.raises(RuntimeError, match=r"call \.eval\(\) first"):
        DynamicConv(8, 3, padding_l=2)(torch.randn(1, 1, 8), incremental_state={})
