"""Build a registered model in Python exactly as ``fairseq-train`` would (for tests, benchmarks, counts)."""

from __future__ import annotations

from dataclasses import dataclass

from fairseq import models, options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import DictConfig
from torch import nn

from ..compat.quiet import hydra_deprecations_silenced


def dummy_dictionary(size: int) -> Dictionary:
    """A dictionary of ``size`` symbols in total (fairseq's 4 specials + ``size - 4`` words)."""
    if size < 5:
        raise ValueError(f"a dictionary needs at least 5 symbols, got {size}")
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


@dataclass
class DictionaryTask:
    """The two attributes of a translation task that ``build_model`` reads."""

    source_dictionary: Dictionary
    target_dictionary: Dictionary


def parse_model_args(argv: list[str]) -> DictConfig:
    """Parse fairseq-train model options (``["--arch", ..., ...]``) into the ``cfg.model`` fairseq would save."""
    with hydra_deprecations_silenced():
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, input_args=["unused-data-dir", *argv])
        return convert_namespace_to_omegaconf(args).model


def build_model_from_args(
    argv: list[str], src_dict: Dictionary | int, tgt_dict: Dictionary | int | None = None
) -> tuple[nn.Module, DictConfig]:
    """Build the model of a fairseq-train command line; returns ``(model, cfg.model)``.

    Dictionaries may be given as sizes (dummy dictionaries of that many symbols).
    """
    src = dummy_dictionary(src_dict) if isinstance(src_dict, int) else src_dict
    tgt_dict = src if tgt_dict is None else tgt_dict
    tgt = dummy_dictionary(tgt_dict) if isinstance(tgt_dict, int) else tgt_dict
    cfg = parse_model_args(argv)
    return models.build_model(cfg, DictionaryTask(src, tgt)), cfg


def build_model_from_config(cfg: DictConfig, src_dict: Dictionary, tgt_dict: Dictionary) -> nn.Module:
    """Rebuild a model from a saved ``cfg.model`` (e.g. ``torch.load(ckpt)["cfg"]["model"]``)."""
    return models.build_model(cfg, DictionaryTask(src_dict, tgt_dict), from_checkpoint=True)
