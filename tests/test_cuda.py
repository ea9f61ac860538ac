"""The CUDA butterfly kernels against the plain-PyTorch reference: forward, gradients, dtypes,
layouts, opcheck, torch.compile. Skipped on machines without a CUDA GPU.

The reference runs in float64 on the same (low-precision-rounded) inputs, so the tolerances
measure the kernels' own error: float32 arithmetic plus one rounding of each output to its dtype.
For float16 and bfloat16 that is one output ulp: rounding to nearest is off by at most half an
ulp, and ulp(y) <= 2^-10 |y| (float16, 11 significant bits) or 2^-7 |y| (bfloat16, 8 bits), so
rtol is one ulp (2x margin); atol = 2^-14 covers the float32 arithmetic (about 1e-6 over up to ~80
factors on O(1) values, measured in tests/cuda_sim) and float16's subnormals. A kernel that
rounded to the half type after every factor is off by several ulps and fails (the CPU simulation
of these kernels, tests/test_cuda_sim.py, shows both).
"""

import copy
import itertools
import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU: the CUDA kernels cannot run here", allow_module_level=True)

from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear, butterfly_multiply, butterfly_multiply_ref
from fairseq_kaleidoscope.kmatrix.init import init_twiddle_
from fairseq_kaleidoscope.kmatrix.ops import CUDA_MAX_N, HAS_CUDA_KERNELS, uses_compiled_kernel

CUDA = torch.device("cuda")
NS = [2**k for k in range(1, 13)]  # 2 .. 4096
BATCHES = [0, 1, 3, 64, 1000]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {
    torch.float32: {"rtol": 2e-4, "atol": 2e-4},
    torch.float16: {"rtol": 2**-10, "atol": 2**-14},
    torch.bfloat16: {"rtol": 2**-7, "atol": 2**-14},
}


def make_args(n, batch, nbutterflies, nstacks=1, dtype=torch.float32, bias=True, seed=0):
    """Near-orthogonal twiddles (values stay O(1) through many factors) and random input, on the GPU."""
    g = torch.Generator().manual_seed(seed)
    log_n = n.bit_length() - 1
    tw = init_twiddle_(torch.empty(nstacks, nbutterflies, log_n, n // 2, 2, 2), "ortho", n)
    tw = tw + 0.1 * torch.randn(tw.shape, generator=g)
    x = torch.randn(batch, nstacks, n, generator=g)
    b = torch.randn(nstacks, n, generator=g) if bias else None
    return tuple(t if t is None else t.to(CUDA, dtype) for t in (tw, x, b))


def scaled(tol, scale):
    return {k: v * scale for k, v in tol.items()}


def compare(tw, x, b, increasing):
    """Kernel (through the autograd wrapper) vs the float64 reference: output and all gradients."""
    assert uses_compiled_kernel(x)
    tol = TOL[x.dtype]
    leaves = [t.clone().requires_grad_() for t in (tw, x) + ((b,) if b is not None else ())]
    leaves_ref = [t.detach().double().requires_grad_() for t in leaves]
    out = butterfly_multiply(leaves[0], leaves[1], increasing, leaves[2] if b is not None else None)
    ref = butterfly_multiply_ref(leaves_ref[0], leaves_ref[1], increasing)
    if b is not None:
        ref = ref + leaves_ref[2]
    assert out.dtype == x.dtype and out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, **tol)
    grad = torch.randn(out.shape, device=CUDA).to(x.dtype)
    out.backward(grad)
    ref.backward(grad.double())
    batch_scale = math.sqrt(max(1, x.shape[0]))  # twiddle and bias grads sum over the batch
    for got, want, name in zip(leaves, leaves_ref, ["twiddle", "input", "bias"], strict=False):
        assert got.grad.dtype == got.dtype
        if name == "input":
            t = tol
        elif x.dtype == torch.float32:
            t = scaled(tol, batch_scale)
        else:  # a float32 sum over the batch, rounded once: one ulp, plus the sum's float32 error
            t = {"rtol": tol["rtol"], "atol": tol["atol"] * batch_scale}
        torch.testing.assert_close(got.grad.double(), want.grad, **t, msg=lambda m, name=name: f"grad {name}: {m}")


def test_cuda_kernels_are_built():
    """A GPU machine must build the CUDA kernels: a silent fallback would hide a broken build."""
    assert HAS_CUDA_KERNELS
    for dtype in DTYPES:
        assert uses_compiled_kernel(torch.zeros(1, 1, 8, device=CUDA, dtype=dtype))
    assert not uses_compiled_kernel(torch.zeros(1, 1, 8, device=CUDA, dtype=torch.float64))
    assert not uses_compiled_kernel(torch.zeros(1, 1, 2 * CUDA_MAX_N, device=CUDA))


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("increasing", [False, True])
def test_matches_reference_grid_float32(n, batch, increasing):
    compare(*make_args(n, batch, nbutterflies=2), increasing)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [2, 8, 32, 256, 1024, 4096])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("increasing", [False, True])
