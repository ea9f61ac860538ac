"""--int8-dense: the dense remainder of a model in int8 at inference; K-matrices untouched."""

import pytest
import torch
from torch import nn

pytest.importorskip("fairseq")

from conftest import build_tiny_model
from fairseq.sequence_generator import SequenceGenerator
from omegaconf import OmegaConf

from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear
from fairseq_kaleidoscope.models.builder import dummy_dictionary
from fairseq_kaleidoscope.modules.int8_dense import parse_int8_dense, quantize_dense_linears

LIGHTCONV, TRANSFORMER = "kaleidoscope_lightconv_iwslt_de_en", "kaleidoscope_transformer_iwslt_de_en"
VOCAB = 30
QLinear = torch.ao.nn.quantized.dynamic.Linear
GENERATION_CFG = OmegaConf.create({"generation": {"beam": 2, "print_alignment": False}})


def _model(arch: str, spec: str, *extra: str) -> nn.Module:
    model, _ = build_tiny_model(arch, "--kmatrix-layers", spec, *extra, vocab=VOCAB, seed=0)
    return model.eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, VOCAB, (4, 7), generator=g)
    prev = torch.randint(4, VOCAB, (4, 6), generator=g)
    return src, torch.full((4,), 7), prev


def test_parse_int8_dense() -> None:
    assert parse_int8_dense("none") == frozenset()
    assert parse_int8_dense("encoder, output_projection") == {"encoder", "output_projection"}
    with pytest.raises(ValueError, match=r"unknown part.*'decodr'"):
        parse_int8_dense("decodr")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("output_projection", {"decoder.output_projection"}),
        ("encoder", {"encoder.layers.0.linear1", "encoder.layers.0.linear2", "encoder.layers.0.fc1",
                     "encoder.layers.0.fc2", "encoder.layers.0.conv.weight_linear"}),
    ],
)  # fmt: skip
def test_quantizes_exactly_the_chosen_dense_layers(spec: str, expected: set[str]) -> None:
    model = _model(LIGHTCONV, "decoder.all")
    kmatrices = {n for n, m in model.named_modules() if isinstance(m, KaleidoscopeLinear)}
    assert set(quantize_dense_linears(model, spec)) == expected
    assert {n for n, m in model.named_modules() if isinstance(m, QLinear)} == expected
    assert {n for n, m in model.named_modules() if isinstance(m, KaleidoscopeLinear)} == kmatrices


@pytest.mark.parametrize("arch", [LIGHTCONV, TRANSFORMER], ids=["lightconv", "transformer"])
def test_int8_model_stays_close_to_float_and_decodes(arch: str) -> None:
    model = _model(arch, "none")
    src, lengths, prev = _batch()
    with torch.no_grad():
        ref, _ = model(src, lengths, prev)
        assert len(quantize_dense_linears(model, "all")) > 0
        assert not any(type(m) is nn.Linear for m in model.modules())
        out, _ = model(src, lengths, prev)  # the full-sequence path (fairseq's fused attention for the transformer)
    assert (out - ref).norm() / ref.norm() < 0.05
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    gen = SequenceGenerator([model], dummy_dictionary(VOCAB), beam_size=2, max_len_b=8)
    hyps = gen.generate([model], {"net_input": {"src_tokens": src, "src_lengths": lengths}})
    assert len(hyps) == 4 and all(len(h) == 2 for h in hyps)


@pytest.mark.parametrize("arch", [LIGHTCONV, TRANSFORMER], ids=["lightconv", "transformer"])
def test_option_is_applied_by_prepare_for_inference(arch: str) -> None:
    model = _model(arch, "decoder.fc1", "--int8-dense", "output_projection")
    assert not any(isinstance(m, QLinear) for m in model.modules())  # weights load into float layers first
    model.prepare_for_inference_(GENERATION_CFG)
    assert model.int8_layers == ["decoder.output_projection"]
    assert isinstance(model.decoder.output_projection, QLinear)


def test_bad_option_fails_when_the_model_is_built() -> None:
    with pytest.raises(ValueError, match="--int8-dense"):
        _model(LIGHTCONV, "none", "--int8-dense", "vocab")


def test_training_mode_is_refused() -> None:
    model = _model(LIGHTCONV, "none").train()
    with pytest.raises(ValueError, match="eval"):
        quantize_dense_linears(model, "all")
