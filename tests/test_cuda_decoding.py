"""Decoding our LightConv model on a GPU: the lean search loops and fairseq's search agree, and the
CUDA hypotheses are the CPU ones (the CPU-only fused ops fall back to the reference step there)."""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)
pytest.importorskip("fairseq")

from conftest import build_tiny_model
from fairseq.sequence_generator import SequenceGenerator

from fairseq_kaleidoscope.models.builder import dummy_dictionary
from fairseq_kaleidoscope.models.lean_search import LeanSequenceGenerator

VOCAB = 40


def _model() -> torch.nn.Module:
    model, _ = build_tiny_model("kaleidoscope_lightconv_iwslt_de_en", "--kmatrix-layers", "decoder.all",
                                "--kmatrix-init", "randn", vocab=VOCAB, seed=0, layers=(1, 2), heads=4,
                                kernels=("[3]", "[3,7]"))  # fmt: skip
    with torch.no_grad():  # sentences end at different steps
        model.decoder.output_projection.weight[2] *= 2.0
    return model.eval()


def _sample(batch: int, device: str) -> dict:
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, VOCAB, (batch, 9), generator=g)
    for i in range(batch):
        src[i, : i % 4] = 1
    return {"id": torch.arange(batch, device=device),
            "net_input": {"src_tokens": src.to(device), "src_lengths": (src != 1).sum(1).to(device)}}  # fmt: skip


def _generate(cls: type, model: torch.nn.Module, beam: int, device: str) -> list[list[dict]]:
    gen = cls([model], dummy_dictionary(VOCAB), beam_size=beam, max_len_a=0, max_len_b=12, len_penalty=0.7)
    with torch.no_grad():
        return gen.generate([model], _sample(6, device))


@pytest.mark.parametrize("beam", [1, 3])
def test_cuda_decoding_matches_cpu_and_fairseqs_search(beam: int) -> None:
    model = _model()
    cpu = _generate(LeanSequenceGenerator, model, beam, "cpu")
    model.cuda()
    lean = _generate(LeanSequenceGenerator, model, beam, "cuda")
    stock = _generate(SequenceGenerator, model, beam, "cuda")
    for c, g, s in zip(cpu, lean, stock, strict=True):
        for hc, hg, hs in zip(c, g, s, strict=True):
            assert torch.equal(hg["tokens"], hs["tokens"])
            assert torch.equal(hg["positional_scores"], hs["positional_scores"])
            assert hg["tokens"].is_cuda
            assert torch.equal(hg["tokens"].cpu(), hc["tokens"])
            torch.testing.assert_close(hg["positional_scores"].cpu(), hc["positional_scores"], atol=1e-4, rtol=1e-4)
