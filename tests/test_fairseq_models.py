"""The registered architectures: K-matrices where --kmatrix-layers says, decoding, configs, optimizer groups."""

import argparse

import pytest
import torch

pytest.importorskip("fairseq")

from conftest import build_tiny_model, tiny_model_args
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer
from omegaconf import OmegaConf

from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear
from fairseq_kaleidoscope.models.builder import (
    DictionaryTask,
    build_model_from_args,
    build_model_from_config,
    dummy_dictionary,
)

ARCHS = ("kaleidoscope_lightconv_iwslt_de_en", "kaleidoscope_lightconv", "kaleidoscope_transformer_iwslt_de_en")
SRC_VOCAB, TGT_VOCAB = 30, 26

# Module path (inside one layer) of every sub-layer name.
LIGHTCONV_PATHS = {
    "conv_in": "linear1", "conv_weight": "conv.weight_linear", "conv_out": "linear2", "fc1": "fc1", "fc2": "fc2",
    "attn_q": "encoder_attn.q_proj", "attn_k": "encoder_attn.k_proj", "attn_v": "encoder_attn.v_proj",
    "attn_out": "encoder_attn.out_proj",
}  # fmt: skip
TRANSFORMER_PATHS = {
    "self_attn_q": "self_attn.q_proj", "self_attn_k": "self_attn.k_proj", "self_attn_v": "self_attn.v_proj",
    "self_attn_out": "self_attn.out_proj", "fc1": "fc1", "fc2": "fc2",
    "attn_q": "encoder_attn.q_proj", "attn_k": "encoder_attn.k_proj", "attn_v": "encoder_attn.v_proj",
    "attn_out": "encoder_attn.out_proj",
}  # fmt: skip


def build(arch: str, *extra: str):
    return build_tiny_model(arch, *extra, vocab=(SRC_VOCAB, TGT_VOCAB))


def kmatrix_paths(model: torch.nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, KaleidoscopeLinear)}


def expected_paths(model: torch.nn.Module, side_names: dict[str, list[str]], paths: dict[str, str]) -> set[str]:
    out = set()
    for side, names in side_names.items():
        for i in range(len(getattr(model, side).layers)):
            out.update(f"{side}.layers.{i}.{paths[n]}" for n in names if n != "output_projection")
        if "output_projection" in names:
            out.add(f"{side}.output_projection")
    return out


LIGHTCONV_CASES = [
    ("", {"decoder": ["conv_in", "conv_weight", "conv_out", "attn_q", "attn_k", "attn_v", "attn_out", "fc1", "fc2"]}),
    ("none", {}),
    ("encoder.ffn", {"encoder": ["fc1", "fc2"]}),
    ("encoder.conv,decoder.attn_q,decoder.fc2", {"encoder": ["conv_in", "conv_weight", "conv_out"],
                                                  "decoder": ["attn_q", "fc2"]}),
    ("decoder.conv_weight,decoder.output_projection", {"decoder": ["conv_weight", "output_projection"]}),
    ("encoder.all", {"encoder": ["conv_in", "conv_weight", "conv_out", "fc1", "fc2"]}),
]  # fmt: skip
TRANSFORMER_CASES = [
    ("", {"decoder": ["self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out",
                      "attn_q", "attn_k", "attn_v", "attn_out", "fc1", "fc2"]}),
    ("none", {}),
    ("encoder.self_attn,decoder.attn", {"encoder": ["self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out"],
                                        "decoder": ["attn_q", "attn_k", "attn_v", "attn_out"]}),
    ("encoder.fc1,decoder.self_attn_v,decoder.output_projection",
     {"encoder": ["fc1"], "decoder": ["self_attn_v", "output_projection"]}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "spec", "expected"),
    [("kaleidoscope_lightconv_iwslt_de_en", *case) for case in LIGHTCONV_CASES]
    + [("kaleidoscope_lightconv", *case) for case in LIGHTCONV_CASES[:3:2]],
)
def test_lightconv_kmatrices_exactly_where_asked(arch: str, spec: str, expected: dict) -> None:
    model, cfg = build(arch, *(["--kmatrix-layers", spec] if spec else []))
    assert kmatrix_paths(model) == expected_paths(model, expected, LIGHTCONV_PATHS)
    if not spec:
        assert cfg.kmatrix_layers == "decoder.all"
    # Every other linear map stays an nn.Linear; nothing left unused.
    assert all(
        isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n.endswith(("_proj", "linear1", "fc1"))
        and n not in kmatrix_paths(model)
    )


