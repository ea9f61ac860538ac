"""The compiled butterfly op against the plain-PyTorch reference, forward and gradients."""

import itertools
import math

import pytest
import torch

from fairseq_kaleidoscope.kmatrix import HAS_EXTENSION, butterfly_multiply, butterfly_multiply_ref
from fairseq_kaleidoscope.kmatrix.init import init_twiddle_

pytestmark = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not built")

NS = [2**k for k in range(1, 13)]  # 2 .. 4096
BATCHES = [0, 1, 3, 64, 1000]
TOL = {torch.float32: {"rtol": 2e-4, "atol": 2e-4}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}


def make_args(n, batch, nbutterflies, nstacks=1, dtype=torch.float32, bias=True, seed=0):
    """Near-orthogonal twiddles (values stay O(1) through many factors) and random input."""
    g = torch.Generator().manual_seed(seed)
    log_n = n.bit_length() - 1
    tw = init_twiddle_(torch.empty(nstacks, nbutterflies, log_n, n // 2, 2, 2, dtype=dtype), "ortho", n)
    tw = tw + 0.1 * torch.randn(tw.shape, generator=g, dtype=dtype)
    x = torch.randn(batch, nstacks, n, generator=g, dtype=dtype)
    b = torch.randn(nstacks, n, generator=g, dtype=dtype) if bias else None
    return tw, x, b


def compare(tw, x, b, increasing, dtype):
    leaves = [t.clone().requires_grad_() for t in (tw, x) + ((b,) if b is not None else ())]
    leaves_ref = [t.detach().clone().requires_grad_() for t in leaves]
    out = butterfly_multiply(leaves[0], leaves[1], increasing, leaves[2] if b is not None else None)
    ref = butterfly_multiply_ref(leaves_ref[0], leaves_ref[1], increasing)
    if b is not None:
        ref = ref + leaves_ref[2]
    torch.testing.assert_close(out, ref, **TOL[dtype])
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    scale = math.sqrt(max(1, x.shape[0]))  # twiddle grads sum over the batch
    for got, want, name in zip(leaves, leaves_ref, ["twiddle", "input", "bias"], strict=False):
        tol = {k: v * scale for k, v in TOL[dtype].items()} if name != "input" else TOL[dtype]
        torch.testing.assert_close(got.grad, want.grad, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("increasing", [False, True])
def test_matches_reference_grid(n, batch, increasing):
    if n * batch > 2**20:
        batch = 2**20 // n  # keep the reference affordable at the top end
    compare(*make_args(n, batch, nbutterflies=2), increasing, torch.float32)


@pytest.mark.parametrize("nblocks,n,increasing", list(itertools.product([1, 2, 3], [2, 16, 512, 4096], [False, True])))
def test_matches_reference_nblocks(nblocks, n, increasing):
    compare(*make_args(n, 3, nbutterflies=2 * nblocks, nstacks=2), increasing, torch.float32)


@pytest.mark.parametrize("nbutterflies", [1, 2, 5])
@pytest.mark.parametrize("n", [2, 8, 128, 1024])
def test_float64_and_odd_butterfly_counts(nbutterflies, n):
    compare(*make_args(n, 5, nbutterflies, nstacks=3, dtype=torch.float64, bias=n > 8), n % 16 == 0, torch.float64)


def test_noncontiguous_and_expanded_input():
    tw, _, b = make_args(64, 9, 2, nstacks=3)
    base = torch.randn(64, 9 * 2)  # transposed and strided view of (9, 64)
    x_nc = base.t()[::2].unsqueeze(1).expand(9, 3, 64)
    assert not x_nc.is_contiguous()
    out = butterfly_multiply(tw, x_nc, False, b)
    torch.testing.assert_close(out, butterfly_multiply_ref(tw, x_nc.contiguous(), False) + b, **TOL[torch.float32])


def test_gradcheck_float64():
    tw, x, b = make_args(8, 3, 3, nstacks=2, dtype=torch.float64)
    args = [t.requires_grad_() for t in (tw, x, b)]
    assert torch.autograd.gradcheck(lambda t, x, b: butterfly_multiply(t, x, True, b), args)
    assert torch.autograd.gradcheck(lambda t, x: butterfly_multiply(t, x, False), args[:2])


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    tw, x, b = make_args(16, 4, 2, nstacks=2, dtype=torch.float64, bias=bias)
    tw.requires_grad_()
    x.requires_grad_()
    torch.library.opcheck(torch.ops.kaleidoscope.butterfly_multiply.default, (tw, x, b, False))
    grad = torch.randn_like(x)
    torch.library.opcheck(
        torch.ops.kaleidoscope.butterfly_multiply_backward.default, (grad, tw.detach(), x.detach(), True)
    )


def test_threads_agree():
    tw, x, b = make_args(256, 257, 2, nstacks=2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = butterfly_multiply(tw, x, False, b)
        torch.set_num_threads(2)
        two = butterfly_multiply(tw, x, False, b)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: (torch.randn(1, 2, 3, 4, 2, 2), torch.randn(5, 1, 16)), ValueError, "twiddle shape"),
        (lambda: (torch.randn(1, 2, 2, 6, 2, 2), torch.randn(5, 1, 12)), ValueError, "power of two"),
        (lambda: (torch.randn(1, 2, 4, 8, 2, 2), torch.randn(5, 16)), ValueError, "input must have shape"),
        (lambda: (torch.randn(2, 4, 8, 2, 2), torch.randn(5, 1, 16)), ValueError, "twiddle must have shape"),
        (lambda: (torch.randn(1, 2, 4, 8, 2, 2), torch.randn(5, 1, 16, dtype=torch.float64)), TypeError, "dtype"),
        (lambda: (torch.randn(1, 0, 4, 8, 2, 2), torch.randn(5, 1, 16)), ValueError, "nbutterflies"),
        (lambda: (torch.randn(1, 2, 4, 8, 2, 2, device="meta"), torch.randn(5, 1, 16)), ValueError, "is on meta"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, error, match):
    tw, x = make()
    with pytest.raises(error, match=match):
        butterfly_multiply(tw, x, False)


def test_compiled_op_checks_its_arguments_too():
    """A direct call of the registered op must fail with a message, not crash."""
    with pytest.raises(RuntimeError, match="does not match input shape"):
        torch.ops.kaleidoscope.butterfly_multiply(torch.randn(1, 2, 3, 4, 2, 2), torch.randn(5, 1, 16), None, False)
    with pytest.raises(RuntimeError, match="power of two"):
        torch.ops.kaleidoscope.butterfly_multiply(torch.randn(1, 2, 2, 6, 2, 2), torch.randn(5, 1, 12), None, False)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        torch.ops.kaleidoscope.butterfly_multiply(
            torch.randn(1, 2, 4, 8, 2, 2), torch.randn(5, 1, 16), torch.randn(16), False
        )
    with pytest.raises(RuntimeError, match="grad shape"):
        torch.ops.kaleidoscope.butterfly_multiply_backward(
            torch.randn(4, 1, 16), torch.randn(1, 2, 4, 8, 2, 2), torch.randn(5, 1, 16), False
        )
