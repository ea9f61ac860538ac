"""The compiled CPU kernels against the plain-PyTorch reference, every code path forced in
turn: instruction set (AVX-512, AVX2, portable C++) x forward path (batch-vectorised tiles,
pair-vectorised small batch), 1 and 2 threads, float32 and float64."""

from __future__ import annotations

import itertools

import pytest
import torch

from fairseq_kaleidoscope.kmatrix.cpu_kernel import ISAS, PATHS, forced_cpu_kernel, get_cpu_kernel, supported_isas
from fairseq_kaleidoscope.kmatrix.ops import HAS_EXTENSION, butterfly_multiply
from fairseq_kaleidoscope.kmatrix.reference import butterfly_multiply_ref

pytestmark = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not built")


# Every instruction set, whatever this CPU has: tests/conftest.py skips the ones it lacks, visibly
# ("CPU lacks avx512"), or fails them under KALEIDOSCOPE_REQUIRE_ISA.
# "auto": tiles for whole tiles, the small-batch path for a remainder under half a tile.
KERNELS = [(isa, path) for isa in ISAS for path in (*PATHS, "auto")]

OPS = torch.ops.kaleidoscope
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def make(n: int, batch: int, nstacks: int, nbutterflies: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    log_n = n.bit_length() - 1
    # Scaled so that products of 2*log n factors stay O(1) in float32.
    tw = torch.randn(nstacks, nbutterflies, log_n, n // 2, 2, 2, generator=g, dtype=dtype) / 2**0.5
    x = torch.randn(batch, nstacks, n, generator=g, dtype=dtype)
    bias = torch.randn(nstacks, n, generator=g, dtype=dtype)
    return tw, x, bias


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().clamp_min(1.0)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= TOL[expected.dtype], f"{what}: relative error {err:.3g}"


def check_forward(tw, x, bias, increasing: bool, what: str) -> None:
    expected = butterfly_multiply_ref(tw, x, increasing)
    if bias is not None:
        expected = expected + bias
    actual = OPS.butterfly_multiply(tw, x, bias, increasing)
    assert actual.shape == expected.shape and actual.is_contiguous()
    assert_close(actual, expected, what)


def check_backward(tw, x, increasing: bool, what: str, seed: int = 1) -> None:
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    tw_ref, x_ref = tw.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    butterfly_multiply_ref(tw_ref, x_ref, increasing).backward(grad)
    dtw, dx = OPS.butterfly_multiply_backward(grad, tw, x, increasing)
    assert_close(dtw, tw_ref.grad, f"{what} grad twiddle")
    assert_close(dx, x_ref.grad, f"{what} grad input")


@pytest.mark.parametrize(("isa", "path"), KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_size(isa: str, path: str, dtype: torch.dtype) -> None:
    """n = 2 ... 4096, batch sizes that leave a remainder after every vector width."""
    with forced_cpu_kernel(isa, path):
        assert get_cpu_kernel() == (isa, path)
        for k in range(1, 13):
            n = 1 << k
            batch = 19 if n <= 256 else 3
            tw, x, bias = make(n, batch, 1, 2, dtype, seed=k)
            check_forward(tw, x, bias, False, f"n={n}")
            if path == "tiles":  # the backward has one path
                check_backward(tw, x, False, f"n={n}")


@pytest.mark.parametrize(("isa", "path"), [k for k in KERNELS if k[1] == "tiles"])
def test_backward_recomputed_segments(isa: str, path: str) -> None:
    """A K-matrix too big to keep every second factor's input (> 4 MB per tile): the backward keeps
    one input per segment and recomputes the rest; 3 butterflies make the last segment odd."""
    with forced_cpu_kernel(isa, path):
        tw, x, _ = make(8192, 9, 1, 3, torch.float32, seed=5)
        check_backward(tw, x, False, "n=8192 nbutterflies=3")


@pytest.mark.parametrize(("isa", "path"), KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_orders_bias(isa: str, path: str, dtype: torch.dtype) -> None:
    """Odd batch sizes, several stacks, 1 to 4 butterflies, both stride orders, bias or not."""
    with forced_cpu_kernel(isa, path):
        for n, batch, nstacks, nbutterflies, increasing, with_bias in itertools.product(
            (8, 64), (1, 5, 17, 35), (1, 3), (1, 2, 3, 4), (False, True), (False, True)
        ):
            tw, x, bias = make(n, batch, nstacks, nbutterflies, dtype, seed=batch + n)
            what = f"n={n} batch={batch} nstacks={nstacks} nbutterflies={nbutterflies} increasing={increasing}"
            check_forward(tw, x, bias if with_bias else None, increasing, what)
            if path == "tiles" and with_bias:
                check_backward(tw, x, increasing, what)


@pytest.mark.parametrize(("isa", "path"), KERNELS)
def test_non_contiguous_inputs(isa: str, path: str) -> None:
    """Expanded stacks (stride 0, as KaleidoscopeLinear passes), permuted and strided views."""
    n, batch, nstacks = 32, 21, 3
    tw, _, bias = make(n, batch, nstacks, 2, torch.float32)
    base = torch.randn(batch, n)
    inputs = {
        "expanded": base.unsqueeze(1).expand(batch, nstacks, n),
        "stack-major": torch.randn(nstacks, batch, n).transpose(0, 1),
        "strided last dim": torch.randn(batch, nstacks, 2 * n)[..., ::2],
        "batch slice": torch.randn(2 * batch, nstacks, n)[::2],
    }
    with forced_cpu_kernel(isa, path):
        for name, x in inputs.items():
            check_forward(tw, x, bias, False, name)
            check_backward(tw, x, False, name)
            grad = torch.randn(batch, nstacks, 2 * n)[..., ::2]  # a non-contiguous grad too
            expected = OPS.butterfly_multiply_backward(grad.contiguous(), tw, x.contiguous(), False)
            for got, want in zip(OPS.butterfly_multiply_backward(grad, tw, x, False), expected, strict=True):
                assert_close(got, want, f"{name} with strided grad")


@pytest.mark.parametrize(("isa", "path"), KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threads(isa: str, path: str, dtype: torch.dtype, threads) -> None:
    """Enough rows that both threads get tiles (and twiddle-gradient accumulators)."""
    torch.set_num_threads(2)
    tw, x, bias = make(256, 99, 2, 4, dtype)
    with forced_cpu_kernel(isa, path):
        check_forward(tw, x, bias, False, "2 threads")
        check_backward(tw, x, False, "2 threads")
        single = OPS.butterfly_multiply_backward(torch.ones_like(x), tw, x, False)
        torch.set_num_threads(1)
        for a, b in zip(single, OPS.butterfly_multiply_backward(torch.ones_like(x), tw, x, False), strict=True):
            assert_close(a, b, "1 vs 2 threads")


def test_autograd_through_wrapper() -> None:
    """The default kernel choice through the public wrapper: forward and all three gradients."""
    tw, x, bias = make(128, 37, 2, 2, torch.float64)
    args = [t.clone().requires_grad_() for t in (tw, x, bias)]
    ref = [t.clone().requires_grad_() for t in (tw, x, bias)]
    grad = torch.randn(37, 2, 128, dtype=torch.float64)
    butterfly_multiply(args[0], args[1], False, args[2]).backward(grad)
    (butterfly_multiply_ref(ref[0], ref[1], False) + ref[2]).backward(grad)
    for a, r, name in zip(args, ref, ("twiddle", "input", "bias"), strict=True):
        assert_close(a.grad, r.grad, f"grad {name}")


def test_selection_errors() -> None:
    before = get_cpu_kernel()
    with pytest.raises(ValueError, match="unknown isa"):
        OPS.set_cpu_kernel("sse9", "auto")
    with pytest.raises(ValueError, match="unknown path"):
        OPS.set_cpu_kernel("auto", "sideways")
    assert get_cpu_kernel() == before
    assert "portable" in supported_isas()


@pytest.mark.parametrize(("isa", "path"), KERNELS)
def test_empty_batch(isa: str, path: str) -> None:
    tw, x, bias = make(16, 0, 2, 2, torch.float32)
    with forced_cpu_kernel(isa, path):
        assert OPS.butterfly_multiply(tw, x, bias, False).shape == (0, 2, 16)
        dtw, dx = OPS.butterfly_multiply_backward(torch.zeros_like(x), tw, x, False)
    assert dx.shape == x.shape and dtw.shape == tw.shape and not dtw.any()


def test_forced_kernel_is_restored() -> None:
    before = get_cpu_kernel()
    with forced_cpu_kernel("portable", "small"):
        assert get_cpu_kernel() == ("portable", "small")
    assert get_cpu_kernel() == before


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_dynconv_step_every_isa(isa: str, batch: int, threads) -> None:
    """dynconv_step's AVX2 and portable code (set_cpu_kernel's isa chooses), one task and threaded."""
    from fairseq_kaleidoscope.modules.dynconv_step import dynconv_step_ref

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(batch)
    H, K, C = 4, 7, 64 if batch < 64 else 256  # batch 64 at C=256: enough work for both threads
    cache = torch.zeros(batch, K, C)
    cache_ref = cache.clone()
    with forced_cpu_kernel(isa, "auto"):
        assert get_cpu_kernel()[0] == isa
        for step in range(K + 2):  # before and after the ring buffer wraps
            x, logits = torch.randn(batch, C, generator=g), torch.randn(batch, H, K, generator=g)
            got = OPS.dynconv_step(x, logits, cache, step, True)
            want = dynconv_step_ref(x, logits, cache_ref, step, True)
            assert_close(got, want, f"step {step}")
            assert torch.equal(cache, cache_ref)
