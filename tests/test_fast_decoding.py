"""The decoding step (layers' ``step`` on typed states) gives what the full forward gives, in fairseq's search."""

import pytest
import torch

pytest.importorskip("fairseq")

from conftest import build_tiny_model
from fairseq.sequence_generator import SequenceGenerator

from fairseq_kaleidoscope.models.builder import dummy_dictionary
from fairseq_kaleidoscope.modules.fused_decoder_step import FusedDecoderStep, has_fused_decoder_step
from fairseq_kaleidoscope.modules.lightconv_layers import LightConvDecoderLayerState

VOCAB = 40


def _model(spec: str, seed: int = 0) -> torch.nn.Module:
    model, _ = build_tiny_model("kaleidoscope_lightconv_iwslt_de_en", "--kmatrix-layers", spec, "--kmatrix-init",
                                "randn", vocab=VOCAB, seed=seed, layers=(1, 3), heads=4, kernels=("[3]", "[1,3,15]"))
    return model.eval()


def _sample(batch: int) -> dict:
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, VOCAB, (batch, 9), generator=g)
    for i in range(batch):  # left padding of different lengths, as fairseq batches sources
        src[i, : i % 4] = 1
    return {"net_input": {"src_tokens": src, "src_lengths": (src != 1).sum(1)}}


def _generate(model: torch.nn.Module, beam: int, batch: int, incremental: bool = True) -> list[list[dict]]:
    gen = SequenceGenerator([model], dummy_dictionary(VOCAB), beam_size=beam, max_len_a=0, max_len_b=20)
    gen.model.has_incremental = incremental  # False: fairseq runs the full forward over the prefix at every step
    with torch.no_grad():
        return gen.generate([model], _sample(batch))


