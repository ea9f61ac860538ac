"""Sequence-level distillation: the teacher's translations as a student's training data, and the
recipe end to end (teacher -> distilled data -> student from scratch / converted from the teacher)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

fairseq = pytest.importorskip("fairseq", reason="fairseq is not installed")

from test_recipes import MULTI30K, TINY_TRAIN, preprocess, run  # noqa: E402

from fairseq_kaleidoscope.recipes import distill, synthetic  # noqa: E402

N_TRAIN = 120


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data-bin, checkpoint) of a tiny dense model trained for 2 epochs: real Multi30k lines when the
    shared files are there, the generated corpus otherwise."""
    root = tmp_path_factory.mktemp("teacher")
    text = root / "text"
    if MULTI30K.is_dir():
        text.mkdir()
        for split, name, lo, hi in (("train", "train", 0, N_TRAIN), ("valid", "val", 0, 20), ("test", "val", 20, 40)):
            for lang in ("de", "en"):
                lines = (MULTI30K / f"{name}.lc.norm.tok.{lang}").read_text("utf-8").splitlines(True)[lo:hi]
                (text / f"{split}.{lang}").write_text("".join(lines), "utf-8")
    else:
        synthetic.write_corpus(text, N_TRAIN, 20, 20, seed=7)
    data = preprocess(text, root / "bin")
    save = root / "dense"
    run(
        ["bash", "recipes/multi30k_de_en/train.sh", "dense", *TINY_TRAIN, "--max-epoch", "2"],
        DATA=str(data),
        SAVE=str(save),
        THREADS="1",
    )
    return data, save / "checkpoint_best.pt"


def load(path: Path) -> dict:
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


def _lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines()


