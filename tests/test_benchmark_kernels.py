"""bench-kernels (fairseq_kaleidoscope/bench/kernels.py): argument parsing and the bookkeeping (no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairseq_kaleidoscope.bench import kernels


@pytest.fixture(scope="module")
def bench():
    return kernels


def test_quick_is_a_subset_of_the_full_grid(bench) -> None:
    quick, full = bench.parse_args(["--quick"]), bench.parse_args([])
    assert set(quick.n) < set(full.n) and set(quick.batch) < set(full.batch)
    assert full.n == [256, 512, 1024, 2048, 4096] and full.batch == [1, 8, 64, 512, 4096]
    assert quick.min_time < full.min_time
    assert 1 in full.threads
    assert full.out.name == "results"


def test_explicit_grid_and_out(bench, tmp_path: Path) -> None:
    args = bench.parse_args(["--quick", "--n", "64", "128", "--batch", "3", "--threads", "1", "--out", str(tmp_path)])
    assert (args.n, args.batch, args.threads, args.out) == ([64, 128], [3], [1], tmp_path)


@pytest.mark.parametrize("argv", [["--n", "100"], ["--batch", "0"], ["--threads", "0"], ["--bogus"]])
def test_bad_arguments_exit(bench, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_flops_and_targets(bench) -> None:
    # Dense n=512: 2·512² per row; one B Bᵀ block: 2·9 factors of 3·512 flops per row.
    assert bench.flops("dense", 512, 2, False) == 2 * 2 * 512**2
    assert bench.flops("kmat1", 512, 1, False) == 18 * 3 * 512
    assert bench.flops("kmat2", 512, 1, True) == 3 * 36 * 3 * 512
    rows = [
        {"threads": 1, "mode": "fwd", "n": 512, "batch": 64, "kmat1_speedup": 7.0},
        {"threads": 1, "mode": "fwd", "n": 512, "batch": 1, "kmat1_speedup": 5.0},
        {"threads": 2, "mode": "fwd", "n": 1024, "batch": 64, "kmat1_speedup": 20.0},
    ]
    lines = bench.targets(rows)
    assert len(lines) == 2  # only the single-thread rows that were measured
    assert "batch=1:" in lines[0] and lines[0].endswith(": met")
    assert "batch=64" in lines[1] and "NOT met (88% of the target)" in lines[1]