def _assert_same_hypotheses(expected: list[list[dict]], got: list[list[dict]], beam: int, attention: bool) -> None:
    for hyps_e, hyps_g in zip(expected, got, strict=True):
        assert len(hyps_e) == len(hyps_g) == beam
        for e, g in zip(hyps_e, hyps_g, strict=True):
            assert torch.equal(e["tokens"], g["tokens"])
            torch.testing.assert_close(g["positional_scores"], e["positional_scores"], atol=1e-5, rtol=0)
            if attention:
                torch.testing.assert_close(g["attention"], e["attention"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("need_attn", [False, True])
@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("spec", ["none", "decoder.all,decoder.output_projection"])
def test_search_results_equal_the_full_forward(spec: str, beam: int, need_attn: bool) -> None:
    # batch 6: beam 1 takes the fused attention kernel, beam 3 (18 rows) the explicit one
    model = _model(spec)
    model.make_generation_fast_(need_attn=need_attn)
    expected = _generate(model, beam, batch=6, incremental=False)
    got = _generate(model, beam, batch=6)
    _assert_same_hypotheses(expected, got, beam, need_attn)


@pytest.mark.parametrize("beam", [1, 3])
def test_compiled_step_equals_the_reference_step(beam: int, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("decoder.all")
    model.make_generation_fast_(need_attn=False)
    fused_steps = []
    run_fused = FusedDecoderStep.__call__

    def counted(self: FusedDecoderStep, x: torch.Tensor, state: LightConvDecoderLayerState) -> torch.Tensor:
        fused_steps.append(1)
        return run_fused(self, x, state)

    monkeypatch.setattr(FusedDecoderStep, "__call__", counted)
    got = _generate(model, beam, batch=6)
    if has_fused_decoder_step():
        assert len(fused_steps) >= 3 * 2  # each of the 3 layers, at least two positions
    model.use_reference_step()
    fused_steps.clear()
    assert all(layer.reference_step and layer.conv.reference_step and layer.encoder_attn.reference_step
               for layer in model.decoder.layers)
    _assert_same_hypotheses(_generate(model, beam, batch=6), got, beam, attention=False)
    assert not fused_steps


def test_beam_search_shares_encoder_keys_per_sentence() -> None:
    model = _model("none")
    _generate(model, beam=3, batch=2)  # fairseq's generator calls model.set_beam_size(3)
    assert all(layer.encoder_attn.beam_size == 3 for layer in model.decoder.layers)
    state: dict = {}
    src = _sample(2)["net_input"]
    with torch.no_grad():
        enc = model.encoder(**src)
        enc = model.encoder.reorder_encoder_out(enc, torch.arange(2).repeat_interleave(3))  # as the generator does
        model.decoder(torch.full((6, 1), 2), enc, incremental_state=state)
    assert len(state) == 3 and all(isinstance(s, LightConvDecoderLayerState) for s in state.values())  # one per layer
    assert all(s.attn.key.shape[0] == 2 and s.attn.group == 3 for s in state.values())  # one copy per sentence


def _decode(model: torch.nn.Module, tokens: torch.Tensor, enc: dict, state: dict) -> torch.Tensor:
    steps = [model.decoder(tokens[:, : t + 1], enc, incremental_state=state)[0] for t in range(tokens.size(1))]
    return torch.cat(steps, 1)


@pytest.mark.parametrize("beam", [1, 2])
def test_reorders_mid_decoding_equal_the_full_forward(beam: int) -> None:
    """Expand to the beam, move hypotheses within their sentence, finish a sentence: every step
    still equals the full forward over the reordered histories (conv rings, attention keys, encoder rows)."""
    model = _model("decoder.all")
    model.set_beam_size(beam)
    src = _sample(3)["net_input"]
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(4, VOCAB, (3 * beam, 10), generator=g)
    tokens[:, 0] = 2
    swap = torch.arange(3 * beam).view(3, beam).flip(1).reshape(-1)  # every beam reversed
    finish = torch.cat([torch.arange(beam), torch.arange(2 * beam, 3 * beam)])  # sentence 1 finished
    with torch.no_grad():
        enc = model.encoder.reorder_encoder_out(model.encoder(**src), torch.arange(3).repeat_interleave(beam))
        state: dict = {}
        hist = tokens[:, :4]
        _decode(model, hist, enc, state)
        for order, more in ((swap, tokens[: 3 * beam, 4:7]), (finish, tokens[: 2 * beam, 7:10])):
            model.decoder.reorder_incremental_state_scripting(state, order)
            enc = model.encoder.reorder_encoder_out(enc, order)
            hist = torch.cat([hist.index_select(0, order), more], 1)
            got = torch.cat([model.decoder(hist[:, : t + 1], enc, incremental_state=state)[0]
                             for t in range(hist.size(1) - more.size(1), hist.size(1))], 1)  # fmt: skip
            full = model.decoder(hist, enc)[0][:, -more.size(1) :]
            torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    assert all(s.attn.key.shape[0] == 2 for s in state.values())  # sentences 0 and 2 (their beams share a row)


def test_cached_reorder_matches_fairseqs_walk_over_all_modules() -> None:
    from fairseq.models import FairseqIncrementalDecoder

    model = _model("decoder.all")
    src = _sample(3)["net_input"]
    order = torch.tensor([2, 2, 0])
    states = []
    for reorder in (FairseqIncrementalDecoder.reorder_incremental_state_scripting,
                    type(model.decoder).reorder_incremental_state_scripting):  # fmt: skip
        state: dict = {}
        with torch.no_grad():
            enc = model.encoder(**src)
            tokens = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10], [2, 11, 12, 13]])  # rows differ from the first layer on
            _decode(model, tokens, enc, state)
            reorder(model.decoder, state, order)
        states.append(state)
    assert states[0].keys() == states[1].keys() and len(states[0]) == 3  # one state per decoder layer
    for key, a in states[0].items():
        b = states[1][key]
        assert a.conv.steps == b.conv.steps == 4
        for x, y in ((a.conv.ring, b.conv.ring), (a.attn.key, b.attn.key), (a.attn.value, b.attn.value)):
            assert torch.equal(x, y), key
        # reordered: rows 0 and 1 now hold the same history
        assert torch.equal(b.conv.ring[0], b.conv.ring[1]) and not torch.equal(b.conv.ring[0], b.conv.ring[2])
        assert torch.equal(b.attn.key[0], b.attn.key[1]) and not torch.equal(b.attn.key[0], b.attn.key[2])


