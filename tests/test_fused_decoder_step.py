"""The fused decoder-layer step (one ``lightconv_decoder_step`` call) equals ``step_reference``."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("fairseq")

from conftest import build_tiny_model

from fairseq_kaleidoscope.modules import fused_decoder_step
from fairseq_kaleidoscope.modules.fused_decoder_step import FusedDecoderStep, has_fused_decoder_step
from fairseq_kaleidoscope.modules.int8_dense import quantize_dense_linears

pytestmark = pytest.mark.skipif(not has_fused_decoder_step(), reason="compiled extension not built")

VOCAB, DIM, HEADS = 40, 32, 4


def _layers(spec: str, *options: str) -> torch.nn.ModuleList:
    # Decoder kernels 1, 3 and 15 around 8 decoded positions: a ring of one slot, one that wraps,
    # one longer than the sentence.
    model, _ = build_tiny_model("kaleidoscope_lightconv_iwslt_de_en", "--kmatrix-layers", spec, "--kmatrix-init",
                                "randn", *options, vocab=VOCAB, seed=0, layers=(1, 3), heads=HEADS,
                                kernels=("[3]", "[1,3,15]"))
    return model.eval().decoder.layers


def _decode(layer: torch.nn.Module, xs: list[torch.Tensor], encoder: tuple | None, beam: int,
            reference: bool) -> list[torch.Tensor]:
    """Step ``layer`` through ``xs`` (each (B, C)); with a beam, the hypotheses are shuffled
    within their sentence after every step, as beam search does."""
    layer.reference_step = reference
    layer.need_attn = False  # as fairseq-generate sets it (make_generation_fast_) unless alignments are printed
    layer.encoder_attn.set_beam_size(beam)
    enc, pad, rows = encoder if encoder is not None else (None, None, None)
    with torch.no_grad():
        state = layer.allocate_state(xs[0], enc, pad, rows, {})
        assert (state.fused is None) == reference
        g = torch.Generator().manual_seed(1)
        outs = []
        for x in xs:
            outs.append(layer.step(x, state)[0])
            B = x.size(0)
            if beam == 1:  # any row may continue any other's history
                state.reorder(torch.randperm(B, generator=g))
            else:
                within = torch.stack([torch.randperm(beam, generator=g) for _ in range(B // beam)])
                state.reorder((within + torch.arange(0, B, beam)[:, None]).flatten())
    return outs


def _encoder(sentences: int, beam: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    S = 7
    enc = torch.randn(S, sentences, DIM)
    pad = None
    if padded:  # left padding of different lengths, as fairseq batches sources
        pad = torch.arange(S)[None, :] < (torch.arange(sentences) % 4)[:, None]
    return enc, pad, torch.arange(sentences).repeat_interleave(beam)


OPTIONS = [(), ("--decoder-normalize-before",), ("--decoder-glu", "1"),
           ("--weight-softmax", "0", "--decoder-conv-dim", "48")]
BATCHES = [(1, 1, False), (5, 1, True), (3, 4, True)]  # (sentences, beam, padded sources)


@pytest.mark.parametrize("spec", ["none", "decoder.all"])
@pytest.mark.parametrize(("options", "batch"), [*((o, BATCHES[-1]) for o in OPTIONS),
                                                *((OPTIONS[0], b) for b in BATCHES[:-1])])
def test_fused_step_equals_the_reference_step(options: tuple[str, ...], batch: tuple[int, int, bool],
                                              spec: str) -> None:
    sentences, beam, padded = batch
    torch.manual_seed(0)
    encoder = _encoder(sentences, beam, padded)
    xs = [torch.randn(sentences * beam, DIM) for _ in range(8)]
    for layer in _layers(spec, *options):
        expected = _decode(layer, xs, encoder, beam, reference=True)
        got = _decode(layer, xs, encoder, beam, reference=False)
        for t, (e, g) in enumerate(zip(expected, got, strict=True)):
            torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-5, msg=lambda m, t=t: f"position {t}: {m}")


def test_fused_step_without_an_encoder() -> None:
    torch.manual_seed(0)
    xs = [torch.randn(2, DIM) for _ in range(5)]
    for layer in _layers("decoder.all"):
        expected = _decode(layer, xs, None, 1, reference=True)
        for e, g in zip(expected, _decode(layer, xs, None, 1, reference=False), strict=True):
            torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-5)


def test_step_takes_the_reference_path_for_alignments_and_gradients() -> None:
    layer = _layers("decoder.all")[1]
    enc, pad, rows = _encoder(2, 1, padded=True)
    x = torch.randn(2, DIM)
    with torch.no_grad():
        state = layer.allocate_state(x, enc, pad, rows, {})
    assert isinstance(state.fused, FusedDecoderStep)
    layer.need_attn = True
    with torch.no_grad():
        assert layer.step(x, state)[1] is not None  # the attention weights: only the reference computes them
    layer.need_attn = False
    y = layer.step(x.requires_grad_(), state)[0]  # grad mode: the reference, differentiable
    y.sum().backward()
    assert x.grad is not None and layer.fc2.bias.grad is not None


def test_the_op_refuses_inputs_that_want_a_gradient() -> None:
    layer = _layers("none")[0]
    with torch.no_grad():
        state = layer.allocate_state(torch.zeros(1, DIM), None, None, None, {})
    with pytest.raises(RuntimeError, match="inference and has no gradient"):
        state.fused(torch.zeros(1, DIM, requires_grad=True), state)


def _quantized(layer: torch.nn.Module, spec: str, encoder: tuple | None, x: torch.Tensor) -> torch.nn.Module:
    """``layer`` with its dense sub-layers in int8, checked to be planned into the op."""
    assert quantize_dense_linears(layer, "all")
    with torch.no_grad():
        planned = layer.allocate_state(x, *(encoder or (None, None, None)), {}).fused
    assert planned is not None
    int8 = (7 if encoder else 5) - (2 if spec == "decoder.ffn" else 0)  # no encoder: no attention sub-layers
    assert sum(p is not None for p in planned.int8_linears) == int8
    return layer


@pytest.mark.parametrize("spec", ["none", "decoder.ffn"])
@pytest.mark.parametrize("batch", [BATCHES[0], BATCHES[-1]])
def test_int8_sublayers_in_the_fused_step_give_the_reference_bits(batch: tuple[int, int, bool], spec: str) -> None:
    """``--int8-dense`` sub-layers run inside the op through the same quantized::linear_dynamic call
    as the module's forward. Pre-norm without an encoder, both paths feed every int8 sub-layer
    the same bits (ATen's layer norm, the same residual adds and conv step), so the outputs must
    be bitwise equal: a tolerance would let through a quantization difference (reduce_range)."""
    sentences, beam, _ = batch
    torch.manual_seed(0)
    xs = [torch.randn(sentences * beam, DIM) for _ in range(8)]
    for layer in _layers(spec, "--decoder-normalize-before"):
        layer = _quantized(layer, spec, None, xs[0])
        expected = _decode(layer, xs, None, beam, reference=True)
        for t, (e, g) in enumerate(zip(expected, _decode(layer, xs, None, beam, reference=False), strict=True)):
            assert torch.equal(g, e), f"position {t}: max difference {(g - e).abs().max():.3g}"


@pytest.mark.parametrize("spec", ["none", "decoder.ffn"])
@pytest.mark.parametrize(("options", "batch"), [(OPTIONS[0], BATCHES[-1]), (OPTIONS[2], BATCHES[1])])
def test_int8_sublayers_in_the_fused_step_with_attention_and_post_norm(options: tuple[str, ...],
                                                                        batch: tuple[int, int, bool],
                                                                        spec: str) -> None:
    """With encoder attention and post-norm the two paths differ in the last bits before an int8
    sub-layer (bmm against SDPA attention, the fused add + layer norm), as in fp32."""
    sentences, beam, padded = batch
    torch.manual_seed(0)
    encoder = _encoder(sentences, beam, padded)
    xs = [torch.randn(sentences * beam, DIM) for _ in range(8)]
    for layer in _layers(spec, *options):
        layer = _quantized(layer, spec, encoder, xs[0])
        expected = _decode(layer, xs, encoder, beam, reference=True)
        got = _decode(layer, xs, encoder, beam, reference=False)
        for t, (e, g) in enumerate(zip(expected, got, strict=True)):
            torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-5, msg=lambda m, t=t: f"position {t}: {m}")


def test_float16_int8_sublayers_decode_with_the_reference_step(caplog: pytest.LogCaptureFixture) -> None:
    layer = _layers("none")[0]
    for name in ("linear1",):
        linear = getattr(layer, name)
        linear.qconfig = torch.ao.quantization.float16_dynamic_qconfig
        setattr(layer, name, torch.ao.nn.quantized.dynamic.Linear.from_float(linear))
    fused_decoder_step._log_fallback.cache_clear()  # the reason is logged once per process
    with caplog.at_level(logging.INFO), torch.no_grad():
        state = layer.allocate_state(torch.zeros(1, DIM), None, None, None, {})
    assert state.fused is None
    assert "plain-PyTorch step (sub-layer conv_in is a torch.float16 dynamic-quantized linear" in caplog.text


def test_direct_op_calls_with_bad_arguments_raise_typed_errors() -> None:
    """The op reads float32 rows through raw pointers in places: anything else is an error, not a crash."""
    layer = _layers("decoder.all")[0]
    enc, pad, rows = _encoder(1, 1, False)
    with torch.no_grad():
        state = layer.allocate_state(torch.zeros(1, DIM), enc, pad, rows, {})
        f, conv, attn = state.fused, state.conv, state.attn

        def call(x=None, norms=None, key=None):
            return torch.ops.kaleidoscope.lightconv_decoder_step(
                torch.zeros(1, DIM) if x is None else x, f.linears, f.int8_linears, f.out_features,
                f.norms if norms is None else norms, f.eps, conv.ring, conv.steps, f.softmax, f.glu,
                attn.key if key is None else key, attn.value, attn.padding_mask, f.scaling, f.pre)

        call()  # the arguments as the layer passes them
        with pytest.raises(TypeError, match="runs in float32"):
            call(norms=[n.double() for n in f.norms])
        with pytest.raises(ValueError, match=f"layer-norm weight and bias must have {DIM} elements, got {DIM - 1}"):
            call(norms=[n[:-1] for n in f.norms])
        with pytest.raises(ValueError, match="key and value must be contiguous"):
            call(key=attn.key.transpose(2, 3).contiguous().transpose(2, 3))