@pytest.mark.parametrize(("spec", "expected"), TRANSFORMER_CASES)
def test_transformer_kmatrices_exactly_where_asked(spec: str, expected: dict) -> None:
    model, _ = build("kaleidoscope_transformer_iwslt_de_en", *(["--kmatrix-layers", spec] if spec else []))
    assert kmatrix_paths(model) == expected_paths(model, expected, TRANSFORMER_PATHS)


def test_options_reach_the_kmatrices() -> None:
    model, cfg = build("kaleidoscope_lightconv", "--kmatrix-nblocks", "2", "--kmatrix-init", "identity",
                       "--kmatrix-layers", "decoder.fc1")  # fmt: skip
    kmats = [m for m in model.modules() if isinstance(m, KaleidoscopeLinear)]
    assert len(kmats) == len(model.decoder.layers)
    assert all((k.nblocks, k.init) == (2, "identity") for k in kmats)
    assert (cfg.kmatrix_nblocks, str(cfg.kmatrix_init)) == (2, "identity")


def test_iwslt_architecture_is_fairseqs_lightconv_iwslt_without_glu() -> None:
    from fairseq.models.lightconv import lightconv_iwslt_de_en

    _, cfg = build_model_from_args(["--arch", "kaleidoscope_lightconv_iwslt_de_en", "--kmatrix-layers", "none"],
                                   SRC_VOCAB, TGT_VOCAB)  # fmt: skip
    theirs = argparse.Namespace(encoder_glu=False, decoder_glu=False)
    lightconv_iwslt_de_en(theirs)
    for name in cfg:
        if name.startswith(("kmatrix", "_")) or not hasattr(theirs, name):
            continue
        ours = cfg[name] if cfg[name] is not None else cfg[name.replace("conv", "embed")]
        assert ours == getattr(theirs, name) or list(ours) == list(getattr(theirs, name)), name


