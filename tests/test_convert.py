"""Dense -> K-matrix conversion of a model trained by the real fairseq-train, decoded by fairseq-generate."""

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
from fairseq_kaleidoscope.convert import ConversionError, convert

BIN = Path(sys.executable).parent
USER_DIR = os.path.dirname(os.path.abspath(fairseq_kaleidoscope.__file__))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
SIZE = {"dim": 16, "layers": (1, 1), "kernels": ("[3]", "[3]")}
MODEL = tiny_model_args("kaleidoscope_lightconv_iwslt_de_en", **SIZE)


def run(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([str(BIN / script), *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data-bin and a dense lightconv trained for a few updates (checkpoint at ck/checkpoint_last.pt)."""
    root = tmp_path_factory.mktemp("convert")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    for split, n in [("train", 120), ("valid", 10)]:
        src = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) for _ in range(n)]
        (root / f"{split}.de").write_text("\n".join(src) + "\n")
        (root / f"{split}.en").write_text("\n".join(s.upper() for s in src) + "\n")
    run("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", "train",
        "--validpref", "valid", "--destdir", "bin", "--workers", "1", cwd=root)  # fmt: skip
    run("fairseq-train", "bin", "--user-dir", USER_DIR, *MODEL, "--kmatrix-layers", "none", "--optimizer", "adam",
        "--lr", "0.002", "--max-tokens", "2000", "--max-update", "3", "--save-dir", "ck", "--cpu",
        "--num-workers", "0", "--no-progress-bar", "--seed", "1", "--no-epoch-checkpoints", cwd=root)  # fmt: skip
    return root


def test_convert_copies_fits_and_generates(trained: Path) -> None:
    dense_path, out = trained / "ck" / "checkpoint_last.pt", trained / "kmat.pt"
    lines: list[str] = []
    reports = convert(str(dense_path), str(out), "decoder.ffn,encoder.fc1", data_bin=str(trained / "bin"),
                      activations=200, steps=30, restarts=1, log=lines.append)  # fmt: skip
    dense = torch.load(dense_path, map_location="cpu", weights_only=True)
    kmat = torch.load(out, map_location="cpu", weights_only=True)  # no pickled objects: stock fairseq reads it
    converted = {"decoder.layers.0.fc1", "decoder.layers.0.fc2", "encoder.layers.0.fc1"}
    assert {r.name for r in reports} == converted
    for r in reports:
        assert 0 < r.weight_rel_error < 10 and r.output_rel_error is not None and 0 < r.output_rel_error < 10
        assert any(line.startswith("[") and r.name in line and "rel. error" in line for line in lines)
    # (b) the converted layers are K-matrices, with the dense bias; the config says so.
    assert kmat["cfg"]["model"]["kmatrix_layers"] == "decoder.ffn,encoder.fc1"
    for name in converted:
        assert f"{name}.weight" not in kmat["model"] and kmat["model"][f"{name}.twiddle"].dtype == torch.float32
        torch.testing.assert_close(kmat["model"][f"{name}.bias"], dense["model"][f"{name}.bias"], rtol=0, atol=0)
    # (a) everything else is copied exactly.
    others = [k for k in kmat["model"] if k.rsplit(".", 1)[0] not in converted]
    assert "encoder.layers.0.fc2.weight" in others and "decoder.layers.0.conv.weight_linear.weight" in others
    assert set(others) == {k for k in dense["model"] if k.rsplit(".", 1)[0] not in converted}
    for k in others:
        assert torch.equal(kmat["model"][k], dense["model"][k]), k
    # The fitted twiddle really is what the layer report measured: rebuild the layer and compare.
    from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear

    layer = KaleidoscopeLinear(16, 32, bias=False, nblocks=1)
    layer.twiddle.data.copy_(kmat["model"]["encoder.layers.0.fc1.twiddle"])
    w = dense["model"]["encoder.layers.0.fc1.weight"]
    err = float((layer.to_dense().detach() - w).norm() / w.norm())
    rep = next(r for r in reports if r.name == "encoder.layers.0.fc1")
    assert err == pytest.approx(rep.weight_rel_error, rel=1e-4)
    # (c) stock fairseq-generate loads and decodes it.
    gen = run("fairseq-generate", "bin", "--user-dir", USER_DIR, "--path", str(out), "--beam", "2", "--cpu",
              "--gen-subset", "valid", "--max-len-b", "8", cwd=trained)  # fmt: skip
    assert gen.count("\nH-") == 10 and "BLEU4" in gen
    # Converting the converted checkpoint again for the same layers is refused.
    with pytest.raises(ConversionError, match=r"replaces no dense layer.*already K-matrices"):
        convert(str(out), str(trained / "again.pt"), "decoder.ffn", steps=1)


def test_weights_only_fit_through_the_cli(trained: Path) -> None:
    out = trained / "kmat_w.pt"
    proc = subprocess.run([sys.executable, "-m", "fairseq_kaleidoscope.convert", "--input",
                           str(trained / "ck" / "checkpoint_last.pt"), "--output", str(out), "--kmatrix-layers",
                           "decoder.attn", "--steps", "20", "--restarts", "1"],
                          capture_output=True, text=True, env=ENV)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("weight rel. error") == 4 and "output rel. error" not in proc.stdout
    assert "[4/4] decoder.layers.0.encoder_attn" in proc.stdout
    state = torch.load(out, weights_only=True)
    assert state["cfg"]["model"]["kmatrix_layers"] == "decoder.attn"
    assert sum(k.endswith("twiddle") for k in state["model"]) == 4


def test_bad_input_gives_clear_errors(trained: Path, tmp_path: Path) -> None:
    dense = str(trained / "ck" / "checkpoint_last.pt")
    with pytest.raises(ConversionError, match="checkpoint not found"):
        convert(str(tmp_path / "missing.pt"), str(tmp_path / "o.pt"), "decoder.all")
    with pytest.raises(ConversionError, match=r"unknown entry 'decoder\.nope'.*Valid entries"):
        convert(dense, str(tmp_path / "o.pt"), "decoder.nope")
    with pytest.raises(ConversionError, match="--activations needs --data-bin"):
        convert(dense, str(tmp_path / "o.pt"), "decoder.all", activations=10)
    with pytest.raises(ConversionError, match="--fit-on 'activations': use"):
        convert(dense, str(tmp_path / "o.pt"), "decoder.all", fit_on="activations")
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    with pytest.raises(ConversionError, match=r"notes.txt is not a PyTorch checkpoint .*starts with b'hello wo'"):
        convert(str(text), str(tmp_path / "o.pt"), "decoder.all")
    assert not (tmp_path / "o.pt").exists()
    proc = subprocess.run([sys.executable, "-m", "fairseq_kaleidoscope.convert", "--input", str(tmp_path / "x.pt"),
                           "--output", str(tmp_path / "o.pt")], capture_output=True, text=True, env=ENV)  # fmt: skip
    assert proc.returncode != 0 and "convert: error: checkpoint not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stock_fairseq_lightconv_checkpoint(tmp_path: Path) -> None:
    """fairseq's own lightconv (argparse config, a pickled Namespace) has our dense parameter names."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    from fairseq_kaleidoscope.models.builder import build_model_from_args

    argv = tiny_model_args("lightconv_iwslt_de_en", **SIZE)
    model, _ = build_model_from_args(argv, 20)
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), ["x", *argv]))
    history = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam", "lr_scheduler_state": {},
                "num_updates": 3}]  # fmt: skip
    stock = {"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
             "model": model.state_dict(), "optimizer_history": history, "extra_state": {}}  # fmt: skip
    torch.save(stock, tmp_path / "stock.pt")
    reports = convert(str(tmp_path / "stock.pt"), str(tmp_path / "k.pt"), "decoder.fc1", steps=5, restarts=1,
                      log=lambda s: None)  # fmt: skip
    assert [r.name for r in reports] == ["decoder.layers.0.fc1"]
    out = torch.load(tmp_path / "k.pt", weights_only=True)
    assert out["cfg"]["model"]["_name"] == "kaleidoscope_lightconv"
    assert out["cfg"]["model"]["encoder_kernel_size_list"] == [3]
    assert torch.equal(out["model"]["decoder.layers.0.fc2.weight"], stock["model"]["decoder.layers.0.fc2.weight"])
    # fairseq's lightconv also saves a conv_bias its forward never uses; our model drops it on load.
    kept = {k for k in stock["model"] if not k.endswith("conv.conv_bias")}
    assert len(kept) == len(stock["model"]) - 2
    assert set(out["model"]) == kept - {"decoder.layers.0.fc1.weight"} | {"decoder.layers.0.fc1.twiddle"}
    torch.save({"x": 1}, tmp_path / "junk.pt")
    with pytest.raises(ConversionError, match=r"cannot read .*junk\.pt as a fairseq checkpoint"):
        convert(str(tmp_path / "junk.pt"), str(tmp_path / "j.pt"), "decoder.all")


