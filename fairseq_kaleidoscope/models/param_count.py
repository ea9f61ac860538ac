"""Parameter counts of the IWSLT architectures, dense against K-matrix.

Run: ``python -m fairseq_kaleidoscope param-count --src-dict dict.de.txt --tgt-dict dict.en.txt``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from fairseq.data import Dictionary
from torch import nn

from ..kmatrix import KaleidoscopeLinear
from .builder import build_model_from_args, dummy_dictionary

ROWS = [
    ("lightconv_iwslt_de_en (fairseq, no GLU)", ["--arch", "lightconv_iwslt_de_en", "--encoder-glu", "0",
                                                 "--decoder-glu", "0"]),
    ("kaleidoscope_lightconv_iwslt_de_en, dense", ["--arch", "kaleidoscope_lightconv_iwslt_de_en",
                                                   "--kmatrix-layers", "none"]),
    ("kaleidoscope_lightconv_iwslt_de_en (default: decoder.all)", ["--arch", "kaleidoscope_lightconv_iwslt_de_en"]),
    ("kaleidoscope_lightconv_iwslt_de_en, encoder.all,decoder.all", ["--arch", "kaleidoscope_lightconv_iwslt_de_en",
                                                                     "--kmatrix-layers", "encoder.all,decoder.all"]),
    ("kaleidoscope_transformer_iwslt_de_en, dense", ["--arch", "kaleidoscope_transformer_iwslt_de_en",
                                                     "--kmatrix-layers", "none"]),
    ("kaleidoscope_transformer_iwslt_de_en (default: decoder.all)", ["--arch",
                                                                     "kaleidoscope_transformer_iwslt_de_en"]),
]  # fmt: skip


def count(model: nn.Module) -> dict[str, int]:
    """Total parameters, and the decoder's parameters outside embeddings/output projection."""
    params = {id(p): p for p in model.parameters()}  # tied weights once
    total = sum(p.numel() for p in params.values())
    layers = sum(p.numel() for p in model.decoder.layers.parameters())
    twiddles = sum(m.twiddle.numel() for m in model.modules() if isinstance(m, KaleidoscopeLinear))
    return {"total": total, "decoder_layers": layers, "twiddles": twiddles}


def load_dictionary(path_or_size: str) -> Dictionary:
    return dummy_dictionary(int(path_or_size)) if path_or_size.isdigit() else Dictionary.load(path_or_size)


def table(src: Dictionary, tgt: Dictionary) -> str:
    lines = [
        f"source vocabulary {len(src)}, target vocabulary {len(tgt)}",
        "",
        "| architecture | parameters | vs our dense | decoder layers | K-matrix twiddles |",
        "|---|---:|---:|---:|---:|",
    ]
    dense = None  # the last dense row of our architectures is the reference of the rows below it
    for name, argv in ROWS:
        torch.manual_seed(0)
        model, _ = build_model_from_args(argv, src, tgt)
        c = count(model)
        if name.endswith(", dense"):
            dense = c
        ratio = f"{c['total'] / dense['total']:.3f}" if dense else "-"
        lines.append(f"| {name} | {c['total']:,} | {ratio} | {c['decoder_layers']:,} | {c['twiddles']:,} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fairseq_kaleidoscope param-count", description=__doc__)
    parser.add_argument("--src-dict", required=True, help="fairseq dict.de.txt, or a vocabulary size")
    parser.add_argument("--tgt-dict", required=True, help="fairseq dict.en.txt, or a vocabulary size")
    args = parser.parse_args(argv)
    print(table(load_dictionary(args.src_dict), load_dictionary(args.tgt_dict)))
