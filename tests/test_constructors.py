"""Exact K-matrix constructors against numpy / scipy / torch.fft."""

import numpy as np
import pytest
import scipy.linalg
import torch

from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear
from fairseq_kaleidoscope.kmatrix.constructors import (
    bit_reversal_permutation,
    kaleidoscope_bit_reversal,
    kaleidoscope_dft,
    kaleidoscope_hadamard,
    kaleidoscope_identity,
    kaleidoscope_permutation,
)

SIZES = [2, 4, 8, 16, 32, 64, 256]
TOL = {torch.float64: 1e-12, torch.complex128: 1e-12, torch.float32: 1e-5, torch.complex64: 1e-5}


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    """Max error relative to the largest entry of b."""
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
    assert err < TOL[dtype], err


def test_bit_reversal_permutation_values() -> None:
    assert bit_reversal_permutation(2).tolist() == [0, 1]
    assert bit_reversal_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    p = bit_reversal_permutation(64)
    assert torch.equal(p[p], torch.arange(64))  # an involution


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
def test_dft_matches_torch_fft(n: int, inverse: bool, norm: str) -> None:
    torch.manual_seed(n)
    for dtype in (torch.complex128, torch.complex64):
        layer = kaleidoscope_dft(n, inverse=inverse, norm=norm, dtype=dtype)
        assert isinstance(layer, KaleidoscopeLinear) and layer.bias is None and layer.nblocks == 1
        x = torch.randn(3, n, dtype=dtype)
        ref = (torch.fft.ifft if inverse else torch.fft.fft)(x.to(torch.complex128), norm=norm)
        close(layer(x).detach().to(torch.complex128), ref, dtype)


@pytest.mark.parametrize("n", [4, 16, 128])
def test_dft_dense_matches_scipy(n: int) -> None:
    layer = kaleidoscope_dft(n, dtype=torch.complex128)
    close(layer.to_dense().detach(), torch.from_numpy(scipy.linalg.dft(n)), torch.complex128)
    inv = kaleidoscope_dft(n, inverse=True, norm="ortho", dtype=torch.complex128).to_dense().detach()
    close(inv @ kaleidoscope_dft(n, norm="ortho", dtype=torch.complex128).to_dense().detach(),
          torch.eye(n, dtype=torch.complex128), torch.complex128)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128])
@pytest.mark.parametrize("normalized", [True, False])
def test_hadamard_matches_scipy(n: int, dtype: torch.dtype, normalized: bool) -> None:
    h = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    if normalized:
        h = h / np.sqrt(n)
    layer = kaleidoscope_hadamard(n, normalized=normalized, dtype=dtype)
    x = torch.randn(5, n, dtype=torch.float64)
    close(layer(x.to(dtype)).detach().to(torch.complex128), (x @ h.t()).to(torch.complex128), dtype)
    close(layer.to_dense().detach().to(torch.complex128), h.to(torch.complex128), dtype)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_permutation_is_exact(n: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(n)
    for _ in range(3):
        perm = torch.randperm(n, generator=g)
        layer = kaleidoscope_permutation(perm, dtype=dtype)
        x = torch.randn(4, n).to(dtype)
        assert torch.equal(layer(x).detach(), x[:, perm])
    assert torch.equal(kaleidoscope_permutation(perm.tolist(), dtype=dtype)(x).detach(), x[:, perm])


@pytest.mark.parametrize("n", SIZES)
def test_bit_reversal_and_identity_layers(n: int) -> None:
    x = torch.randn(2, n, dtype=torch.float64)
    assert torch.equal(kaleidoscope_bit_reversal(n, dtype=torch.float64)(x).detach(), x[:, bit_reversal_permutation(n)])
    assert torch.equal(kaleidoscope_identity(n, dtype=torch.float64)(x).detach(), x)


def test_constructed_layers_stay_trainable() -> None:
    layer = kaleidoscope_dft(16, dtype=torch.complex64)
    assert layer.twiddle.requires_grad
    layer(torch.randn(2, 16, dtype=torch.complex64)).abs().sum().backward()
    assert layer.twiddle.grad is not None and torch.isfinite(layer.twiddle.grad.abs()).all()


@pytest.mark.parametrize("bad", [0, 1, 3, 6, 12, 100])
def test_non_power_of_two_sizes_are_refused(bad: int) -> None:
    for make in (kaleidoscope_identity, kaleidoscope_hadamard, kaleidoscope_dft, bit_reversal_permutation):
        with pytest.raises(ValueError, match="power of two"):
            make(bad)


@pytest.mark.parametrize(
    "perm, message",
    [
        ([0, 0, 1, 2], "not a permutation"),
        ([0, 1, 2, 4], "not a permutation"),
        ([1, 0, 2], "power of two"),
        ([[0, 1], [1, 0]], "1-D"),
        ([0.0, 1.0], "integers"),
    ],
)
def test_bad_permutations_are_refused(perm: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kaleidoscope_permutation(perm)


def test_bad_dtypes_and_norms_are_refused() -> None:
    with pytest.raises(TypeError, match="dtype"):
        kaleidoscope_dft(8, dtype=torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        kaleidoscope_hadamard(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="norm"):
        kaleidoscope_dft(8, norm="unitary")
