"""The compiled butterfly op against the plain-PyTorch reference, forward and gradients."""

import itertools

import pytest
import torch

from fairseq_kaleidoscope.kmatrix import HAS_EXTENSION, butterfly_multiply, butterfly_multiply_ref
from fairseq_kaleidoscope.kmatrix.init import init_twiddle_

pytestmark = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not built")

NS = [2**k for k in range(1, 13)]  # 2 .. 4096
BATCHES = [0, 1, 3, 64, 1000]
# Largest error relative to the largest expected magnitude (at least 1), as test_cpu_kernels checks:
# about 100x the float32 error of 2·log2(n) rounded factors, and float64's equivalent.
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "output") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    scale = expected.abs().max().clamp_min(1.0)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= TOL[expected.dtype], f"{what}: relative error {err:.3g} > {TOL[expected.dtype]:g}"


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
    assert_close(out, ref.detach())
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for got, want, name in zip(leaves, leaves_ref, ["twiddle", "input", "bias"], strict=False):
        assert_close(got.grad, want.grad, f"grad {name}")


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
    assert_close(out, butterfly_multiply_ref(tw, x_nc.contiguous(), False) + b)


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
        (lambda: (torch.randn(1, 0, 4, 8, 2, 2), torch.randn(5, 1, 16)), ValueError, "at least one butterfly"),
        (lambda: (torch.randn(1, 2, 4, 8, 2, 2, device="meta"), torch.randn(5, 1, 16)), ValueError, "is on meta"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, error, match):
    tw, x = make()
    with pytest.raises(error, match=match):
        butterfly_multiply(tw, x, False)


def test_compiled_op_checks_its_arguments_too():
    """A direct call of the registered op must fail with a typed error and a message, not crash."""
    with pytest.raises(ValueError, match="does not match input shape"):
        torch.ops.kaleidoscope.butterfly_multiply(torch.randn(1, 2, 3, 4, 2, 2), torch.randn(5, 1, 16), None, False)
    with pytest.raises(ValueError, match="power of two"):
        torch.ops.kaleidoscope.butterfly_multiply(torch.randn(1, 2, 2, 6, 2, 2), torch.randn(5, 1, 12), None, False)
    with pytest.raises(ValueError, match="bias must have shape"):
        torch.ops.kaleidoscope.butterfly_multiply(
            torch.randn(1, 2, 4, 8, 2, 2), torch.randn(5, 1, 16), torch.randn(16), False
        )
    with pytest.raises(TypeError, match="bias dtype"):
        torch.ops.kaleidoscope.butterfly_multiply(
            torch.randn(1, 2, 4, 8, 2, 2), torch.randn(5, 1, 16), torch.randn(1, 16, dtype=torch.float64), False
        )
    with pytest.raises(ValueError, match="grad shape"):
        torch.ops.kaleidoscope.butterfly_multiply_backward(
            torch.randn(4, 1, 16), torch.randn(1, 2, 4, 8, 2, 2), torch.randn(5, 1, 16), False
        )


def test_second_derivatives_are_refused_not_silently_wrong():
    """butterfly_multiply_backward has no gradient formula: double backward must raise, not treat it as constant."""
    tw, x, _ = make_args(8, 3, 2, dtype=torch.float64, bias=False)
    tw.requires_grad_()
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.autograd.gradgradcheck(lambda t, x: butterfly_multiply(t, x, False), (tw, x))
    (g,) = torch.autograd.grad(butterfly_multiply(tw, x, False).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        g.sum().backward()
    # First derivatives under create_graph=True are still right.
    ref = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(butterfly_multiply_ref(tw.detach(), ref, False).square().sum(), ref)
    assert_close(g.detach(), want, "first derivative with create_graph")


@pytest.mark.parametrize("in_f,out_f,bias", [(16, 16, True), (12, 40, True), (16, 5, False)])
def test_opcheck_kmatrix_linear(in_f, out_f, bias):
    """Schema, fake kernel (torch.compile), autograd registration and AOT dispatch of the layer's op."""
    from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear

    layer = KaleidoscopeLinear(in_f, out_f, bias=bias, nblocks=2, init="randn", dtype=torch.float64)
    x = torch.randn(3, 2, in_f, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.kaleidoscope.kmatrix_linear.default, (x, layer.twiddle, layer.bias, out_f))
    with torch.no_grad():
        torch.library.opcheck(
            torch.ops.kaleidoscope.kmatrix_linear.default, (x.detach(), layer.twiddle.detach(), None, out_f),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )


def test_kmatrix_linear_compiles_fullgraph():
    from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear

    layer = KaleidoscopeLinear(12, 40)
    x = torch.randn(4, 12)
    fn = torch.compile(lambda x: torch.ops.kaleidoscope.kmatrix_linear(x, layer.twiddle, layer.bias, 40),
                       backend="aot_eager", fullgraph=True)  # fmt: skip
    assert_close(fn(x).detach(), layer(x).detach())


def test_opcheck_dynconv_step_mutates_only_its_cache():
    """dynconv_step's schema says Tensor(a!) cache: opcheck verifies it writes the cache and nothing else."""
    import fairseq_kaleidoscope.modules.dynconv_step  # noqa: F401  (its fake kernel; the op's error names it)

    B, H, K, C = 2, 2, 3, 8
    g = torch.Generator().manual_seed(0)
    for step in (0, 4):
        args = (torch.randn(B, C, generator=g), torch.randn(B, H, K, generator=g), torch.randn(B, K, C, generator=g))
        torch.library.opcheck(torch.ops.kaleidoscope.dynconv_step.default, (*args, step, True))
