"""End to end through fairseq's own console scripts, with this package as --user-dir.

A few hundred synthetic sentence pairs -> fairseq-preprocess -> fairseq-train (a few
updates, 2 epochs) -> fairseq-generate / fairseq-interactive -> checkpoint averaging ->
fairseq-generate on the average. All real subprocesses of the scripts in the venv.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fairseq")

from conftest import tiny_model_args

import fairseq_kaleidoscope

BIN = Path(sys.executable).parent
USER_DIR = os.path.dirname(os.path.abspath(fairseq_kaleidoscope.__file__))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

# Per architecture: tiny_model_args options (the lightconv's decoder kernel reaches back 14 tokens).
TINY = {
    "kaleidoscope_lightconv_iwslt_de_en": {"kernels": ("[3]", "[3,15]")},
    "kaleidoscope_transformer_iwslt_de_en": {"layers": (1, 1)},
}


def run(script: str, *args: str, stdin: str | None = None, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(
        [str(BIN / script), *args], input=stdin, capture_output=True, text=True, env=env or ENV, cwd=cwd, timeout=300
    )
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fairseq_e2e")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for split, n in [("train", 300), ("valid", 30), ("test", 20)]:
        src, tgt = [], []
        for _ in range(n):
            s = [rng.choice(words) for _ in range(rng.randint(2, 9))]
            src.append(" ".join(s))
            tgt.append(" ".join(w.upper() for w in reversed(s)))  # a learnable "translation"
        (root / f"{split}.de").write_text("\n".join(src) + "\n")
        (root / f"{split}.en").write_text("\n".join(tgt) + "\n")
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", "train",
        "--validpref", "valid", "--testpref", "test", "--destdir", "bin", "--workers", "1", cwd=root)  # fmt: skip
    return root


def train(root: Path, arch: str, save_dir: str, *extra: str) -> str:
    return run(
        "fairseq-train", "bin", "--user-dir", USER_DIR, *tiny_model_args(arch, **TINY[arch]),
        "--optimizer", "adam", "--lr", "0.002", "--weight-decay", "0.01", "--kmatrix-lr-scale", "2",
        "--max-tokens", "1200", "--max-epoch", "2", "--save-dir", save_dir, "--cpu", "--num-workers", "0",
        "--no-progress-bar", "--seed", "1", *extra, cwd=root,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lightconv_run(data_bin: Path) -> Path:
    log = train(data_bin, "kaleidoscope_lightconv_iwslt_de_en", "ck_lc")
    assert "KaleidoscopeLightConvModel" in log
    return data_bin / "ck_lc"


def test_checkpoints_load_with_weights_only_and_keep_the_lr_scale(lightconv_run: Path) -> None:
    for name in ("checkpoint1.pt", "checkpoint2.pt", "checkpoint_last.pt"):
        path = lightconv_run / name
        # No pickled Python objects: fairseq's unmodified scripts (which call torch.load
        # without importing this plugin) can read our checkpoints too.
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["cfg"]["model"]["_name"] == "kaleidoscope_lightconv_iwslt_de_en"
    # The optimizer of the real run: a dense group and a K-matrix group at twice its rate, no decay.
    groups = state["last_optimizer_state"]["param_groups"]
    assert len(groups) == 2
    assert groups[1]["lr"] == pytest.approx(2 * groups[0]["lr"]) and groups[0]["lr"] > 0
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.01, 0.0)
    twiddles = [k for k in state["model"] if k.endswith("twiddle")]
    assert twiddles and all(k.startswith("decoder.") for k in twiddles)


def test_generate_and_interactive(lightconv_run: Path) -> None:
    root = lightconv_run.parent
    out = run("fairseq-generate", "bin", "--user-dir", USER_DIR, "--path", str(lightconv_run / "checkpoint_last.pt"),
              "--beam", "3", "--cpu", "--max-tokens", "1200", "--gen-subset", "test", cwd=root)  # fmt: skip
    assert out.count("\nH-") == 20 and "BLEU4" in out
    out = run("fairseq-interactive", "bin", "--user-dir", USER_DIR, "--path", str(lightconv_run / "checkpoint_last.pt"),
              "--beam", "2", "--cpu", "--source-lang", "de", "--target-lang", "en",
              stdin="w1 w2 w3\nw5 w7\n", cwd=root)  # fmt: skip
    assert out.count("\nH-") == 2


@pytest.mark.parametrize("beam", ["1", "3"])
def test_search_runs_the_lean_loop_with_fairseqs_hypotheses(lightconv_run: Path, beam: str) -> None:
    """fairseq-generate (with a target prefix) and fairseq-interactive, greedy and beam: the lean loop by default, the
    same hypotheses and scores as fairseq's SequenceGenerator (the ``lean_search`` fix opted out)."""
    root = lightconv_run.parent
    checkpoint = str(lightconv_run / "checkpoint_last.pt")
    generate = ("fairseq-generate", "bin", "--user-dir", USER_DIR, "--path", checkpoint, "--beam", beam, "--cpu",
                "--max-tokens", "1200", "--gen-subset", "test", "--lenpen", "0.7", "--min-len", "2",
                "--prefix-size", "1")  # fmt: skip
    interactive = ("fairseq-interactive", "bin", "--user-dir", USER_DIR, "--path", checkpoint, "--beam", beam, "--cpu",
                   "--source-lang", "de", "--target-lang", "en")  # fmt: skip
    stock = {**ENV, "KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES": "lean_search"}
    for command, stdin in ((generate, None), (interactive, "w1 w2 w3\nw5 w7 w9 w11\n")):
        lean, fairseq = (run(*command, stdin=stdin, cwd=root, env=env) for env in (ENV, stock))
        assert "runs the lean loop" in lean and "runs the lean loop" not in fairseq

        def hypotheses(out: str) -> list[str]:
            return sorted(line for line in out.splitlines() if line[:2] in ("H-", "P-", "D-"))

        assert hypotheses(lean) == hypotheses(fairseq) and len(hypotheses(lean)) == (60 if stdin is None else 6)