def test_translate_keeps_corpus_order_whatever_the_batching(
    teacher: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    data, ckpt = teacher
    torch.set_num_threads(1)
    task, sources, refs, hyps, seconds = distill.translate(
        str(ckpt), str(data), beam=2, batch_size=16, progress_every=50
    )
    err = capsys.readouterr().err
    assert "[teacher] 64/120 sentences" in err and "ETA" in err and "[teacher] 120/120 sentences" in err
    _task, sources1, _refs, hyps1, _s = distill.translate(str(ckpt), str(data), beam=2, batch_size=1, max_sentences=9)
    assert len(sources) == len(refs) == len(hyps) == N_TRAIN and seconds > 0
    assert sources[:9] == sources1 and hyps[:9] == hyps1  # sentence i's translation lands on line i
    dataset = task.dataset("train")
    assert sources[5] == task.source_dictionary.string(dataset[5]["source"])
    assert hyps != refs  # a 2-epoch teacher does not reproduce the references
    with pytest.raises(FileNotFoundError, match="teacher checkpoint"):
        distill.translate(str(data / "missing.pt"), str(data))


def test_distill_recipe_scratch_and_mix(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = teacher
    env = {"DATA": str(data), "TEACHER": str(ckpt), "BEAM": "2", "BATCH": "32", "THREADS": "1"}
    out = run(
        ["bash", "recipes/multi30k_de_en/distill.sh", "scratch", *TINY_TRAIN, "--max-epoch", "1"],
        **env,
        DISTILLED=str(tmp_path / "distilled"),
        SAVE=str(tmp_path / "student"),
    )
    assert f"teacher decoding: {N_TRAIN} sentences in" in out
    distilled = tmp_path / "distilled"
    src, tgt = _lines(distilled / "text" / "train.de"), _lines(distilled / "text" / "train.en")
    assert len(src) == len(tgt) == N_TRAIN  # N source sentences in, N distilled targets out
    for name in ("dict.de.txt", "dict.en.txt"):  # the teacher's vocabulary, unchanged
        assert (distilled / name).read_bytes() == (data / name).read_bytes()
    for name in ("valid.de-en.en.bin", "test.de-en.de.idx"):  # students validate on real references
        assert (distilled / name).read_bytes() == (data / name).read_bytes()
    assert (distilled / "train.de-en.de.bin").read_bytes() == (data / "train.de-en.de.bin").read_bytes()
    assert (distilled / "train.de-en.en.bin").read_bytes() != (data / "train.de-en.en.bin").read_bytes()
    assert (tmp_path / "student" / "checkpoint1.pt").is_file()
    state = load(tmp_path / "student" / "checkpoint_last.pt")
    assert any("twiddle" in k for k in state["model"])  # a K-matrix student
    # the same teacher: the data is reused; MIX=1 keeps the original pairs beside the distilled ones
    again = run(
        ["bash", "recipes/multi30k_de_en/distill.sh", "scratch", *TINY_TRAIN, "--max-epoch", "1"],
        **env,
        DISTILLED=str(distilled),
        SAVE=str(tmp_path / "student2"),
    )
    assert "reusing" in again and "teacher decoding" not in again
    run(
        ["bash", "recipes/multi30k_de_en/distill.sh", "scratch", *TINY_TRAIN, "--max-epoch", "1"],
        **env,
        MIX="1",
        DISTILLED=str(tmp_path / "mixed"),
        SAVE=str(tmp_path / "student3"),
    )
    mixed = _lines(tmp_path / "mixed" / "text" / "train.en")
    assert len(mixed) == 2 * N_TRAIN and mixed[N_TRAIN:] == tgt


@pytest.mark.parametrize("targets", ["distilled", "original"])
def test_distill_recipe_converted_student(teacher: tuple[Path, Path], tmp_path: Path, targets: str) -> None:
    """convert --activations from the teacher, then fine-tuning on the distilled (or original) data starts from it."""
    data, ckpt = teacher
    out = run(
        ["bash", "recipes/multi30k_de_en/distill.sh", "convert", *TINY_TRAIN, "--max-epoch", "1"],
        DATA=str(data),
        TEACHER=str(ckpt),
        TARGETS=targets,
        BEAM="1",
        THREADS="1",
        DISTILLED=str(tmp_path / "distilled"),
        SAVE=str(tmp_path / "student"),
        ACTIVATIONS="64",
        CONVERT_OPTIONS="--steps 20 --restarts 1",
    )
    converted = tmp_path / "student" / "converted.pt"
    assert converted.is_file()
    assert (tmp_path / "distilled").is_dir() == (targets == "distilled")  # original: no teacher decoding
    assert f"training the K-matrix student on {data if targets == 'original' else tmp_path / 'distilled'}" in out
    assert f"Loaded checkpoint {converted}" in out  # fairseq-train restored the converted model
    assert "'kmatrix_lr_scale': 1.0" in out  # the fitted twiddles are not trained at 10x
    start = load(converted)["model"]
    end = load(tmp_path / "student" / "checkpoint1.pt")["model"]
    assert start.keys() == end.keys() and any("twiddle" in k for k in end)
    encoder = [k for k in start if k.startswith("encoder.layers.0.")]
    # one epoch of fine-tuning moves the weights but starts from the converted ones: close, not equal
    delta = max((end[k] - start[k]).abs().max().item() for k in encoder)
    assert 0 < delta < 0.1


def test_distill_recipe_needs_a_teacher(tmp_path: Path) -> None:
    script = "recipes/multi30k_de_en/distill.sh"
    with pytest.raises(pytest.fail.Exception, match="no teacher checkpoint"):
        run(["bash", script, "scratch"], DATA=str(tmp_path), TEACHER=str(tmp_path / "none.pt"), SAVE=str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="must be scratch or convert"):
        run(["bash", script, "teacher"], TEACHER=str(tmp_path / "none.pt"))
    (tmp_path / "t.pt").write_bytes(b"")
    with pytest.raises(pytest.fail.Exception, match=r"TARGETS must be distilled .* or original, got both"):
        run(["bash", script, "convert"], DATA=str(tmp_path), TEACHER=str(tmp_path / "t.pt"), SAVE=str(tmp_path),
            TARGETS="both")
