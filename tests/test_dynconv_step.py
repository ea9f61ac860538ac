"""dynconv_step: the compiled op against the reference, and both against DynamicConv's full forward."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fairseq")

from fairseq_kaleidoscope.modules import DynamicConv, dynamic_conv_reference
from fairseq_kaleidoscope.modules.dynconv_step import (
    dynconv_step,
    dynconv_step_ref,
    has_compiled_dynconv_step,
    reorder_cache,
)

needs_op = pytest.mark.skipif(not has_compiled_dynconv_step(), reason="compiled extension not built")
ATOL = 2e-6

# (B, H, K, R): K = 1 and K = 31, odd R (vector remainder), R = 1, one head, and more than
# 256 taps per row (H·K) and K = 70 (the kernel's heap buffer for the taps).
SHAPES = [(1, 1, 1, 4), (2, 2, 3, 8), (3, 4, 31, 4), (2, 3, 7, 5), (4, 1, 4, 33), (2, 4, 2, 1), (2, 9, 31, 2),
          (1, 1, 70, 3)]


def _op(x, logits, cache, step, softmax):
    return torch.ops.kaleidoscope.dynconv_step(x, logits, cache, step, softmax)


def _inputs(T: int, B: int, H: int, K: int, R: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, H * R, generator=g), 2 * torch.randn(T, B, H, K, generator=g)


@needs_op
@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize(("B", "H", "K", "R"), SHAPES)
def test_op_matches_reference_step_by_step(B: int, H: int, K: int, R: int, softmax: bool) -> None:
    T = K + 5  # shorter than K at first, then wrapped around the ring buffer
    xs, logits = _inputs(T, B, H, K, R)
    cache_op, cache_ref = torch.zeros(B, K, H * R), torch.zeros(B, K, H * R)
    for t in range(T):
        y_op = _op(xs[t], logits[t], cache_op, t, softmax)
        y_ref = dynconv_step_ref(xs[t], logits[t], cache_ref, t, softmax)
        assert y_op.shape == (B, H * R) and y_op.dtype == torch.float32 and y_op.is_contiguous()
        torch.testing.assert_close(y_op, y_ref, atol=ATOL, rtol=1e-5)
        assert torch.equal(cache_op, cache_ref)
        assert torch.equal(cache_op[:, t % K], xs[t])


@needs_op
def test_op_softmax_of_large_and_infinite_logits() -> None:
    B, H, K, R = 3, 2, 7, 4
    xs, logits = _inputs(K + 2, B, H, K, R)
    logits = 60 * logits  # most taps underflow to 0 after the softmax
    logits[:, 0, 1, 2] = float("-inf")  # a masked tap
    cache_op, cache_ref = torch.zeros(B, K, H * R), torch.zeros(B, K, H * R)
    for t in range(K + 2):
        y = _op(xs[t], logits[t], cache_op, t, True)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, dynconv_step_ref(xs[t], logits[t], cache_ref, t), atol=ATOL, rtol=1e-5)


@needs_op
def test_op_accepts_flat_and_non_contiguous_inputs() -> None:
    B, H, K, R, T = 3, 2, 5, 6, 8
    xs, logits = _inputs(T, B, H, K, R)
    cache_a, cache_b, cache_c = (torch.zeros(B, K, H * R) for _ in range(3))
    for t in range(T):
        expected = _op(xs[t], logits[t], cache_a, t, True)
        x_strided = torch.stack([xs[t], -xs[t]], dim=-1)[..., 0]  # stride 2 along channels
        assert not x_strided.is_contiguous()
        lg_t = logits[t].transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, K) with K-stride H
        assert not lg_t.is_contiguous()
        torch.testing.assert_close(_op(x_strided, lg_t, cache_b, t, True), expected, atol=0, rtol=0)
        torch.testing.assert_close(_op(xs[t], logits[t].reshape(B, H * K), cache_c, t, True), expected, atol=0, rtol=0)
    assert torch.equal(cache_a, cache_b) and torch.equal(cache_a, cache_c)


@needs_op
def test_op_threads_over_a_large_batch() -> None:
    # Large enough for parallel_for to split the batch: tasks of 2^16 / (K*C) = 2730 rows.
    B, H, K, R = 6000, 2, 3, 4
    xs, logits = _inputs(4, B, H, K, R)
    cache_op, cache_ref = torch.zeros(B, K, H * R), torch.zeros(B, K, H * R)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for t in range(4):
            torch.testing.assert_close(
                _op(xs[t], logits[t], cache_op, t, True),
                dynconv_step_ref(xs[t], logits[t], cache_ref, t, True),
                atol=ATOL,
                rtol=1e-5,
            )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(cache_op, cache_ref)


def _conv(C: int, K: int, H: int, softmax: bool) -> DynamicConv:
    torch.manual_seed(K)
    conv = DynamicConv(C, K, padding_l=K - 1, num_heads=H, weight_softmax=softmax)
    return conv.eval()


@pytest.mark.parametrize("impl", ["dynconv_step", "ref"])
@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize(("K", "T"), [(1, 4), (3, 1), (3, 9), (7, 7), (31, 5), (31, 40)])
def test_steps_match_dynamic_conv_full_forward(K: int, T: int, softmax: bool, impl: str) -> None:
    B, H, C = 3, 2, 8
    conv = _conv(C, K, H, softmax)
    step_fn = dynconv_step if impl == "dynconv_step" else dynconv_step_ref
    x = torch.randn(T, B, C)
    cache = torch.zeros(B, K, C)
    with torch.no_grad():
        full = conv(x)
        steps = [step_fn(x[t], conv.weight_linear(x[t]).view(B, H, K), cache, t, softmax) for t in range(T)]
        taps = conv.weight_linear(x).view(T, B, H, K)
        taps = torch.softmax(taps, dim=-1) if softmax else taps
        loop = dynamic_conv_reference(x, taps, K - 1)
    torch.testing.assert_close(torch.stack(steps), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(steps), loop, atol=1e-5, rtol=1e-5)


def test_reference_steps_are_differentiable() -> None:
    """dynconv_step_ref (not the op) keeps the graph: a caller that needs gradients can step with it."""
    B, H, C, K, T = 2, 2, 6, 3, 5
    conv = _conv(C, K, H, True).double()
    x = torch.randn(T, B, C, dtype=torch.double, requires_grad=True)
    cache = torch.zeros(B, K, C, dtype=torch.double)
    steps = torch.stack([dynconv_step_ref(x[t], conv.weight_linear(x[t]).view(B, H, K), cache, t) for t in range(T)])
    g = torch.randn(T, B, C, dtype=torch.double)
    grads = torch.autograd.grad(steps, [x, conv.weight_linear.weight], g)
    expected = torch.autograd.grad(conv(x), [x, conv.weight_linear.weight], g)
    for a, b in zip(grads, expected, strict=True):  # DynamicConv takes its softmax in float32
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _run(step_fn, xs, logits, cache, start: int, softmax: bool = True) -> list[torch.Tensor]:
    return [step_fn(xs[t], logits[t], cache, start + t, softmax) for t in range(xs.shape[0])]


@pytest.mark.parametrize("impl", ["dynconv_step", "ref"])
@pytest.mark.parametrize(
    ("K", "t0", "order"),
    [
        (5, 2, [2, 0, 0, 1]),  # before the ring buffer wraps: only the 3 written slots move
        (5, 7, [3, 3, 1, 0]),  # after it wrapped: the whole buffer
        (3, 1, [1, 2]),  # the batch shrinks (finished sentences): a new tensor
        (4, 6, [0, 0, 3, 2, 1, 1]),  # the batch grows
        (1, 3, [1, 0, 3, 2]),
    ],
)
def test_beam_reordering_mid_sequence(K: int, t0: int, order: list[int], impl: str) -> None:
    """Reorder after step t0-1, then go on; compare with fresh runs of the reordered histories."""
    B, H, R, T = 4, 2, 3, t0 + K + 2
    step_fn = dynconv_step if impl == "dynconv_step" else dynconv_step_ref
    new_order = torch.tensor(order)
    xs, logits = _inputs(T, B, H, K, R, seed=1)
    xs_new, logits_new = _inputs(T, len(order), H, K, R, seed=2)  # the inputs after the reorder
    cache = torch.zeros(B, K, H * R)
    _run(step_fn, xs[:t0], logits[:t0], cache, 0)
    reordered = reorder_cache(cache, new_order, t0 - 1)
    assert (reordered is cache) == (len(order) == B)
    got = torch.stack(_run(step_fn, xs_new[t0:], logits_new[t0:], reordered, t0))

    # Row b continues the history of row order[b]: re-run it from scratch.
    hist_x = torch.cat([xs[:t0, new_order], xs_new[t0:]])
    hist_l = torch.cat([logits[:t0, new_order], logits_new[t0:]])
    fresh = torch.zeros(len(order), K, H * R)
    expected = torch.stack(_run(dynconv_step_ref, hist_x, hist_l, fresh, 0))[t0:]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    assert torch.equal(reordered, fresh)


@pytest.mark.parametrize("impl", ["dynconv_step", "ref"])
def test_unwritten_slots_are_never_read(impl: str) -> None:
    B, H, K, R = 2, 2, 6, 4
    step_fn = dynconv_step if impl == "dynconv_step" else dynconv_step_ref
    xs, logits = _inputs(4, B, H, K, R)
    clean, dirty = torch.zeros(B, K, H * R), torch.full((B, K, H * R), float("nan"))
    for t in range(4):
        torch.testing.assert_close(step_fn(xs[t], logits[t], dirty, t), step_fn(xs[t], logits[t], clean, t))
    # reorder_cache copies only the written slots: the others keep whatever they held.
    reorder_cache(dirty, torch.tensor([1, 0]), 3)
    assert torch.equal(dirty[:, :4], clean[[1, 0], :4]) and dirty[:, 4:].isnan().all()


def test_reorder_before_the_first_step_and_bad_arguments() -> None:
    cache = torch.randn(2, 3, 4)
    before = cache.clone()
    assert reorder_cache(cache, torch.tensor([1, 1]), -1) is cache and torch.equal(cache, before)
    assert reorder_cache(cache, torch.tensor([1]), -1).abs().sum() == 0
    with pytest.raises(ValueError, match="step must be >= -1"):
        reorder_cache(cache, torch.tensor([1, 0]), -2)
    with pytest.raises(ValueError, match="new_order must be 1-D"):
        reorder_cache(cache, torch.tensor([[1, 0]]), 0)
    with pytest.raises(ValueError, match="cache must have shape"):
        reorder_cache(cache[0], torch.tensor([1, 0]), 0)


def test_other_dtypes_use_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from fairseq_kaleidoscope.modules import dynconv_step as module

    calls: list[int] = []
    monkeypatch.setattr(module, "dynconv_step_ref", lambda *args: calls.append(1) or dynconv_step_ref(*args))
    B, H, K, R = 2, 2, 3, 4
    xs, logits = _inputs(5, B, H, K, R)
    xs, logits = xs.double(), logits.double()
    a, b = torch.zeros(B, K, H * R, dtype=torch.double), torch.zeros(B, K, H * R, dtype=torch.double)
    for t in range(5):
        torch.testing.assert_close(dynconv_step(xs[t], logits[t], a, t), dynconv_step_ref(xs[t], logits[t], b, t))
    assert len(calls) == 5  # every float64 step went through the reference, none through the op


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the op, the reference
@pytest.mark.parametrize("needs_grad", ["x", "logits", "cache"])
def test_grad_mode_is_refused(dtype: torch.dtype, needs_grad: str) -> None:
    args = {"x": torch.randn(2, 8, dtype=dtype), "logits": torch.randn(2, 2, 3, dtype=dtype)}
    args["cache"] = torch.zeros(2, 3, 8, dtype=dtype)
    args[needs_grad].requires_grad_()
    with pytest.raises(RuntimeError, match="for inference and has no gradient"):
        dynconv_step(**args, step=0)
    with torch.no_grad():
        assert dynconv_step(**args, step=0).shape == (2, 8)


@needs_op
def test_op_refuses_grad_and_marks_the_cache_modified() -> None:
    x, logits, cache = torch.randn(2, 8), torch.randn(2, 2, 3, requires_grad=True), torch.zeros(2, 3, 8)
    with pytest.raises(RuntimeError, match="for inference and has no gradient"):
        _op(x, logits, cache, 0, True)
    version = cache._version
    with torch.no_grad():
        y = _op(x, logits, cache, 0, True)
    assert not y.requires_grad and cache._version > version
    with torch.inference_mode():
        cache = torch.zeros(2, 3, 8)
        torch.testing.assert_close(_op(x, logits, cache, 0, True), y)


B0, H0, K0, C0 = 2, 2, 3, 8
BAD_ARGS = [
    # (x, logits, cache, step, error type, message)
    (torch.randn(B0, C0), torch.randn(B0, H0, K0), torch.zeros(B0, K0 * C0), 0, ValueError, "cache must have shape"),
    (torch.randn(B0, C0 + 1), torch.randn(B0, H0, K0), torch.zeros(B0, K0, C0), 0, ValueError, "x shape"),
    (torch.randn(B0 + 1, C0), torch.randn(B0, H0, K0), torch.zeros(B0, K0, C0), 0, ValueError, "x shape"),
    (torch.randn(B0, C0), torch.randn(B0, H0, K0 + 1), torch.zeros(B0, K0, C0), 0, ValueError, "logits shape"),
    (torch.randn(B0, C0), torch.randn(B0, H0 * K0 + 1), torch.zeros(B0, K0, C0), 0, ValueError, "logits shape"),
    (torch.randn(B0, C0), torch.randn(B0, 3, K0), torch.zeros(B0, K0, C0), 0, ValueError, "not divisible by heads"),
    (torch.randn(B0, C0), torch.randn(B0, H0, K0), torch.zeros(B0, K0, C0), -1, ValueError, "step must be >= 0"),
    (torch.randn(B0, C0).double(), torch.randn(B0, H0, K0), torch.zeros(B0, K0, C0), 0, TypeError, "x dtype"),
    (torch.randn(B0, C0), torch.randn(B0, H0, K0).half(), torch.zeros(B0, K0, C0), 0, TypeError, "logits dtype"),
]


@pytest.mark.parametrize(("x", "logits", "cache", "step", "error", "message"), BAD_ARGS)
def test_bad_arguments_are_named(x, logits, cache, step, error, message) -> None:
    with pytest.raises(error, match=message):
        dynconv_step(x, logits, cache, step)
    with pytest.raises(error, match=message):
        dynconv_step_ref(x, logits, cache, step)


@needs_op
@pytest.mark.parametrize(("x", "logits", "cache", "step", "error", "message"), BAD_ARGS)
def test_op_rejects_bad_arguments(x, logits, cache, step, error, message) -> None:
    with pytest.raises(error, match=f"dynconv_step: .*{message}"):
        _op(x, logits, cache, step, True)


@needs_op
def test_op_needs_a_contiguous_float32_cache() -> None:
    x, logits = torch.randn(2, 8), torch.randn(2, 2, 3)
    with pytest.raises(ValueError, match="cache must be contiguous"):
        dynconv_step(x, logits, torch.zeros(2, 8, 3).transpose(1, 2), 0)
    with pytest.raises(TypeError, match="cache must be float32"):
        _op(x, logits, torch.zeros(2, 3, 8, dtype=torch.double), 0, True)


@needs_op
def test_fake_and_meta_kernels_give_the_output_shape() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = _op(torch.randn(5, 8), torch.randn(5, 2, 3), torch.zeros(5, 3, 8), 4, True)
    assert y.shape == (5, 8) and y.dtype == torch.float32
    meta = [torch.empty(s, device="meta") for s in ((5, 8), (5, 6), (5, 3, 8))]
    assert _op(*meta, 4, True).shape == (5, 8)
    with pytest.raises(ValueError, match="logits shape"):
        _op(meta[0], torch.empty(5, 7, device="meta"), meta[2], 4, True)
    with pytest.raises(ValueError, match="is on meta but cache is on cpu"):
        dynconv_step(meta[0], torch.randn(5, 6), torch.zeros(5, 3, 8), 4)
