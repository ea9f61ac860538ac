"""KaleidoscopeLinear as a drop-in nn.Linear: shapes, inits, dense form, errors, fallback."""

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from fairseq_kaleidoscope import KaleidoscopeLinear, param_groups
from fairseq_kaleidoscope.kmatrix import HAS_EXTENSION, is_kmatrix_parameter, uses_compiled_kernel
from fairseq_kaleidoscope.kmatrix.cpu_kernel import forced_cpu_kernel
from fairseq_kaleidoscope.kmatrix.ops import check_kmatrix_linear_args
from fairseq_kaleidoscope.kmatrix.reference import kmatrix_linear_ref

SHAPES = [(512, 1024), (1024, 512), (300, 700), (1, 5), (64, 64), (7, 3)]


def test_extension_is_built():
    """CI builds the extension: a silent fallback to the reference would hide a broken build."""
    assert HAS_EXTENSION
    assert uses_compiled_kernel(torch.zeros(1))


@pytest.mark.parametrize("in_f,out_f", SHAPES)
@pytest.mark.parametrize("nblocks", [1, 2])
def test_forward_agrees_with_to_dense(in_f, out_f, nblocks):
    layer = KaleidoscopeLinear(in_f, out_f, nblocks=nblocks, init="randn").double()
    x = torch.randn(2, 3, in_f, dtype=torch.float64)
    w = layer.to_dense()
    assert w.shape == (out_f, in_f)
    y = layer(x)
    assert y.shape == (2, 3, out_f)
    torch.testing.assert_close(y, x @ w.T + layer.bias)
    torch.testing.assert_close(y, nn.functional.linear(x, w, layer.bias))