def test_encoder_reorder_moves_the_row_map_only() -> None:
    model = _model("none")
    src = _sample(3)["net_input"]
    with torch.no_grad():
        enc = model.encoder(**src)
    naive_x, naive_mask = enc["encoder_out"][0], enc["encoder_padding_mask"][0]
    orders = [
        torch.arange(3).repeat_interleave(2),  # expand to beam 2: rows 0,0,1,1,2,2
        torch.tensor([1, 0, 2, 2, 5, 4]),  # hypotheses move within their sentence: nothing changes
        torch.tensor([0, 1, 4, 5]),  # sentence 1 finished
        torch.tensor([1, 1, 3, 2]),
    ]
    out = enc
    for i, order in enumerate(orders):
        new = model.encoder.reorder_encoder_out(out, order)
        assert (new is out) == (i in (1, 3))
        for key in ("encoder_out", "encoder_padding_mask", "src_lengths"):  # every entry kept, nothing copied
            assert new[key][0] is enc[key][0]
        out = new
        naive_x, naive_mask = naive_x.index_select(1, order), naive_mask.index_select(0, order)
        x, mask = model.decoder.encoder_states(out)  # the current hypotheses' rows
        assert torch.equal(x, naive_x) and torch.equal(mask, naive_mask)
    assert out["encoder_rows"][0].tolist() == [0, 0, 2, 2]
    # Decoding from the row map equals decoding from an eagerly reordered output.
    eager = {"encoder_out": [naive_x], "encoder_padding_mask": [naive_mask], "src_lengths": [], "encoder_rows": []}
    tokens = torch.tensor([[2, 5, 6], [2, 7, 8], [2, 9, 10], [2, 11, 12]])
    with torch.no_grad():
        torch.testing.assert_close(_decode(model, tokens, out, {}), _decode(model, tokens, eager, {}), atol=0, rtol=0)


def test_incremental_decoding_in_training_mode_is_refused() -> None:
    model = _model("none").train()
    with torch.no_grad():
        enc = model.encoder(**_sample(2)["net_input"])
        with pytest.raises(RuntimeError, match=r"call \.eval\(\) first"):
            model.decoder(torch.full((2, 1), 2), enc, incremental_state={})


def test_decoding_positions_are_fairseqs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step reads fairseq's sinusoidal table by a Python int; past the table, and for learned
    positions, the module answers (and the sinusoidal one extends its table)."""
    from fairseq.modules import PositionalEmbedding, SinusoidalPositionalEmbedding

    from fairseq_kaleidoscope.models.kaleidoscope_lightconv import _last_position

    pad, dim = 1, 8
    for learned in (False, True):
        torch.manual_seed(0)
        emb, twin = (PositionalEmbedding(40, dim, pad, learned=learned) for _ in range(2))
        twin.load_state_dict(emb.state_dict())
        # The table holds 40 positions (plus the pad's and one spare); a learned one has no more.
        for T in (1, 2, 17, 40, 3) if learned else (1, 2, 17, 40, 41, 45, 3):
            tokens = torch.full((3, T), 7)
            want = twin(tokens, incremental_state={})[:, -1:]
            got = _last_position(emb, tokens, {})
            assert got.shape == want.shape and got.shape[1:] == (1, dim)  # learned: (1, 1, C), broadcast
            assert torch.equal(got, want), (learned, T)
    table = SinusoidalPositionalEmbedding.get_embedding(60, dim, pad)
    assert torch.equal(_last_position(PositionalEmbedding(40, dim, pad), torch.full((2, 45), 7), {})[0, 0],
                       table[pad + 45])  # past the table: the module's own extension
    fast = PositionalEmbedding(40, dim, pad)
    monkeypatch.setattr(fast, "forward", lambda *a, **k: pytest.fail("the module ran for a position in its table"))
    assert torch.equal(_last_position(fast, torch.full((1, 9), 7), {})[0, 0], table[pad + 9])