def test_dense_model_computes_what_fairseqs_lightconv_computes() -> None:
    """Same parameter names and outputs as fairseq's lightconv (sequences at least as long as the kernels)."""
    common = ["--dropout", "0", "--weight-dropout", "0", "--attention-dropout", "0", *tiny_model_args()]
    torch.manual_seed(0)
    theirs, _ = build_model_from_args(["--arch", "lightconv_iwslt_de_en", "--encoder-glu", "0", "--decoder-glu", "0",
                                       *common], SRC_VOCAB, TGT_VOCAB)  # fmt: skip
    ours, _ = build_model_from_args(["--arch", "kaleidoscope_lightconv_iwslt_de_en", "--kmatrix-layers", "none",
                                     *common], SRC_VOCAB, TGT_VOCAB)  # fmt: skip
    their_state = theirs.state_dict()
    unused = {k for k in their_state if k.endswith("conv.conv_bias")}  # registered but never used upstream
    assert unused and set(their_state) - unused == set(ours.state_dict())
    ours.load_state_dict(their_state)  # fairseq's load_state_dict upgrades: the unused conv_bias is dropped
    theirs.eval(), ours.eval()
    src, prev = torch.randint(4, SRC_VOCAB, (2, 9)), torch.randint(4, TGT_VOCAB, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(ours(src, torch.full((2,), 9), prev)[0], theirs(src, torch.full((2,), 9), prev)[0])
    # Left-padded sources of different lengths, as fairseq batches them: our encoder layers skip pad positions
    # (zeros there in its output), fairseq's compute them; the token positions and the decoder agree.
    src = torch.randint(4, SRC_VOCAB, (4, 11))
    lengths = torch.tensor([11, 8, 3, 6])
    for row, n in enumerate(lengths.tolist()):
        src[row, : 11 - n] = 1
    prev = torch.randint(4, TGT_VOCAB, (4, 8))
    with torch.no_grad():
        torch.testing.assert_close(ours(src, lengths, prev)[0], theirs(src, lengths, prev)[0])
        enc_ours, enc_theirs = ours.encoder(src, lengths), theirs.encoder(src, lengths)
    tokens = src.ne(1).t()  # (T, B)
    out_ours, out_theirs = enc_ours["encoder_out"][0], enc_theirs["encoder_out"][0]
    torch.testing.assert_close(out_ours[tokens], out_theirs[tokens])
    assert bool(out_ours[~tokens].eq(0).all()) and not bool(out_theirs[~tokens].eq(0).all())


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("decoder.fc3", "decoder.fc3"),
        ("encoder.attn_q", "encoder.attn_q"),  # lightconv encoders have no attention
        ("middle.fc1", "middle.fc1"),
        ("decoder", "'decoder'"),
    ],
)
def test_unknown_kmatrix_layers_are_rejected_with_the_valid_names(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        build("kaleidoscope_lightconv", "--kmatrix-layers", spec)
    for valid in ("encoder.{conv_in,conv_weight,conv_out,fc1,fc2", "decoder.{", "attn_q", "output_projection", "none"):
        assert valid in str(err.value)


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        (["--kmatrix-layers", ""], ValueError, r"--kmatrix-layers is empty.*'none' for a dense model"),
        (["--kmatrix-layers", " , "], ValueError, r"--kmatrix-layers is empty"),
        (["--kmatrix-lr-scale", "-1"], ValueError, r"--kmatrix-lr-scale must be a positive number, got -1"),
        (["--kmatrix-lr-scale", "0"], ValueError, r"--kmatrix-lr-scale must be a positive number"),
        (["--kmatrix-lr-scale", "nan"], ValueError, r"--kmatrix-lr-scale must be a positive number"),
        (["--kmatrix-nblocks", "0"], ValueError, r"--kmatrix-nblocks must be an integer >= 1, got 0"),
    ],
)
@pytest.mark.parametrize("arch", ["kaleidoscope_lightconv", "kaleidoscope_transformer_iwslt_de_en"])
def test_bad_kmatrix_options_are_refused_naming_the_option(arch: str, extra: list, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build(arch, *extra)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_int8_dense_is_refused_for_training(arch: str) -> None:
    model, _cfg = build(arch, "--int8-dense", "output_projection")
    model.eval()  # decoding with it is what it is for
    with pytest.raises(ValueError, match=r"--int8-dense output_projection is inference-only.*--model-overrides"):
        model.train()
    dense_model, _cfg = build(arch)
    dense_model.train()  # the default stays trainable


def test_tied_output_projection_cannot_be_a_kmatrix() -> None:
    with pytest.raises(ValueError, match="tied"):
        build("kaleidoscope_transformer_iwslt_de_en", "--share-decoder-input-output-embed",
              "--kmatrix-layers", "decoder.output_projection")  # fmt: skip


def _decode_both_ways(model: torch.nn.Module, tgt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model.eval()
    src = torch.randint(4, SRC_VOCAB, (3, 6))
    src[0, :2] = 1  # left padding, as fairseq batches sources
    lengths = (src != 1).sum(1)
    prev = torch.randint(4, TGT_VOCAB, (3, tgt_len))
    prev[:, 0] = 2
    with torch.no_grad():
        full, _ = model(src, lengths, prev)
        enc = model.encoder(src, lengths)
        state: dict = {}
        steps = [model.decoder(prev[:, : t + 1], enc, incremental_state=state)[0] for t in range(tgt_len)]
    return full, torch.cat(steps, 1)


@pytest.mark.parametrize("tgt_len", [4, 12])  # shorter and longer than the decoder's 7-tap kernel
@pytest.mark.parametrize(
    ("arch", "spec"),
    [
        ("kaleidoscope_lightconv_iwslt_de_en", "decoder.all,decoder.output_projection"),
        ("kaleidoscope_lightconv", "none"),
        ("kaleidoscope_transformer_iwslt_de_en", "encoder.all,decoder.all"),
    ],
)
def test_incremental_decoding_equals_full_forward(arch: str, spec: str, tgt_len: int) -> None:
    model, _ = build(arch, "--kmatrix-layers", spec, "--kmatrix-init", "randn")
    full, incremental = _decode_both_ways(model, tgt_len)
    assert full.shape == (3, tgt_len, TGT_VOCAB)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_saved_config_rebuilds_the_same_model(arch: str) -> None:
    model, cfg = build(arch, "--kmatrix-layers", "encoder.ffn,decoder.all", "--kmatrix-nblocks", "2")
    # What a checkpoint stores: plain containers, read back as an OmegaConf config.
    saved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    src, tgt = dummy_dictionary(SRC_VOCAB), dummy_dictionary(TGT_VOCAB)
    rebuilt = build_model_from_config(saved, src, tgt)
    assert kmatrix_paths(rebuilt) == kmatrix_paths(model)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    a, _ = _decode_both_ways(model, 5)
    b, _ = _decode_both_ways(rebuilt, 5)
    torch.testing.assert_close(a, b)


def _trainer(arch: str, *extra: str) -> Trainer:
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        "unused-data-dir", *tiny_model_args(arch), "--cpu",
        "--optimizer", "adam", "--lr", "0.002", "--weight-decay", "0.01",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10", "--warmup-init-lr", "1e-7", *extra,
    ])  # fmt: skip
    cfg = convert_namespace_to_omegaconf(args)
    task = DictionaryTask(dummy_dictionary(SRC_VOCAB), dummy_dictionary(TGT_VOCAB))
    model, _ = build(arch, *extra)
    criterion = torch.nn.Module()  # no parameters; the trainer only collects them
    return Trainer(cfg, task, model, criterion)