@pytest.mark.parametrize("in_f,out_f", SHAPES)
def test_gradients_match_dense_equivalent(in_f, out_f):
    layer = KaleidoscopeLinear(in_f, out_f).double()
    x = torch.randn(4, in_f, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (x2 @ layer.to_dense().T.detach() + layer.bias.detach()).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert layer.twiddle.grad is not None and layer.twiddle.grad.abs().sum() > 0
    torch.testing.assert_close(layer.bias.grad, 2 * layer(x).detach().sum(0))


@pytest.mark.parametrize("n,nblocks", [(2, 1), (64, 1), (256, 2), (1024, 1)])
def test_ortho_init_is_orthogonal(n, nblocks):
    w = KaleidoscopeLinear(n, n, nblocks=nblocks, init="ortho", dtype=torch.float64).to_dense()
    torch.testing.assert_close(w @ w.T, torch.eye(n, dtype=torch.float64))


def test_ortho_init_is_random_with_both_determinants():
    layers = [KaleidoscopeLinear(2, 2, init="ortho", dtype=torch.float64) for _ in range(40)]
    dets = {round(torch.linalg.det(layer.to_dense()).item()) for layer in layers}
    assert dets == {-1, 1}


def test_identity_init():
    torch.testing.assert_close(KaleidoscopeLinear(16, 16, init="identity").to_dense(), torch.eye(16))
    w = KaleidoscopeLinear(3, 10, init="identity").to_dense()  # n=4, three stacked identities, 10 rows kept
    torch.testing.assert_close(w, torch.eye(4).repeat(3, 1)[:10, :3])


@pytest.mark.parametrize("in_f,out_f", [(512, 512), (300, 700), (1024, 256)])
def test_randn_init_matches_linear_output_variance(in_f, out_f):
    torch.manual_seed(0)
    x = torch.randn(256, in_f)
    with torch.no_grad():
        dense = torch.stack([nn.Linear(in_f, out_f, bias=False)(x).var() for _ in range(8)]).mean()
        kmat = torch.stack([KaleidoscopeLinear(in_f, out_f, bias=False, init="randn")(x).var() for _ in range(8)])
    assert abs(dense.item() - 1 / 3) < 0.02
    # every draw, not just the average, has nn.Linear's output scale
    assert ((kmat / dense - 1).abs() < 0.3).all(), kmat
    assert abs(kmat.mean() / dense - 1) < 0.1, kmat


def test_bias_init_like_linear():
    layer = KaleidoscopeLinear(100, 300)
    assert layer.bias.shape == (300,)
    assert layer.bias.abs().max() <= 0.1
    assert layer.bias.std() > 0.03


def test_parameter_count_is_n_log_n():
    layer = KaleidoscopeLinear(1024, 1024, bias=False)
    count = sum(p.numel() for p in layer.parameters())
    assert count == 4 * 1024 * 10
    assert count < 0.05 * 1024 * 1024
    assert sum(p.numel() for p in KaleidoscopeLinear(300, 700, nblocks=2).parameters()) == 2 * 4 * 512 * 9 * 2 + 700


def test_empty_batch_and_leading_dims():
    layer = KaleidoscopeLinear(10, 20)
    x = torch.randn(0, 4, 10, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 4, 20)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert layer(torch.randn(10)).shape == (20,)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_inputs_propagate_like_linear(bad):
    layer = KaleidoscopeLinear(16, 16, init="randn")
    dense = nn.Linear(16, 16)
    x = torch.randn(3, 16)
    x[1, 5] = bad
    y, yd = layer(x), dense(x)
    assert torch.equal(torch.isfinite(y), torch.isfinite(yd))
    assert torch.isfinite(y[[0, 2]]).all() and not torch.isfinite(y[1]).any()


def test_bad_inputs_raise_clear_errors():
    layer = KaleidoscopeLinear(16, 8)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 16\), got \(3, 15\)"):
        layer(torch.randn(3, 15))
    with pytest.raises(TypeError, match=r"input dtype Double differs from the twiddle's \(the layer's\) Float"):
        layer(torch.randn(3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="input is on meta"):
        layer(torch.randn(3, 16, device="meta"))
    with pytest.raises(ValueError, match="unknown K-matrix init 'bogus'"):
        KaleidoscopeLinear(16, 8, init="bogus")
    with pytest.raises(ValueError, match="nblocks must be >= 1"):
        KaleidoscopeLinear(16, 8, nblocks=0)
    with pytest.raises(ValueError, match="in_features and out_features must be >= 1"):
        KaleidoscopeLinear(0, 8)
    with pytest.raises(TypeError, match=r"in_features must be an int, got float 16\.0"):
        KaleidoscopeLinear(16.0, 8)
    with pytest.raises(TypeError, match="out_features must be an int, got bool"):
        KaleidoscopeLinear(16, True)
    with pytest.raises(TypeError, match="nblocks must be an int, got str"):
        KaleidoscopeLinear(16, 8, nblocks="2")


def test_param_groups_leave_twiddles_out_of_weight_decay():
    model = nn.Sequential(KaleidoscopeLinear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    groups = param_groups(model, weight_decay=0.1, lr=1e-3, kmatrix_lr_scale=2.0)
    dense, kmat = groups
    assert dense["weight_decay"] == 0.1 and "lr" not in dense
    assert kmat["weight_decay"] == 0.0 and kmat["lr"] == pytest.approx(2e-3)
    assert [p.shape for p in kmat["params"]] == [model[0].twiddle.shape]
    assert all(not is_kmatrix_parameter(p) for p in dense["params"]) and len(dense["params"]) == 3
    # the tag survives the copies fairseq and users make (EMA, cloning, pickling), its lr_scale too
    model[0].twiddle.lr_scale = 5.0
    for copied in (copy.deepcopy(model), copy.deepcopy(model).double(), pickle.loads(pickle.dumps(model))):
        assert is_kmatrix_parameter(copied[0].twiddle) and copied[0].twiddle.lr_scale == 5.0
    (kmat_own,) = param_groups(model, weight_decay=0.1, lr=1e-3)[1:]
    assert kmat_own["lr"] == pytest.approx(5e-3) and kmat_own["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups, lr=1e-3)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()


def test_torch_compile_traces_the_op():
    model = nn.Sequential(KaleidoscopeLinear(32, 64), nn.GELU(), KaleidoscopeLinear(64, 20))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(5, 32, requires_grad=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert x.grad is not None


def test_fallback_without_extension_warns_once_and_works():
    code = (
        "import sys, warnings\n"
        "sys.modules['fairseq_kaleidoscope._C'] = None  # makes the import fail\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, fairseq_kaleidoscope as fk\n"
        "    layer = fk.KaleidoscopeLinear(12, 20)\n"
        "    x = torch.randn(3, 12)\n"
        "    y = layer(x); y.sum().backward(); layer(x)\n"
        "msgs = [str(m.message) for m in w if 'compiled extension' in str(m.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert not fk.kmatrix.HAS_EXTENSION\n"
        "torch.testing.assert_close(y, x @ layer.to_dense().T + layer.bias)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("in_f,out_f", [(64, 64), (64, 128), (64, 100), (60, 64), (64, 12), (60, 200)])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_path_equals_autograd_path(in_f, out_f, mode):
    """Decoding (no autograd) takes a shorter path; it must compute the same thing."""
    layer = KaleidoscopeLinear(in_f, out_f, init="randn")
    x = torch.randn(3, 5, in_f)
    want = layer(x)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        got = layer(x)
        assert layer(torch.randn(0, in_f)).shape == (0, out_f)
        with pytest.raises(ValueError, match="expected input of shape"):
            layer(torch.randn(3, in_f + 1))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not got.requires_grad


needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not built")


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_f,out_f", [(64, 64), (64, 128), (64, 100), (60, 64), (64, 12), (60, 200), (1, 1)])
def test_kmatrix_linear_op_equals_the_reference(in_f: int, out_f: int, bias: bool, dtype: torch.dtype) -> None:
    """The layer's one op, with and without autograd, against the plain-PyTorch reference."""
    layer = KaleidoscopeLinear(in_f, out_f, bias=bias, nblocks=2, init="randn").to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for shape in [(3, 5, in_f), (in_f,), (0, in_f)]:
        x = torch.randn(*shape, dtype=dtype)
        want = kmatrix_linear_ref(x, layer.twiddle, layer.bias, out_f)
        with torch.no_grad():
            got = torch.ops.kaleidoscope.kmatrix_linear(x, layer.twiddle, layer.bias, out_f)
        assert got.shape == want.shape and not got.requires_grad
        torch.testing.assert_close(got, want.detach(), **tol)
        torch.testing.assert_close(layer(x), want, **tol)


@needs_extension
@pytest.mark.parametrize("path", ["auto", "tiles", "small"])
@pytest.mark.parametrize("in_f,out_f,bias", [(64, 64, True), (64, 128, True), (64, 100, True), (60, 64, False),
                                             (64, 12, True), (60, 200, True), (32, 32, False)])
def test_kmatrix_linear_cpu_kernel_equals_the_reference(in_f: int, out_f: int, bias: bool, path: str) -> None:
    """Below autograd on CPU the op has a kernel of its own (the composite's pad, stack broadcast,
    bias and narrow folded into the butterfly kernel's arguments): every row count (tiles and the
    small path), strided rows and leading dimensions, against the reference; bitwise equal to the
    composite path that training takes."""
    layer = KaleidoscopeLinear(in_f, out_f, bias=bias, nblocks=2, init="randn")
    wide = torch.randn(40, 2 * in_f)
    inputs = [torch.randn(1, in_f), torch.randn(3, in_f), torch.randn(17, in_f), wide[:, ::2], wide[:, :in_f],
              torch.randn(in_f, 9).t(), torch.randn(2, 7, in_f).transpose(0, 1)]
    with forced_cpu_kernel(path=path):
        for x in inputs:
            want = kmatrix_linear_ref(x, layer.twiddle, layer.bias, out_f).detach()
            trained = layer(x.requires_grad_(False)).detach()  # grad mode, twiddle requires grad: the composite
            with torch.inference_mode():
                got = torch.ops.kaleidoscope.kmatrix_linear(x, layer.twiddle, layer.bias, out_f)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert torch.equal(got, trained)


@needs_extension
@pytest.mark.parametrize("in_f,out_f", [(8, 8), (6, 20), (8, 3)])
def test_kmatrix_linear_op_gradients(in_f: int, out_f: int) -> None:
    """Training goes through the same op: gradients flow through butterfly_multiply's formula."""
    layer = KaleidoscopeLinear(in_f, out_f, init="randn", dtype=torch.float64)
    x = torch.randn(2, 3, in_f, dtype=torch.float64, requires_grad=True)
    args = (x, layer.twiddle, layer.bias)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.kaleidoscope.kmatrix_linear(*a, out_f), args)


@needs_extension
def test_kmatrix_linear_op_bad_arguments_raise_typed_errors() -> None:
    layer = KaleidoscopeLinear(16, 24)
    x = torch.randn(2, 16)
    op = torch.ops.kaleidoscope.kmatrix_linear
    with pytest.raises(ValueError, match="input has 17 features, the K-matrix size is n = 16"):
        op(torch.randn(2, 17), layer.twiddle, layer.bias, 24)
    with pytest.raises(ValueError, match="out_features = 40"):
        op(x, layer.twiddle, None, 40)
    with pytest.raises(ValueError, match=r"bias must have shape \(24\)"):
        op(x, layer.twiddle, torch.zeros(23), 24)
    with pytest.raises(TypeError, match=r"input dtype Double differs from the twiddle's \(the layer's\) Float"):
        op(x.double(), layer.twiddle, layer.bias, 24)
    with pytest.raises(TypeError, match=r"input dtype Double differs"):
        layer(x.double())
    with pytest.raises(ValueError, match="is on meta"):
        op(x, layer.twiddle.to("meta"), None, 24)  # dispatched to the fake kernel, which checks too
    with torch.inference_mode():  # the CPU kernel reads the bias as the input's dtype: it must be
        for b in (layer.bias.double(), torch.zeros(24, dtype=torch.float64)):
            with pytest.raises(TypeError, match="kmatrix_linear: bias dtype Double differs from the input's Float"):
                op(x, layer.twiddle, b, 24)
        with pytest.raises(ValueError, match="kmatrix_linear: bias is on meta but the input is on cpu"):
            op(x, layer.twiddle, layer.bias.to("meta"), 24)
    with pytest.raises(TypeError, match=r"kmatrix_linear: bias dtype torch\.float64 differs"):
        check_kmatrix_linear_args(x, layer.twiddle, layer.bias.double(), 24)  # the fake kernel's mirror


def test_reference_fallback_warns_once_per_device_and_dtype():
    """bf16/fp16 on the CPU have no compiled kernel: say so (once per device and dtype), don't just be slow."""
    import warnings

    from fairseq_kaleidoscope.kmatrix import ops

    ops._warn_reference_fallback.cache_clear()
    layer = KaleidoscopeLinear(64, 64)
    x = torch.randn(2, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)  # float32: compiled, no warning
        for dtype in (torch.bfloat16, torch.bfloat16, torch.float16, torch.float16):
            y = layer.to(dtype)(x.to(dtype))
            torch.testing.assert_close(y.float(), layer.float()(x), rtol=0.05, atol=0.05)
    msgs = [str(w.message) for w in caught if "no compiled K-matrix kernel" in str(w.message)]
    assert len(msgs) == 2, msgs
    assert "torch.bfloat16 on cpu" in msgs[0] and "torch.float16 on cpu" in msgs[1]
    assert "the cpu kernels cover torch.float32, torch.float64" in msgs[0]
