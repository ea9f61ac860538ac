"""The reference itself against an independent, loop-by-loop dense construction."""

import numpy as np
import pytest
import torch

from fairseq_kaleidoscope.kmatrix import butterfly_multiply_ref


def dense_factor(tw: np.ndarray, n: int, stride: int) -> np.ndarray:
    """The n×n matrix of one factor, written straight from the definition."""
    m = np.zeros((n, n), dtype=tw.dtype)
    p = 0
    for i in range(n):
        if i % (2 * stride) < stride:
            (a, b), (c, d) = tw[p]
            j = i + stride
            m[i, i], m[i, j], m[j, i], m[j, j] = a, b, c, d
            p += 1
    return m


def dense_kmatrix(tw: np.ndarray, increasing: bool) -> np.ndarray:
    """tw: (nbutterflies, log n, n/2, 2, 2) -> the matrix M with y = M x."""
    nbutterflies, log_n = tw.shape[:2]
    n = 2**log_n
    m = np.eye(n, dtype=tw.dtype)
    for b in range(nbutterflies):
        inc = increasing != (b % 2 == 1)
        for k in range(log_n) if inc else reversed(range(log_n)):
            m = dense_factor(tw[b, k], n, 2**k) @ m
    return m


@pytest.mark.parametrize("n", [2, 4, 8, 32])
@pytest.mark.parametrize("nbutterflies", [1, 2, 3])
@pytest.mark.parametrize("increasing", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_reference_matches_dense_definition(n, nbutterflies, increasing, dtype):
    log_n = n.bit_length() - 1
    tw = torch.randn(2, nbutterflies, log_n, n // 2, 2, 2, dtype=dtype)
    x = torch.randn(5, 2, n, dtype=dtype)
    out = butterfly_multiply_ref(tw, x, increasing)
    for s in range(2):
        want = x[:, s].numpy() @ dense_kmatrix(tw[s].numpy(), increasing).T
        np.testing.assert_allclose(out[:, s].numpy(), want, rtol=1e-12, atol=1e-12)


def test_block_is_butterfly_times_transposed_butterfly():
    """With increasing_stride=False, butterflies (0, 1) form B Bᵀ: B₂ᵀ is B₁ transposed factor-wise."""
    n, log_n = 16, 4
    tw1 = torch.randn(log_n, n // 2, 2, 2, dtype=torch.float64)
    tw = torch.stack([tw1.transpose(-1, -2), tw1])[None]  # (1, 2, log n, n/2, 2, 2)
    b = dense_kmatrix(tw1[None].numpy(), increasing=True)
    m = butterfly_multiply_ref(tw, torch.eye(n, dtype=torch.float64)[:, None], False)[:, 0].T.numpy()
    np.testing.assert_allclose(m, b @ b.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float64])
@pytest.mark.parametrize("increasing", [False, True])
def test_one_input_stack_is_broadcast_over_the_twiddle_stacks(dtype, increasing):
    """What fit's population relies on: x (batch, 1, n) is x expanded to every stack, gradients too."""
    tw = torch.randn(3, 4, 4, 8, 2, 2, dtype=dtype, requires_grad=True)
    x1 = torch.randn(5, 1, 16, dtype=dtype, requires_grad=True)
    out = butterfly_multiply_ref(tw, x1, increasing)
    want = butterfly_multiply_ref(tw, x1.expand(-1, 3, -1), increasing)
    assert out.shape == (5, 3, 16)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (tw, x1), g), torch.autograd.grad(want, (tw, x1), g), strict=True):
        torch.testing.assert_close(a, b)