@pytest.mark.parametrize("arch", ["kaleidoscope_lightconv_iwslt_de_en", "kaleidoscope_transformer_iwslt_de_en"])
def test_trainer_optimizer_scales_lr_and_skips_weight_decay_for_kmatrices(arch: str) -> None:
    trainer = _trainer(arch, "--kmatrix-lr-scale", "3")
    twiddles = {id(m.twiddle) for m in trainer.model.modules() if isinstance(m, KaleidoscopeLinear)}
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2
    dense, kmat = groups
    assert {id(p) for p in kmat["params"]} == twiddles
    assert not twiddles & {id(p) for p in dense["params"]}
    assert (dense["weight_decay"], kmat["weight_decay"]) == (0.01, 0.0)
    for num_updates in (0, 5, 40):  # warm-up and decay: the ratio holds at every step
        lr = trainer.lr_step_update() if num_updates == 0 else trainer.lr_scheduler.step_update(num_updates)
        assert trainer.get_lr() == pytest.approx(lr)
        assert kmat["lr"] == pytest.approx(3 * dense["lr"])
        assert dense["lr"] == pytest.approx(lr)


def test_fp16_with_flat_gradients_keeps_the_kmatrix_lr_scale_and_no_weight_decay(monkeypatch) -> None:
    """fairseq's default --fp16 flattens all fp32 master weights into one tensor, which would drop the
    tags: for tagged models flattening is turned off instead."""
    from fairseq import optim
    from fairseq.optim import lr_scheduler

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # the flat path asks for a GPU id, nothing more
    arch = "kaleidoscope_lightconv_iwslt_de_en"
    argv = [*tiny_model_args(arch), "--kmatrix-lr-scale", "3"]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=[
        "unused-data-dir", *argv, "--cpu", "--fp16", "--optimizer", "adam", "--lr", "0.002",
        "--weight-decay", "0.01", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
    ])  # fmt: skip
    cfg = convert_namespace_to_omegaconf(args)
    assert not cfg.common.fp16_no_flatten_grads
    model, _ = build_model_from_args(argv, SRC_VOCAB, TGT_VOCAB)
    opt = optim.FP16Optimizer.build_optimizer(cfg, list(model.half().parameters()))
    lr = lr_scheduler.build_lr_scheduler(cfg.lr_scheduler, opt).step_update(5)
    dense, kmat = opt.param_groups
    ntwiddles = sum(isinstance(m, KaleidoscopeLinear) for m in model.modules())
    assert len(kmat["params"]) == ntwiddles and all(p.dtype == torch.float32 for p in kmat["params"])
    assert (dense["weight_decay"], kmat["weight_decay"]) == (0.01, 0.0)
    assert (dense["lr"], kmat["lr"]) == (pytest.approx(lr), pytest.approx(3 * lr))


