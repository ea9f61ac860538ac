"""kmatrix.fit on small sizes: known fast transforms are learned, a random dense matrix is not."""

import math

import pytest
import scipy.linalg
import torch

from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear
from fairseq_kaleidoscope.kmatrix.constructors import bit_reversal_permutation
from fairseq_kaleidoscope.kmatrix.fit import FitResult, default_probes, fit


def hadamard(n: int) -> torch.Tensor:
    return torch.from_numpy(scipy.linalg.hadamard(n)).double() / math.sqrt(n)


def dft(n: int) -> torch.Tensor:
    return torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0, norm="ortho")


def dense_rmse(layer: KaleidoscopeLinear, target: torch.Tensor) -> float:
    d = layer.to_dense().detach().to(target.dtype) - target
    return d.abs().pow(2).mean().sqrt().item()


@pytest.mark.parametrize("n", [8, 16])
def test_hadamard_is_learned_with_real_twiddles(n: int) -> None:
    res = fit(hadamard(n), restarts=4, max_steps=1500, target_rmse=1e-5, seed=0)
    assert isinstance(res, FitResult) and res.reached and res.stop_reason == "target"
    assert res.rmse <= 1e-5 and res.restarts == 4 and res.steps > 0 and res.seconds > 0
    assert res.layer.twiddle.dtype == torch.float64 and res.layer.bias is None
    assert dense_rmse(res.layer, hadamard(n)) <= 1e-5


def test_dft_is_learned_as_one_kmatrix_block() -> None:
    res = fit(dft(8), restarts=4, max_steps=1500, target_rmse=1e-5, seed=0)
    assert res.reached and res.layer.nblocks == 1 and res.layer.twiddle.dtype == torch.complex128
    assert dense_rmse(res.layer, dft(8)) <= 1e-5
    x = torch.randn(3, 8, dtype=torch.complex128)
    assert torch.allclose(res.layer(x), torch.fft.fft(x, norm="ortho"), atol=1e-4)


def test_dft_with_fixed_bit_reversal_is_the_bp_model() -> None:
    res = fit(dft(16), restarts=2, max_steps=1500, target_rmse=1e-5, seed=0, permutation=bit_reversal_permutation(16))
    assert res.reached and res.layer.nblocks == 2  # the exact permutation block + the learned block
    assert dense_rmse(res.layer, dft(16)) <= 1e-5


def test_random_permutation_is_learned() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.eye(8, dtype=torch.float64)[torch.randperm(8, generator=g)]
    res = fit(target, restarts=8, max_steps=1500, target_rmse=1e-5, seed=0)
    assert res.reached and dense_rmse(res.layer, target) <= 1e-5


def test_random_dense_matrix_is_not_fit_exactly() -> None:
    # One B Bᵀ block has far fewer degrees of freedom than the n² = 1024 entries.
    g = torch.Generator().manual_seed(0)
    target = torch.randn(32, 32, generator=g, dtype=torch.float64) / math.sqrt(32)
    res = fit(target, restarts=2, max_steps=300, seed=0, polish_steps=20)
    assert not res.reached and res.stop_reason != "target"
    assert res.rmse > 1e-2 and abs(dense_rmse(res.layer, target) - res.rmse) < 1e-9
    assert res.rmse < 1 / math.sqrt(32)  # but it did learn something (zero matrix: ~0.18)


def test_black_box_callable_and_pairs() -> None:
    h = hadamard(8)
    res = fit(lambda x: x @ h.t(), in_features=8, restarts=4, max_steps=1500, target_rmse=1e-5, seed=0)
    assert res.reached and dense_rmse(res.layer, h) <= 1e-5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    res = fit((x, x @ h.t()), restarts=4, max_steps=1500, target_rmse=1e-5, seed=0)
    assert res.reached and (res.layer(x) - x @ h.t()).abs().pow(2).mean().sqrt() <= 1e-5
    assert dense_rmse(res.layer, h) <= 1e-4


def test_stopping_rules() -> None:
    h = hadamard(16)
    res = fit(h, restarts=1, max_steps=5, polish_steps=0)
    assert res.stop_reason == "max_steps" and res.steps == 5 and not res.reached
    res = fit(h, restarts=2, max_steps=10_000, time_budget=0.0, polish_steps=0)
    assert res.stop_reason == "time_budget" and res.steps < 10
    res = fit(torch.randn(16, 16, dtype=torch.float64), restarts=1, max_steps=10_000, patience=30, polish_steps=0)
    assert res.stop_reason == "patience" and res.steps < 10_000
    assert [s for s, _, _ in res.history] == sorted(s for s, _, _ in res.history)


def test_default_probes_follow_the_documented_rule() -> None:
    # 32 probes to start, whatever the size; doubled at each plateau (when lr is halved), at most in_features.
    assert default_probes() == 32
    g = torch.Generator().manual_seed(0)
    target = torch.randn(64, 64, generator=g, dtype=torch.float64) / 8  # not learnable: plateaus for sure
    assert fit(target, restarts=1, max_steps=3, polish_steps=0).probes == default_probes()
    res = fit(target, restarts=1, max_steps=10_000, patience=30, polish_steps=0)  # lr halved every 10 stalled steps
    assert res.stop_reason == "patience" and res.probes == 64  # 32 -> 64, capped at in_features
    res = fit(target, restarts=1, max_steps=10_000, patience=30, polish_steps=0, probes=16)
    assert res.stop_reason == "patience" and res.probes == 16  # an explicit count is kept
    assert fit(target, restarts=1, max_steps=3, polish_steps=0, probes=0).probes == 0  # the whole basis
    x = torch.randn(16, 64, generator=g, dtype=torch.float64)
    assert fit((x, x @ target.t()), restarts=1, max_steps=3, polish_steps=0).probes == 0  # pairs: no probes
    with pytest.raises(ValueError, match="probes"):
        fit(target, probes=-1)


def test_rectangular_target_and_float32() -> None:
    target = torch.randn(6, 5)
    res = fit(target, restarts=2, max_steps=20, polish_steps=0)
    assert (res.layer.in_features, res.layer.out_features) == (5, 6) and res.layer.twiddle.dtype == torch.float32
    assert abs(dense_rmse(res.layer, target.double()) - res.rmse) < 1e-5


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        fit(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="in_features"):
        fit(lambda x: x)
    with pytest.raises(TypeError, match="complex"):
        fit(dft(8), dtype=torch.float32)
    with pytest.raises(ValueError, match="permutation"):
        fit(hadamard(8), permutation=torch.arange(4))
    with pytest.raises(ValueError, match="not a permutation"):
        fit(hadamard(8), permutation=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="restarts"):
        fit(hadamard(8), restarts=0)
    with pytest.raises(ValueError, match="pairs"):
        fit((torch.zeros(4, 8), torch.zeros(5, 8)))
