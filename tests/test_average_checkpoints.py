"""average_checkpoints against fairseq's scripts/average_checkpoints.py arithmetic."""

from pathlib import Path

import torch

from fairseq_kaleidoscope.compat.average_checkpoints import average_checkpoints


def test_floats_are_averaged_and_integers_floor_divided(tmp_path: Path) -> None:
    paths = []
    for i, (w, steps) in enumerate([(1.0, 3), (2.0, 4), (4.0, 6)]):
        model = {"w": torch.full((2,), w), "h": torch.tensor([w], dtype=torch.half), "steps": torch.tensor(steps)}
        torch.save({"model": model, "extra": i}, tmp_path / f"c{i}.pt")
        paths.append(str(tmp_path / f"c{i}.pt"))
    out = average_checkpoints(paths)
    torch.testing.assert_close(out["model"]["w"], torch.full((2,), 7 / 3))
    torch.testing.assert_close(out["model"]["h"], torch.tensor([7 / 3]))  # averaged in float32, like fairseq
    assert out["model"]["steps"].dtype == torch.int64 and out["model"]["steps"].item() == 13 // 3  # not the sum 13
    assert out["extra"] == 0  # the first checkpoint's other entries
