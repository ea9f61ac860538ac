"""The lean search loops (greedy and beam) give fairseq's SequenceGenerator results exactly, and fall back visibly."""

import logging

import pytest
import torch

pytest.importorskip("fairseq")

from conftest import build_tiny_model
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator

from fairseq_kaleidoscope.models import lean_search
from fairseq_kaleidoscope.models.builder import dummy_dictionary
from fairseq_kaleidoscope.models.lean_search import LeanSequenceGenerator
from fairseq_kaleidoscope.recipes.forced_length import ForcedLengthEnsemble

VOCAB = 40
EOS = 2


def _model(spec: str = "decoder.all", eos_boost: float = 2.0) -> torch.nn.Module:
    model, _ = build_tiny_model("kaleidoscope_lightconv_iwslt_de_en", "--kmatrix-layers", spec, "--kmatrix-init",
                                "randn", vocab=VOCAB, seed=0, layers=(1, 2), heads=4, kernels=("[3]", "[3,7]"))
    with torch.no_grad():  # a larger EOS logit: sentences end at different steps, before the length limit
        model.decoder.output_projection.weight[EOS] *= eos_boost
    return model.eval()


def _sample(batch: int, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (batch, 9), generator=g)
    for i in range(batch):  # left padding of different lengths, as fairseq batches sources
        src[i, : i % 4] = 1
    return {"id": torch.arange(batch), "net_input": {"src_tokens": src, "src_lengths": (src != 1).sum(1)}}


def _generate(cls: type, model: torch.nn.Module, sample: dict, generate_kwargs: dict | None = None,
              **options) -> list[list[dict]]:  # fmt: skip
    gen = cls([model], dummy_dictionary(VOCAB), **{"beam_size": 1, "max_len_a": 0, "max_len_b": 12, **options})
    with torch.no_grad():
        return gen.generate([model], sample, **(generate_kwargs or {}))


def _assert_identical(expected: list[list[dict]], got: list[list[dict]]) -> None:
    assert len(expected) == len(got)
    for hyps_e, hyps_g in zip(expected, got, strict=True):
        assert len(hyps_e) == len(hyps_g)
        for e, g in zip(hyps_e, hyps_g, strict=True):
            assert set(g) == set(e)
            for key in e:
                assert g[key].dtype == e[key].dtype and torch.equal(g[key], e[key]), key


GREEDY_OPTIONS = [
    {},
    {"len_penalty": 0.6, "min_len": 3},
    {"unk_penalty": -2.0},  # unk becomes the most likely token
    {"normalize_scores": False, "temperature": 0.7, "max_len_b": 5},
    {"max_len_a": 1.2, "max_len_b": 2},
]


