"""``kaleidoscope_transformer``: fairseq's Transformer with K-matrix linear layers.

fairseq's own Transformer is built unchanged; the sub-layers named by
``--kmatrix-layers`` are then swapped for freshly initialised K-matrices of the same
shape. Sub-layer names: ``self_attn_q/k/v/out`` (both sides), ``attn_q/k/v/out``
(decoder: encoder attention), ``fc1``, ``fc2``, and ``decoder.output_projection``.

Dataclass-configured (unlike fairseq's ``transformer``), so checkpoints contain no
pickled ``argparse.Namespace`` and load under ``torch.load(weights_only=True)``.
"""

import argparse
from dataclasses import dataclass, field

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..modules.kmatrix_layers import (
    ATTN_PROJ,
    OUTPUT_PROJECTION,
    KMatrixOptions,
    chosen_kmatrix_layers,
    kmatrix_options,
    make_linear,
    replace_linear,
    replace_projections,
)
from .int8_inference import Int8DenseInference
from .kmatrix_config import EncoderDecoderConfig, set_architecture_defaults

SELF_ATTN = {"self_attn_q": "q_proj", "self_attn_k": "k_proj", "self_attn_v": "v_proj", "self_attn_out": "out_proj"}
KMATRIX_SUBLAYERS = {
    "encoder": (*SELF_ATTN, "fc1", "fc2"),
    "decoder": (*SELF_ATTN, *ATTN_PROJ, "fc1", "fc2", OUTPUT_PROJECTION),
}


@dataclass
class KaleidoscopeTransformerConfig(EncoderDecoderConfig):
    """The options of ``kaleidoscope_transformer`` beyond the shared ones (:class:`EncoderDecoderConfig`)."""

    activation_fn: ChoiceEnum(utils.get_available_activation_fns()) = field(
        default="relu", metadata={"help": "activation function"}
    )
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_layers: int = field(default=6, metadata={"help": "encoder layers"})
    encoder_attention_heads: int = field(default=8, metadata={"help": "encoder attention heads"})
    decoder_attention_heads: int = field(default=8, metadata={"help": "decoder attention heads"})
    layernorm_embedding: bool = field(default=False, metadata={"help": "layer norm on the embeddings"})
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings by sqrt(dim)"})


def _as_namespace(cfg: object) -> argparse.Namespace:
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(vars(cfg))
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    values["activation_fn"] = str(values["activation_fn"])
    values["kmatrix_init"] = str(values["kmatrix_init"])
    return argparse.Namespace(**values)


@register_model("kaleidoscope_transformer", dataclass=KaleidoscopeTransformerConfig)
class KaleidoscopeTransformerModel(Int8DenseInference, TransformerModel):
    """fairseq's Transformer whose chosen linear sub-layers are K-matrices."""

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        # The dataclass, not fairseq's TransformerConfig, defines our options; defaults
        # are deleted so that the architecture functions can set them.
        gen_parser_from_dataclass(parser, KaleidoscopeTransformerConfig(), delete_default=True)

    @classmethod
    def build_model(cls, cfg: object, task: object) -> "KaleidoscopeTransformerModel":
        chosen, _ = chosen_kmatrix_layers(cfg, KMATRIX_SUBLAYERS, "kaleidoscope_transformer")
        kopts = kmatrix_options(cfg)
        model = super().build_model(_as_namespace(cfg), task)
        for layer in model.encoder.layers:
            _swap_layer(layer, chosen["encoder"], kopts, has_encoder_attn=False)
        for layer in model.decoder.layers:
            _swap_layer(layer, chosen["decoder"], kopts, has_encoder_attn=True)
        if OUTPUT_PROJECTION in chosen["decoder"]:
            old = model.decoder.output_projection
            model.decoder.output_projection = make_linear(old.in_features, old.out_features, False, kopts)
        model.set_int8_dense(getattr(cfg, "int8_dense", "none"))
        return model


def _swap_layer(layer: nn.Module, chosen: frozenset[str], kopts: KMatrixOptions, has_encoder_attn: bool) -> None:
    replace_projections(layer.self_attn, SELF_ATTN, chosen, kopts)
    if has_encoder_attn:
        replace_projections(layer.encoder_attn, ATTN_PROJ, chosen, kopts)
    for name in ("fc1", "fc2"):
        if name in chosen:
            replace_linear(layer, name, kopts)


# ``register_model(..., dataclass=...)`` also registers the architecture
# ``kaleidoscope_transformer`` itself, with the dataclass defaults.


@register_model_architecture("kaleidoscope_transformer", "kaleidoscope_transformer_iwslt_de_en")
def transformer_iwslt_de_en(args: object) -> None:
    """fairseq's ``transformer_iwslt_de_en`` sizes."""
    set_architecture_defaults(args, KaleidoscopeTransformerConfig, {
        "encoder_embed_dim": 512,
        "encoder_ffn_embed_dim": 1024,
        "encoder_attention_heads": 4,
        "encoder_layers": 6,
        "decoder_embed_dim": 512,
        "decoder_ffn_embed_dim": 1024,
        "decoder_attention_heads": 4,
        "decoder_layers": 6,
    })  # fmt: skip
