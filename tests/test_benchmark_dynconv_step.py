"""bench-dynconv (fairseq_kaleidoscope/bench/dynconv_step.py): arguments, the baseline it times, the bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("fairseq")

from fairseq_kaleidoscope.modules import DynamicConv
from fairseq_kaleidoscope.modules.dynconv_step import has_compiled_dynconv_step


@pytest.fixture(scope="module")
def bench():
    from fairseq_kaleidoscope.bench import dynconv_step

    return dynconv_step


def test_default_grid(bench) -> None:
    args = bench.parse_args([])
    assert (args.batch, args.kernel_size, args.channels, args.heads, args.threads) == (
        [1, 4, 512], [3, 15, 31], 512, 4, 1
    )
    assert bench.parse_args(["--quick"]).min_time < args.min_time
    assert args.out.name == "results"


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--kernel-size", "0"], ["--heads", "3"], ["--threads", "0"]])
def test_bad_arguments_exit(bench, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


@pytest.mark.parametrize("K", [1, 4])
def test_baseline_is_dynamic_conv_step(bench, K: int) -> None:
    """The timed cat+einsum step computes what DynamicConv.step computes."""
    B, C, H = 2, 8, 2
    conv = DynamicConv(C, K, padding_l=K - 1, num_heads=H).eval()
    state = conv.allocate_state(B, torch.zeros(B, C))
    prev: list = [None]
    with torch.no_grad():
        for _ in range(K + 2):
            x = torch.randn(1, B, C)
            expected = conv.step(x[0], state)
            torch.testing.assert_close(bench.cat_einsum_step(x, conv.weight_linear(x), prev, K), expected)


@pytest.mark.skipif(not has_compiled_dynconv_step(), reason="compiled extension not built")
def test_calls_run_and_agree(bench, tmp_path: Path) -> None:
    with torch.no_grad():
        calls = bench.make_calls(2, 8, 2, 3)
        assert set(calls) == set(bench.IMPLS) - {"op hot"}
        outs = {name: fn() for name, fn in calls.items()}
        # Same input every step and a full window: every implementation gives the same output.
        for name in ("lin+op", "lin+cat", "cat+ein", "op", "op raw", "ref"):
            torch.testing.assert_close(outs[name].reshape(2, 8), outs["module"].reshape(2, 8))
        assert bench.check_agreement(2, 8, 2, 3) < 1e-5
    row = {"K": 3, "batch": 2, "max_abs_diff": 1e-7, "speedup_step": 3.0, "speedup_conv": 5.0}
    row.update({f"{impl}_us": 1.0 + i for i, impl in enumerate(bench.IMPLS)})
    line = bench.format_row(row)
    assert line.startswith("| 3 | 2 | 1.0 | 2.0 | 3.0 |") and line.count("|") == bench.HEADER.count("|")
    meta = {"machine": "cpu", "cpus": 2, "C": 8, "H": 2, "date": "now", "command": "x",
            "loadavg_start": (0.0, 0.0, 0.0), "loadavg_end": (1.0, 1.0, 1.0)}
    bench.write_markdown(tmp_path / "r.md", meta, [row])
    assert line in (tmp_path / "r.md").read_text()