@pytest.mark.parametrize("options", GREEDY_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("beam", [1, 2, 5])
def test_hypotheses_and_scores_are_fairseqs(beam: int, batch: int, options: dict) -> None:
    model = _model()
    sample = _sample(batch)
    expected = _generate(SequenceGenerator, model, sample, beam_size=beam, **options)
    got = _generate(LeanSequenceGenerator, model, sample, beam_size=beam, **options)
    _assert_identical(expected, got)
    assert all(len(hyps) == beam for hyps in got)
    if batch > 1 and not options:  # sentences leave the batch at different steps
        assert len({len(h[0]["tokens"]) for h in got}) > 1


def test_beam_search_runs_the_lean_loop_not_fairseqs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("fairseq's _generate ran")

    monkeypatch.setattr(SequenceGenerator, "_generate", refuse)
    got = _generate(LeanSequenceGenerator, _model(), _sample(3), beam_size=4)
    assert [len(hyps) for hyps in got] == [4, 4, 4]


@pytest.mark.parametrize("beam", [1, 3])
def test_prefix_tokens_are_forced_as_fairseq_forces_them(beam: int) -> None:
    """Prefixes of different lengths (pad-ended, as fairseq-generate's --prefix-size takes them from the
    targets), one ending in EOS, with a minimum length that does not apply while a prefix is forced."""
    model = _model()
    sample = _sample(5)
    prefix = torch.tensor([[7, 8, 9], [5, 1, 1], [6, EOS, 1], [4, 4, 4], [9, 8, 1]])
    expected = _generate(SequenceGenerator, model, sample, {"prefix_tokens": prefix}, min_len=4, beam_size=beam)
    got = _generate(LeanSequenceGenerator, model, sample, {"prefix_tokens": prefix}, min_len=4, beam_size=beam)
    _assert_identical(expected, got)
    assert got[2][0]["tokens"].tolist() == [6, EOS] and got[0][0]["tokens"][:3].tolist() == [7, 8, 9]


@pytest.mark.parametrize("beam", [1, 3])
def test_attention_is_kept_as_fairseq_keeps_it(beam: int) -> None:
    model = _model()
    model.make_generation_fast_(need_attn=True)
    sample = _sample(5)
    expected = _generate(SequenceGenerator, model, sample, min_len=2, beam_size=beam)
    assert expected[0][0]["attention"].numel() > 0
    _assert_identical(expected, _generate(LeanSequenceGenerator, model, sample, min_len=2, beam_size=beam))


@pytest.mark.parametrize("beam", [1, 4])
def test_forced_lengths_follow_the_rows_that_stay(beam: int) -> None:
    """decode_bench's forced-length ensemble: per-row lengths are reordered as sentences finish."""
    model = _model(eos_boost=1.0)
    sample = _sample(6)
    lengths = torch.tensor([3, 9, 1, 5, 5, 2])
    results = []
    for cls in (SequenceGenerator, LeanSequenceGenerator):
        ensemble = ForcedLengthEnsemble([model], EOS)
        ensemble.set_lengths(lengths)
        gen = cls(ensemble, dummy_dictionary(VOCAB), beam_size=beam, max_len_a=0, max_len_b=10)
        with torch.no_grad():
            results.append(gen.generate([model], sample))
    _assert_identical(*results)
    for hyps, n in zip(results[1], lengths.tolist(), strict=True):  # every hypothesis of a beam, too
        assert [len(hyp["tokens"]) - 1 for hyp in hyps] == [n] * beam


@pytest.mark.parametrize("beam", [1, 2])
def test_min_len_above_max_len_is_a_clear_error(beam: int) -> None:
    with pytest.raises(ValueError, match=r"min_len \(9\) cannot be larger than max_len \(4\)"):
        _generate(LeanSequenceGenerator, _model(), _sample(2), min_len=9, max_len_b=4, beam_size=beam)


@pytest.mark.parametrize(
    ("options", "kwargs", "reason"),
    [
        ({"match_source_len": True}, {}, "--match-source-len"),
        ({"no_repeat_ngram_size": 2, "beam_size": 3}, {}, "--no-repeat-ngram-size"),
        ({"search_strategy": "diverse"}, {}, "search strategy DiverseBeamSearch"),
        ({"beam_size": 20}, {}, f"a vocabulary of {VOCAB} for beam 20"),  # fewer than 2 * beam + 1 candidates
    ],
)
def test_what_the_loop_does_not_cover_runs_fairseqs_search_after_one_log_line(
    options: dict, kwargs: dict, reason: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model()
    sample = _sample(4)
    if options.get("search_strategy") == "diverse":
        options = {"beam_size": 4, "search_strategy": search.DiverseBeamSearch(dummy_dictionary(VOCAB), 2, 0.5)}
    lean_calls = []
    monkeypatch.setattr(LeanSequenceGenerator, "_greedy", lambda *a: lean_calls.append(a))
    monkeypatch.setattr(LeanSequenceGenerator, "_beam", lambda *a: lean_calls.append(a))
    lean_search._log_fallback.cache_clear()
    expected = _generate(SequenceGenerator, model, sample, kwargs, **options)
    with caplog.at_level(logging.INFO, logger=lean_search.__name__):
        for _ in range(2):
            _assert_identical(expected, _generate(LeanSequenceGenerator, model, sample, kwargs, **options))
    assert not lean_calls
    lines = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert len(lines) == 1 and "fairseq's search runs" in lines[0]


def test_fairseq_tasks_pick_the_lean_loop_for_our_lightconv_models_only() -> None:
    from argparse import Namespace

    from fairseq.tasks.translation import TranslationConfig, TranslationTask

    d = dummy_dictionary(VOCAB)
    task = TranslationTask(TranslationConfig(), d, d)
    ours = _model()
    stock, _ = build_tiny_model("transformer_iwslt_de_en", vocab=VOCAB, layers=(1, 1))
    greedy = Namespace(beam=1)
    assert type(task.build_generator([ours], greedy)) is LeanSequenceGenerator
    assert type(task.build_generator([stock], greedy)) is SequenceGenerator
    assert type(task.build_generator([ours], Namespace(beam=1, print_alignment="hard"))) is not LeanSequenceGenerator