def test_fit_on_weights_still_reports_the_output_error(trained: Path, tmp_path: Path) -> None:
    dense = str(trained / "ck" / "checkpoint_last.pt")
    kw = dict(data_bin=str(trained / "bin"), activations=100, subset="valid", steps=5, restarts=1, log=lambda s: None)
    on_w = convert(dense, str(tmp_path / "w.pt"), "decoder.fc2", fit_on="weights", **kw)
    plain = convert(dense, str(tmp_path / "p.pt"), "decoder.fc2", steps=5, restarts=1, log=lambda s: None)
    # Same seed, same weight target: the same fit; the activations only add the output measurement.
    assert on_w[0].weight_rel_error == pytest.approx(plain[0].weight_rel_error, rel=1e-6)
    assert plain[0].output_rel_error is None and on_w[0].output_rel_error > 0
    a, b = (torch.load(tmp_path / f, weights_only=True)["model"] for f in ("w.pt", "p.pt"))
    assert torch.equal(a["decoder.layers.0.fc2.twiddle"], b["decoder.layers.0.fc2.twiddle"])


def test_activations_skip_padding_and_reach_fused_attention(trained: Path, tmp_path: Path) -> None:
    """Recorded rows are exactly the real tokens; attention projections (fused in fairseq) are recorded too."""
    from fairseq import options
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    from fairseq_kaleidoscope.models.builder import build_model_from_args

    src, tgt = (Dictionary.load(str(trained / "bin" / f"dict.{lang}.txt")) for lang in ("de", "en"))
    argv = [*tiny_model_args("kaleidoscope_transformer_iwslt_de_en", **SIZE), "--kmatrix-layers", "none"]
    model, _ = build_model_from_args(argv, src, tgt)
    args = options.parse_args_and_arch(options.get_training_parser(), [str(trained / "bin"), *argv])
    cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True)
    history = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam", "lr_scheduler_state": {},
                "num_updates": 0}]  # fmt: skip
    torch.save({"args": None, "cfg": cfg, "model": model.state_dict(), "optimizer_history": history,
                "extra_state": {}}, tmp_path / "tf.pt")  # fmt: skip
    layers = "encoder.fc1,decoder.self_attn_q,decoder.attn_k,decoder.output_projection"
    logged: list[str] = []
    reports = convert(str(tmp_path / "tf.pt"), str(tmp_path / "k.pt"), layers, data_bin=str(trained / "bin"),
                      activations=10**6, subset="valid", steps=3, restarts=1, log=logged.append)  # fmt: skip
    rows = {r.name: r.rows for r in reports}
    # Each sentence contributes its words plus </s>, on both sides (the target's BOS replaces its EOS).
    lines = (trained / "valid.de").read_text().splitlines()
    tokens = sum(len(line.split()) + 1 for line in lines)
    assert rows == {"encoder.layers.0.fc1": tokens, "decoder.layers.0.self_attn.q_proj": tokens,
                    "decoder.layers.0.encoder_attn.k_proj": tokens, "decoder.output_projection": tokens}  # fmt: skip
    assert all(r.output_rel_error is not None for r in reports)
    # The log reports what was recorded, not what was asked for.
    assert f"recorded {tokens} input rows per layer" in "\n".join(logged) and "asked for 1000000" in "\n".join(logged)