def test_average_checkpoints_then_generate(lightconv_run: Path) -> None:
    root = lightconv_run.parent
    avg = lightconv_run / "avg2.pt"
    subprocess.run([sys.executable, "-m", "fairseq_kaleidoscope", "average-checkpoints", "--inputs",
                    str(lightconv_run), "--num-epoch-checkpoints", "2", "--output", str(avg)],
                   check=True, capture_output=True, env=ENV)  # fmt: skip
    a, b = (torch.load(lightconv_run / f"checkpoint{i}.pt", weights_only=True)["model"] for i in (1, 2))
    averaged = torch.load(avg, weights_only=True)["model"]
    for k in ("decoder.layers.0.fc1.twiddle", "encoder.layers.0.fc1.weight"):
        torch.testing.assert_close(averaged[k], (a[k] + b[k]) / 2)
    out = run("fairseq-generate", "bin", "--user-dir", USER_DIR, "--path", str(avg), "--beam", "2", "--cpu",
              "--max-tokens", "1200", "--gen-subset", "valid", "--quiet", cwd=root)  # fmt: skip
    assert "BLEU4" in out


def test_transformer_trains_and_generates(data_bin: Path) -> None:
    train(data_bin, "kaleidoscope_transformer_iwslt_de_en", "ck_tf", "--max-epoch", "1",
          "--kmatrix-layers", "encoder.all,decoder.all")  # fmt: skip
    out = run("fairseq-generate", "bin", "--user-dir", USER_DIR, "--path", "ck_tf/checkpoint_last.pt",
              "--beam", "2", "--cpu", "--max-tokens", "1200", "--max-len-b", "10", cwd=data_bin)  # fmt: skip
    assert out.count("\nH-") == 20


def test_python_m_prints_user_dir_and_version() -> None:
    out = subprocess.run([sys.executable, "-m", "fairseq_kaleidoscope", "--user-dir", "--version"],
                         check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    assert out == [fairseq_kaleidoscope.__version__, USER_DIR]
    assert os.path.isfile(os.path.join(out[1], "models", "kaleidoscope_lightconv.py"))


def test_dense_fairseq_checkpoints_load_once_the_plugin_is_imported(tmp_path: Path) -> None:
    """fairseq's own argparse models pickle an argparse.Namespace, which torch>=2.6 refuses by default."""
    import argparse

    path = tmp_path / "dense.pt"
    torch.save({"args": None, "cfg": {"model": argparse.Namespace(arch="lightconv_iwslt_de_en")},
                "model": {"w": torch.ones(2)}}, path)  # fmt: skip
    load = "import torch, sys; s = torch.load(sys.argv[1]); print(s['cfg']['model'].arch)"
    bare = subprocess.run([sys.executable, "-c", load, str(path)], capture_output=True, text=True, env=ENV)
    assert bare.returncode != 0 and "argparse.Namespace" in bare.stderr
    plugin = subprocess.run([sys.executable, "-c", "import fairseq, fairseq_kaleidoscope; " + load, str(path)],
                            capture_output=True, text=True, env=ENV)  # fmt: skip
    assert plugin.returncode == 0, plugin.stderr[-2000:]
    assert plugin.stdout.strip().endswith("lightconv_iwslt_de_en")


def test_generate_with_int8_dense_remainder(lightconv_run: Path) -> None:
    """--int8-dense through stock fairseq-generate's --model-overrides: the dense layers run in int8."""
    root = lightconv_run.parent
    common = ["bin", "--user-dir", USER_DIR, "--path", str(lightconv_run / "checkpoint_last.pt"), "--beam", "2",
              "--cpu", "--max-tokens", "1200", "--gen-subset", "test"]  # fmt: skip
    fp32 = run("fairseq-generate", *common, cwd=root)
    int8 = run("fairseq-generate", *common, "--model-overrides", "{'int8_dense': 'encoder,output_projection'}",
               cwd=root)  # fmt: skip
    assert "--int8-dense encoder,output_projection: 6 dense linear layers run in int8" in int8
    assert "int8" not in fp32
    hyps = [sorted(line for line in out.splitlines() if line.startswith("H-")) for out in (fp32, int8)]
    assert len(hyps[0]) == len(hyps[1]) == 20
    # int8 rounding may change a few close calls of a barely trained model, not most outputs.
    same = sum(a.split("\t")[2] == b.split("\t")[2] for a, b in zip(*hyps, strict=True))
    assert same >= 14
    with pytest.raises(AssertionError, match="int8-dense"):
        run("fairseq-generate", *common, "--model-overrides", "{'int8_dense': 'vocab'}", cwd=root)
