"""The lean decoding step gives what the generic (training-path) step gives, in fairseq's search."""

import pytest
import torch

pytest.importorskip("fairseq")

from fairseq.sequence_generator import SequenceGenerator

from fairseq_kaleidoscope.models.builder import build_model_from_args, dummy_dictionary
from fairseq_kaleidoscope.modules.fast_decoding import fast_decoding_enabled, generic_decoding

TINY = [
    "--arch", "kaleidoscope_lightconv_iwslt_de_en",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-layers", "1", "--decoder-layers", "3",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    "--encoder-kernel-size-list", "[3]", "--decoder-kernel-size-list", "[1,3,15]",
]  # fmt: skip
VOCAB = 40


def _model(spec: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _ = build_model_from_args([*TINY, "--kmatrix-layers", spec, "--kmatrix-init", "randn"], VOCAB, VOCAB)
    return model.eval()


def _sample(batch: int) -> dict:
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, VOCAB, (batch, 9), generator=g)
    for i in range(batch):  # left padding of different lengths, as fairseq batches sources
        src[i, : i % 4] = 1
    return {"net_input": {"src_tokens": src, "src_lengths": (src != 1).sum(1)}}


def _generate(model: torch.nn.Module, beam: int, batch: int) -> list[list[dict]]:
    gen = SequenceGenerator([model], dummy_dictionary(VOCAB), beam_size=beam, max_len_a=0, max_len_b=20)
    with torch.no_grad():
        return gen.generate([model], _sample(batch))


@pytest.mark.parametrize("need_attn", [False, True])
@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("spec", ["none", "decoder.all,decoder.output_projection"])
def test_search_results_equal_the_generic_path(spec: str, beam: int, need_attn: bool) -> None:
    # batch 6: beam 1 takes the fused attention kernel, beam 3 (18 rows) the explicit one
    model = _model(spec)
    model.make_generation_fast_(need_attn=need_attn)
    with generic_decoding():
        assert not fast_decoding_enabled()
        expected = _generate(model, beam, batch=6)
    assert fast_decoding_enabled()
    got = _generate(model, beam, batch=6)
    for hyps_e, hyps_g in zip(expected, got, strict=True):
        assert len(hyps_e) == len(hyps_g) == beam
        for e, g in zip(hyps_e, hyps_g, strict=True):
            assert torch.equal(e["tokens"], g["tokens"])
            torch.testing.assert_close(g["positional_scores"], e["positional_scores"], atol=1e-5, rtol=0)
            if need_attn:
                torch.testing.assert_close(g["attention"], e["attention"], atol=1e-5, rtol=0)


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
    keys = [v["prev_key"] for k, v in state.items() if k.endswith("attn_state")]
    assert len(keys) == 3 and all(k.shape[0] == 2 for k in keys)  # one copy per sentence, not per hypothesis


def test_generic_decoding_restores_the_switch_after_an_error() -> None:
    with pytest.raises(RuntimeError), generic_decoding():
        raise RuntimeError("boom")
    assert fast_decoding_enabled()


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
            for t in range(4):
                model.decoder(tokens[:, : t + 1], enc, incremental_state=state)
            reorder(model.decoder, state, order)
        states.append(state)
    assert states[0].keys() == states[1].keys() and len(states[0]) > 0
    for key, value in states[0].items():
        for name, tensor in value.items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, states[1][key][name]), (key, name)
    rings = [v["ring"] for k, v in states[1].items() if k.endswith("ring_state")]
    assert len(rings) == 3  # one per decoder layer, reordered: rows 0 and 1 now hold the same history
    assert all(torch.equal(r[0], r[1]) and not torch.equal(r[0], r[2]) for r in rings)


def test_encoder_reorder_is_lazy_and_exact() -> None:
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
        assert new["encoder_out"] == [] and new["base_out"][0] is enc["encoder_out"][0]  # nothing copied
        out = new
        naive_x, naive_mask = naive_x.index_select(1, order), naive_mask.index_select(0, order)
        x, mask = model.decoder.encoder_states(out)  # materialised when read
        assert torch.equal(x, naive_x) and torch.equal(mask, naive_mask)
    # Once the attention layers have cached their keys, the rows are not read: nothing is materialised.
    state: dict = {}
    with torch.no_grad():
        model.decoder(torch.full((4, 1), 2), out, incremental_state=state)
    x, mask = model.decoder.encoder_states(out, state)
    assert x is enc["encoder_out"][0] and mask is None
