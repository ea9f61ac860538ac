"""Recipes and their Python tools: synthetic corpus, BPE format, BLEU, forced-length decoding,
and each recipe end to end on a few hundred sentences (tiny models, a few updates)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

fairseq = pytest.importorskip("fairseq", reason="fairseq is not installed")

from conftest import tiny_model_args  # noqa: E402

from fairseq_kaleidoscope.recipes import bleu, decode_bench, subword, synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
IWSLT = SHARED / "iwslt14.tokenized.de-en"
MULTI30K = SHARED / "multi30k"
TINY = " ".join(tiny_model_args(layers=(1, 1), kernels=("[3]", "[3]")))
TINY_TRAIN = [*TINY.split(), "--max-tokens", "1000", "--cpu", "--num-workers", "0"]


def run(cmd: list[str], **env: str) -> str:
    """Run a recipe command; fail with its output tail when it fails."""
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def preprocess(text: Path, dest: Path) -> Path:
    run(
        [
            *f"{sys.executable} -m fairseq_cli.preprocess --source-lang de --target-lang en".split(),
            *("--trainpref", str(text / "train"), "--validpref", str(text / "valid")),
            *("--testpref", str(text / "test"), "--destdir", str(dest), "--joined-dictionary", "--workers", "1"),
        ]
    )
    return dest


# ---------------------------------------------------------------- synthetic corpus


def test_synthetic_corpus_is_deterministic_and_aligned(tmp_path: Path) -> None:
    a = synthetic.write_corpus(tmp_path / "a", 50, 5, 5, seed=3)
    b = synthetic.write_corpus(tmp_path / "b", 50, 5, 5, seed=3)
    for split, n in (("train", 50), ("valid", 5), ("test", 5)):
        de = (a / f"{split}.de").read_text().splitlines()
        assert de == (b / f"{split}.de").read_text().splitlines()
        assert len(de) == len((a / f"{split}.en").read_text().splitlines()) == n
    assert (a / "train.de").read_text() != (a / "test.de").read_text()
    with pytest.raises(ValueError, match="split sizes"):
        synthetic.write_corpus(tmp_path / "c", 0, 1, 1)


def test_synthetic_corpus_reorders_and_agrees() -> None:
    """Subordinate clauses are verb-final in German only; verb number follows the subject."""
    rng = random.Random(0)
    verbs_sg = {stem: third for stem, _base, third in synthetic.VERBS}
    subordinate = 0
    for _ in range(300):
        de, en = synthetic.sentence_pair(rng)
        if ", " in de:
            subordinate += 1
            de_clause, en_clause = de.split(" , ")[1].split(), en.split(" , ")[1].split()
            final = de_clause[-2]  # the verb, before "."
            assert any(final in (s + "t", s + "et", s + "en") for s in verbs_sg)
            plural = final.endswith("en")
            en_verbs = [w for w in en_clause if w in verbs_sg.values() or w in {b for _s, b, _t in synthetic.VERBS}]
            assert en_verbs and (en_verbs[0] in verbs_sg.values()) != plural
            assert en_clause.index(en_verbs[0]) < len(en_clause) - 2  # not verb-final in English
    assert subordinate > 50


# ---------------------------------------------------------------- BPE format and BLEU


def test_subword_format_round_trips() -> None:
    pieces = ["\u2581vern", "ü", "gen", "\u2581,", "\u2581", "x", "y", "\u2581ab"]
    text = subword.pieces_to_subword_nmt(pieces)
    assert text == "vern@@ ü@@ gen , x@@ y ab"
    assert bleu.remove_bpe(text) == "vernügen , xy ab"


def test_subword_learn_and_apply_is_lossless(tmp_path: Path) -> None:
    src = tmp_path / "text"
    src.write_text("".join(f"{synthetic.sentence_pair(random.Random(i))[0]}\n" for i in range(300)), "utf-8")
    model = subword.learn(str(tmp_path / "bpe"), [str(src)], vocab_size=80)
    subword.apply(model, str(src), str(tmp_path / "bpe.txt"))
    encoded = (tmp_path / "bpe.txt").read_text("utf-8").splitlines()
    assert any("@@ " in line for line in encoded)
    assert [bleu.remove_bpe(line) for line in encoded] == src.read_text("utf-8").splitlines()


def test_bleu_two_ways() -> None:
    refs = ["the cat sat on the mat .", "it is n't here ."]
    assert bleu.tokenized_bleu(refs, refs) == pytest.approx(100.0)
    assert bleu.detokenized_bleu(refs, refs) == pytest.approx(100.0)
    assert bleu.tokenized_bleu(["a b c d", "e f g h"], refs) < 5
    with pytest.raises(ValueError, match="2 references"):
        bleu.tokenized_bleu(["x"], refs)


def test_evenly_spaced_subset() -> None:
    assert decode_bench.evenly_spaced(10, None) == list(range(10))
    assert decode_bench.evenly_spaced(10, 3) == [0, 4, 9]  # round(4.5) == 4 in Python
    assert decode_bench.evenly_spaced(5, 50) == list(range(5))
    with pytest.raises(ValueError):
        decode_bench.evenly_spaced(10, 0)


# ---------------------------------------------------------------- forced-length decoding


@pytest.fixture(scope="module")
def synthetic_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_corpus(root / "text", 200, 30, 30, seed=5)
    return preprocess(root / "text", root / "bin")


def test_forced_length_same_steps_for_dense_and_kmatrix(synthetic_bin: Path) -> None:
    torch.set_num_threads(1)
    dense = decode_bench.random_model(
        "dense", str(synthetic_bin), TINY + " --arch kaleidoscope_lightconv --kmatrix-layers none", seed=1
    )
    kmat = decode_bench.random_model(
        "kmatrix", str(synthetic_bin), TINY + " --arch kaleidoscope_lightconv --kmatrix-layers decoder.all", seed=1
    )
    assert decode_bench.count_params(dense.model)[1] == 0 and decode_bench.count_params(kmat.model)[1] > 0
    dense.model.eval()
    kmat.model.eval()
    task = dense.task
    task.load_dataset("test")
    ds = task.dataset("test")
    indices = decode_bench.evenly_spaced(len(ds), 12)
    want = [int(ds[i]["target"].numel()) - 1 for i in indices]  # reference length without EOS
    for setting in (decode_bench.Setting("b1", 1, 1), decode_bench.Setting("b5", 5, 3)):
        batches = decode_bench.make_batches(ds, indices, setting.batch)
        with torch.inference_mode():
            runs = [decode_bench.decode(m, setting, batches, True, False) for m in (dense, kmat)]
        for r in runs:
            assert r.lengths == want
            assert r.tokens == sum(want)
        assert runs[0].decoder_calls == runs[1].decoder_calls > 0
        assert runs[0].decoder_rows == runs[1].decoder_rows
        # batch 1 greedy: one decoder call per generated token plus EOS
        if setting.batch == 1:
            assert runs[0].decoder_calls == sum(want) + len(want)
        else:  # every row of a sentence is decoded until its length: beam * (length + 1) rows per sentence
            assert runs[0].decoder_rows == setting.beam * (sum(want) + len(want))


def test_benchmark_batches_are_fairseqs() -> None:
    """decode_bench batches sentences as fairseq-generate does: in ``ordered_indices`` order (source length first)."""
    from fairseq.data import LanguagePairDataset

    from fairseq_kaleidoscope.models.builder import dummy_dictionary

    g = torch.Generator().manual_seed(0)
    src_sizes, tgt_sizes = torch.randint(2, 30, (24,), generator=g), torch.randint(2, 30, (24,), generator=g)
    src = [torch.full((int(n),), 5) for n in src_sizes]
    tgt = [torch.full((int(n),), 6) for n in tgt_sizes]
    d = dummy_dictionary(10)
    ds = LanguagePairDataset(src, src_sizes.numpy(), d, tgt, tgt_sizes.numpy(), d, shuffle=False)
    indices = decode_bench.evenly_spaced(len(ds), 24)
    fairseq_order = ds.ordered_indices().tolist()
    batches = decode_bench.make_batches(ds, indices, 5)
    assert [sorted(b["id"].tolist()) for b in batches] == [sorted(fairseq_order[k : k + 5]) for k in range(0, 24, 5)]


def test_ctranslate2_rows_decode_what_fairseq_decodes(synthetic_bin: Path, tmp_path: Path) -> None:
    """A random Transformer converted to CTranslate2: float32 gives fairseq's hypotheses, every row the fixed length."""
    pytest.importorskip("ctranslate2")
    transformer = " ".join(tiny_model_args("transformer", layers=(1, 1)))
    args = decode_bench.build_parser().parse_args([
        str(synthetic_bin), "--random", f"transformer={transformer}", "--ctranslate2", "ct2=transformer:float32",
        "--ctranslate2", "ct2-int8=transformer:int8", "--fixed-length", "6", "--max-sentences", "6",
        "--setting", "b1:1:1", "--setting", "b3:3:2", "--warmup", "1", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    report = decode_bench.run_benchmark(args)
    rows = {(r["setting"], r["model"]): r for r in report["rows"]}
    for setting in ("b1", "b3"):
        assert rows[(setting, "ct2")]["same_hyps_as"] == "transformer"
        assert all(rows[(setting, m)]["tokens"] == 6 * 6 for m in ("transformer", "ct2", "ct2-int8"))
        assert rows[(setting, "ct2")]["decoder_calls"] is None
    assert "CTranslate2 " in report["models"]["ct2-int8"]["source"]
    assert "| – | – |" in (tmp_path / "decode_bench.md").read_text()


def test_ctranslate2_rows_refuse_what_they_cannot_run(synthetic_bin: Path, tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    common = [str(synthetic_bin), "--max-sentences", "2", "--warmup", "0", "--out-dir", str(tmp_path)]
    lightconv = ["--random", f"lc={TINY} --arch kaleidoscope_lightconv"]
    with pytest.raises(SystemExit, match="CTranslate2 runs fairseq Transformers, model 'lc' is --arch"):
        decode_bench.run_benchmark(decode_bench.build_parser().parse_args(
            [*common, *lightconv, "--ctranslate2", "ct2=lc:int8", "--fixed-length", "3"]))
    transformer = ["--random", "t=" + " ".join(tiny_model_args("transformer", layers=(1, 1)))]
    with pytest.raises(SystemExit, match="CTranslate2 forces one length per call: use --fixed-length N, or batch 1"):
        decode_bench.run_benchmark(decode_bench.build_parser().parse_args(
            [*common, *transformer, "--ctranslate2", "ct2=t:int8", "--forced-length", "--setting", "b2:2:1"]))
    with pytest.raises(SystemExit, match="expected NAME=MODEL:COMPUTE_TYPE"):
        decode_bench.run_benchmark(decode_bench.build_parser().parse_args([*common, *transformer, "--ctranslate2",
                                                                           "ct2=t"]))


# ---------------------------------------------------------------- recipes end to end


@pytest.mark.slow
def test_main_job_end_to_end_memorises(tmp_path: Path) -> None:
    """The main job writes its table/JSON/plot and its reading; a short run translates its own training data well."""
    work = tmp_path / "demo"
    out = run(
        [
            *(sys.executable, "-m", "fairseq_kaleidoscope.recipes.main_job", "--work-dir", str(work)),
            *"--train-size 200 --test-size 20 --layers 1 --embed-dim 64 --max-tokens 600".split(),
            *"--max-update 250 --warmup 50 --lr 0.005 --dropout 0 --log-interval 50".split(),
            *"--speed-sentences 4 --repeats 1".split(),
        ]
    )
    assert "| quality | beam4 | dense |" in out and "| speed | batch1-greedy | kmatrix+int8 |" in out
    assert "Reading: at the paper's size the K-matrix decoder decodes" in out
    report = json.loads((work / "report.json").read_text())
    rows = {(r["part"], r["model"]): r for r in report["rows"]}
    assert set(rows) == {("quality", "dense"), ("quality", "kmatrix"),
                         ("speed", "dense"), ("speed", "dense-int8"), ("speed", "kmatrix"),
                         ("speed", "kmatrix+int8")}  # fmt: skip
    for r in rows.values():
        assert {"setting", "batch", "beam", "params", "kmatrix_params", "seconds", "speedup", "bleu"} <= set(r)
    assert rows[("quality", "dense")]["kmatrix_params"] == 0 < rows[("quality", "kmatrix")]["kmatrix_params"]
    assert rows[("speed", "kmatrix")]["params"] < rows[("speed", "dense")]["params"]
    assert all(rows[("speed", m)]["length_ratio"] == 1.0 for m in ("dense", "kmatrix"))  # forced lengths
    assert report["kernel_isa"] in ("avx512", "avx2", "neon", "portable")
    assert (work / "report.png").stat().st_size > 1000 and (work / "speed" / "decode_bench.json").is_file()
    # BLEU on the model's own training data (memorisation) after 250 updates
    for name in ("dense", "kmatrix"):
        out = run(
            [
                *(sys.executable, "-m", "fairseq_kaleidoscope.recipes.decode_bench", str(work / "data-bin")),
                *("--checkpoint", f"{name}={work / f'checkpoints_{name}' / 'checkpoint_last.pt'}"),
                *"--subset train --max-sentences 60 --setting greedy:16:1".split(),
                *("--out-dir", str(tmp_path / f"own_{name}")),
            ]
        )
        own = json.loads((tmp_path / f"own_{name}" / "decode_bench.json").read_text())["rows"][0]
        assert own["bleu_tokenized"] > 60, f"{name}: BLEU {own['bleu_tokenized']:.1f} on its training data"


@pytest.mark.slow
@pytest.mark.skipif(not IWSLT.is_dir(), reason=f"{IWSLT} not found (the shared IWSLT14 valid/test files)")
def test_iwslt14_recipe_end_to_end(tmp_path: Path) -> None:
    """prepare (BPE'd text) -> train both -> average + BLEU -> forced-length benchmark, on shared sentences."""
    text = tmp_path / "bpe"
    text.mkdir()
    for lang in ("de", "en"):
        valid = (IWSLT / f"valid.{lang}").read_text("utf-8").splitlines(True)
        test = (IWSLT / f"test.{lang}").read_text("utf-8").splitlines(True)
        (text / f"train.{lang}").write_text("".join(valid[:300]), "utf-8")
        (text / f"valid.{lang}").write_text("".join(valid[300:340]), "utf-8")
        (text / f"test.{lang}").write_text("".join(test[:40]), "utf-8")
    data = tmp_path / "bin"
    env = {"OUT": str(data), "WORK": str(tmp_path / "work")}
    run(["bash", "recipes/iwslt14_de_en/prepare.sh", "--bpe-dir", str(text)], **env)
    assert (data / "train.de-en.de.bin").is_file()
    for model in ("dense", "kmatrix"):
        save = tmp_path / f"ck_{model}"
        run(
            ["bash", "recipes/iwslt14_de_en/train.sh", model, *TINY_TRAIN, "--max-epoch", "2", "--warmup-updates", "5"],
            DATA=str(data),
            SAVE=str(save),
        )
        assert (save / "checkpoint2.pt").is_file()
        out = run(
            ["bash", "recipes/iwslt14_de_en/generate.sh", model, "--max-sentences", "10"],
            DATA=str(data),
            SAVE=str(save),
            NUM_AVG="2",
            OUT=str(tmp_path / f"gen_{model}"),
        )
        assert "BLEU" in out
        row = json.loads((tmp_path / f"gen_{model}" / "decode_bench.json").read_text())["rows"][0]
        assert row["model"] == model and 0 <= row["bleu_tokenized"] <= 100
    # a K-matrix student of the dense model, on its translations of the training set
    out = run(
        ["bash", "recipes/iwslt14_de_en/distill.sh", "scratch", *TINY_TRAIN, "--max-epoch", "1"],
        DATA=str(data),
        TEACHER=str(tmp_path / "ck_dense" / "checkpoint_best.pt"),
        SAVE=str(tmp_path / "ck_student"),
        BEAM="2",
    )
    assert "teacher decoding: 300 sentences" in out and (tmp_path / "ck_student" / "checkpoint1.pt").is_file()
    # valid/test-only binarization with the standard dictionary sizes, then the benchmark (tiny models)
    bench_data = tmp_path / "bench_bin"
    run(
        ["bash", "recipes/iwslt14_de_en/prepare.sh", "--bpe-dir", str(IWSLT)],
        OUT=str(bench_data),
        WORK=str(tmp_path / "work2"),
    )
    assert len((bench_data / "dict.en.txt").read_text().splitlines()) == 6632 - 4
    out = run(
        "bash recipes/iwslt14_de_en/benchmark.sh --max-sentences 8 --setting b1:1:1 --setting b4:4:4".split(),
        DATA=str(bench_data),
        OUT=str(tmp_path / "bench"),
        ARCH_OPTIONS=TINY,
    )
    report = json.loads((tmp_path / "bench" / "decode_bench.json").read_text())
    assert report["forced_length"] and report["sentences"] == 8
    rows = {(r["setting"], r["model"]): r for r in report["rows"]}
    for setting in ("b1", "b4"):
        assert (
            rows[(setting, "dense")]["decoder_hypothesis_steps"]
            == rows[(setting, "kmatrix")]["decoder_hypothesis_steps"]
            == rows[(setting, "kmatrix-int8")]["decoder_hypothesis_steps"]
        )
    assert (tmp_path / "bench" / "decode_bench.md").read_text().count("| b1 |") == 5
    if importlib.util.find_spec("ctranslate2") is not None:  # the optional CTranslate2 comparison rows
        run("bash recipes/iwslt14_de_en/benchmark.sh --ctranslate2 --max-sentences 4 --warmup 1".split(),
            DATA=str(bench_data), OUT=str(tmp_path / "ct2"), ARCH_OPTIONS=TINY, FIXED_LENGTH="5",
            TRANSFORMER_OPTIONS=" ".join(tiny_model_args("transformer", layers=(1, 1))))
        ct2_rows = json.loads((tmp_path / "ct2" / "decode_bench.json").read_text())["rows"]
        assert {r["model"] for r in ct2_rows} == {"fairseq-lightconv", "fairseq-transformer", "ct2-fp32", "ct2-int8",
                                                  "dense", "dense-int8", "kmatrix", "kmatrix-int8",
                                                  "kmatrix-int8-fairseq-search"}  # fmt: skip
        assert all(r["tokens"] == 5 * 4 for r in ct2_rows) and len(ct2_rows) == 9 * 3
        assert all(r["same_hyps_as"] == "fairseq-transformer" for r in ct2_rows if r["model"] == "ct2-fp32")
        # the lean search loop gives fairseq's hypotheses, greedy and beam
        assert all(r["same_hyps_as"] == "kmatrix-int8" for r in ct2_rows if r["model"] == "kmatrix-int8-fairseq-search")
    for setting in ("b1", "b4"):
        # the same K-matrix weights through the reference decoding step: the same outputs
        assert rows[(setting, "kmatrix-reference")]["same_hyps_as"] == "kmatrix"
    assert "--int8-dense all" in report["models"]["dense-int8"]["source"]


@pytest.mark.slow
@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"{MULTI30K} not found (the shared Multi30k files)")
def test_multi30k_recipe_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "bin"
    run(
        ["bash", "recipes/multi30k_de_en/prepare.sh", "--bpe-size", "400"],
        OUT=str(data),
        WORK=str(tmp_path / "work"),
        MAX_TRAIN="300",
        SRC=str(MULTI30K),
    )
    for model in ("dense", "kmatrix"):
        run(
            ["bash", "recipes/multi30k_de_en/train.sh", model, *TINY_TRAIN, "--max-epoch", "2"],
            DATA=str(data),
            SAVE=str(tmp_path / f"ck_{model}"),
            THREADS="1",
        )
    run(
        ["bash", "recipes/multi30k_de_en/evaluate.sh", "--max-sentences", "10"],
        DATA=str(data),
        MODELS=f"dense={tmp_path / 'ck_dense'} kmatrix={tmp_path / 'ck_kmatrix'}",
        CHECKPOINT="avg2",
        OUT=str(tmp_path / "eval"),
    )
    report = json.loads((tmp_path / "eval" / "decode_bench.json").read_text())
    assert not report["forced_length"]
    assert {(r["setting"], r["model"]) for r in report["rows"]} == {
        (s, m)
        for s in ("batch128-beam5", "batch1-greedy", "batch128-beam4")
        for m in ("dense", "dense-int8", "kmatrix", "kmatrix-int8")
    }
    sources = report["models"]
    assert sources["dense"]["source"].endswith("checkpoint_avg2.pt")
    assert sources["dense"]["training"]["epoch"] == 2 and "valid_loss" not in sources["dense"]["training"]
    run(
        ["bash", "recipes/multi30k_de_en/evaluate.sh", "--max-sentences", "4", "--setting", "b1:1:1"],
        DATA=str(data),
        MODELS=f"dense={tmp_path / 'ck_dense'}",
        CHECKPOINT="best",
        OUT=str(tmp_path / "eval_best"),
    )
    best = json.loads((tmp_path / "eval_best" / "decode_bench.json").read_text())["models"]["dense"]
    assert best["source"].endswith("checkpoint_best.pt") and best["training"]["valid_loss"] > 0
    assert "| valid loss (base 2) |" in (tmp_path / "eval_best" / "decode_bench.md").read_text()
    assert "--int8-dense all" in sources["dense-int8"]["source"]
    assert "--int8-dense encoder,output_projection" in sources["kmatrix-int8"]["source"]