def test_trainer_optimizer_is_unchanged_for_dense_models() -> None:
    trainer = _trainer("kaleidoscope_lightconv", "--kmatrix-layers", "none")
    (group,) = trainer.optimizer.param_groups
    assert group["weight_decay"] == 0.01 and "lr_scale" not in group


def test_kmatrix_parameters_carry_fairseqs_own_group_tags() -> None:
    """``--optimizer composite`` users get the same scaling from fairseq's tags."""
    model, _ = build("kaleidoscope_lightconv", "--kmatrix-lr-scale", "0.5")
    for m in model.modules():
        if isinstance(m, KaleidoscopeLinear):
            assert m.twiddle.param_group == "kmatrix"
            assert m.twiddle.optim_overrides == {"optimizer": {"lr_scale": 0.5, "weight_decay_scale": 0.0}}
            assert m.twiddle._optim["weight_decay"] == 0.0


def test_namespace_built_model_matches_dataclass_built_model() -> None:
    """``build_model`` also accepts an argparse.Namespace (as older fairseq entry points pass)."""
    from fairseq_kaleidoscope.models.kaleidoscope_lightconv import KaleidoscopeLightConvModel, lightconv_iwslt_de_en

    ns = argparse.Namespace(kmatrix_layers="decoder.ffn")
    lightconv_iwslt_de_en(ns)
    ns.encoder_layers, ns.decoder_layers = 1, 1
    ns.encoder_kernel_size_list, ns.decoder_kernel_size_list = [3], [3]
    task = DictionaryTask(dummy_dictionary(SRC_VOCAB), dummy_dictionary(TGT_VOCAB))
    model = KaleidoscopeLightConvModel.build_model(ns, task)
    assert kmatrix_paths(model) == {"decoder.layers.0.fc1", "decoder.layers.0.fc2"}


def test_parameter_count_drops_by_exactly_the_replaced_weights() -> None:
    from fairseq_kaleidoscope.models.param_count import count

    dense, _ = build("kaleidoscope_lightconv_iwslt_de_en", "--kmatrix-layers", "none")
    kmat, _ = build("kaleidoscope_lightconv_iwslt_de_en")
    swapped = kmatrix_paths(kmat)
    replaced = sum(m.weight.numel() for n, m in dense.named_modules() if n in swapped)
    c_dense, c_kmat = count(dense), count(kmat)
    assert c_kmat["total"] == c_dense["total"] - replaced + c_kmat["twiddles"]
    assert c_kmat["twiddles"] > 0 and c_kmat["total"] < c_dense["total"]