def test_matches_reference_half_precision(dtype, n, batch, increasing):
    compare(*make_args(n, batch, nbutterflies=2, nstacks=2, dtype=dtype), increasing)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nblocks,n,increasing", list(itertools.product([1, 2, 3], [2, 16, 512, 4096], [False, True])))
def test_matches_reference_nblocks(dtype, nblocks, n, increasing):
    compare(*make_args(n, 3, nbutterflies=2 * nblocks, nstacks=2, dtype=dtype), increasing)


@pytest.mark.parametrize("nbutterflies", [1, 2, 5])
@pytest.mark.parametrize("n", [2, 8, 128, 1024])
def test_odd_butterfly_counts(nbutterflies, n):
    compare(*make_args(n, 5, nbutterflies, nstacks=3, bias=n > 8), n % 16 == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_largest_n(dtype):
    compare(*make_args(CUDA_MAX_N, 5, 2, dtype=dtype), False)


@pytest.mark.parametrize("n,batch", [(64, 20000), (4096, 300)])
def test_many_tiles_per_block(n, batch):
    """Batches larger than one pass of the grid: blocks loop over tiles and reuse their buffers."""
    compare(*make_args(n, batch, 2), False)


def test_larger_n_falls_back_to_reference():
    tw, x, b = make_args(2 * CUDA_MAX_N, 2, 1)
    assert not uses_compiled_kernel(x)
    torch.testing.assert_close(butterfly_multiply(tw, x, True, b), butterfly_multiply_ref(tw, x, True) + b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous_and_expanded_input(dtype):
    tw, _, b = make_args(64, 9, 2, nstacks=3, dtype=dtype)
    base = torch.randn(64, 9 * 2, device=CUDA).to(dtype)  # transposed and strided view of (9, 64)
    x_nc = base.t()[::2].unsqueeze(1).expand(9, 3, 64)
    assert not x_nc.is_contiguous()
    compare(tw, x_nc, b, False)


def test_misaligned_twiddle_storage():
    """A twiddle view at an odd storage offset is copied to aligned memory, not misread."""
    tw, x, b = make_args(32, 4, 2)
    storage = torch.empty(tw.numel() + 1, device=CUDA)
    tw_view = storage[1:].view(tw.shape)
    tw_view.copy_(tw)
    assert tw_view.data_ptr() % 16 != 0
    torch.testing.assert_close(butterfly_multiply(tw_view, x, False, b), butterfly_multiply(tw, x, False, b))
    grad = torch.randn_like(x)
    backward = torch.ops.kaleidoscope.butterfly_multiply_backward
    torch.testing.assert_close(backward(grad, tw_view, x, False), backward(grad, tw, x, False))


def test_side_stream():
    tw, x, b = make_args(256, 33, 2)
    expected = butterfly_multiply(tw, x, False, b)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = butterfly_multiply(tw, x, False, b)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    tw, x, b = make_args(128, 7, 2)
    dev1 = torch.device("cuda", 1)
    out = butterfly_multiply(tw.to(dev1), x.to(dev1), False, b.to(dev1))
    assert out.device == dev1
    torch.testing.assert_close(out.to(CUDA), butterfly_multiply(tw, x, False, b))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(bias, dtype):
    tw, x, b = make_args(16, 4, 2, nstacks=2, dtype=dtype, bias=bias)
    tw.requires_grad_()
    x.requires_grad_()
    atol, rtol = TOL[dtype]["atol"], TOL[dtype]["rtol"]
    torch.library.opcheck(torch.ops.kaleidoscope.butterfly_multiply.default, (tw, x, b, False), atol=atol, rtol=rtol)
    grad = torch.randn(x.shape, device=CUDA).to(dtype)
    torch.library.opcheck(
        torch.ops.kaleidoscope.butterfly_multiply_backward.default,
        (grad, tw.detach(), x.detach(), True),
        atol=atol,
        rtol=rtol,
    )


def test_compiled_op_rejects_unsupported_dtype_clearly():
    tw, x, _ = make_args(16, 2, 2)
    with pytest.raises(TypeError, match="not supported"):
        torch.ops.kaleidoscope.butterfly_multiply(tw.double(), x.double(), None, False)
    with pytest.raises(ValueError, match="is on"):
        torch.ops.kaleidoscope.butterfly_multiply(tw.cpu(), x, None, False)


def test_batch_zero_backward_gives_zero_twiddle_grad():
    tw, x, _ = make_args(16, 0, 2)
    grad_tw, grad_x = torch.ops.kaleidoscope.butterfly_multiply_backward(torch.empty_like(x), tw, x, False)
    assert grad_x.shape == x.shape
    assert torch.equal(grad_tw, torch.zeros_like(tw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_matches_dense_equivalent(dtype):
    layer = KaleidoscopeLinear(300, 700, nblocks=2).to(CUDA, dtype)
    exact = copy.deepcopy(layer).double()  # the same (rounded) parameters, float64 reference path
    x = torch.randn(5, 300, device=CUDA).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    tol = dict(TOL[dtype])
    if dtype != torch.float32:  # 700 of 1024 rows: the bias is added after the product's rounding
        wx = x.double() @ exact.to_dense().T
        tol["atol"] += tol["rtol"] * wx.abs().max().item()
    torch.testing.assert_close(y.double(), exact(x.double()), **tol)
    torch.testing.assert_close(y.double(), x.double() @ exact.to_dense().T + exact.bias, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_fallback_on_cuda_warns(dtype):
    """float64 (no CUDA kernel) and n > CUDA_MAX_N run the reference, with a warning, not silently."""
    import warnings

    from fairseq_kaleidoscope.kmatrix import ops

    ops._warn_reference_fallback.cache_clear()
    in_f = 16 if dtype == torch.float64 else CUDA_MAX_N + 1
    layer = KaleidoscopeLinear(in_f, 8).to(CUDA, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(torch.randn(2, in_f, device=CUDA, dtype=dtype))
        layer(torch.randn(2, in_f, device=CUDA, dtype=dtype))
    msgs = [str(w.message) for w in caught if "no compiled K-matrix kernel" in str(w.message)]
    assert len(msgs) == 1 and f"{dtype} on cuda" in msgs[0], msgs


def test_torch_compile_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        KaleidoscopeLinear(96, 128), torch.nn.GELU(), KaleidoscopeLinear(128, 64, nblocks=2), torch.nn.LayerNorm(64)
    ).to(CUDA)
    x = torch.randn(16, 96, device=CUDA, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    out_c = compiled(x)
    out_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    out = model(x)
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters()] + [x.grad]
    torch.testing.assert_close(out_c, out, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
