"""Model options shared by every Kaleidoscope architecture: ``--kmatrix-*`` and the common encoder-decoder ones."""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.utils import safe_getattr

from ..kmatrix.init import INITS

KMATRIX_INIT_CHOICES = ChoiceEnum(list(INITS))


@dataclass
class KMatrixConfig(FairseqDataclass):
    kmatrix_layers: str = field(
        default="decoder.all",
        metadata={
            "help": "comma-separated linear sub-layers that become K-matrices, as encoder.NAME or decoder.NAME "
            "(NAME: a sub-layer such as fc1 or attn_q, a group conv|attn|self_attn|ffn, or all); "
            "decoder.output_projection (the vocabulary projection) only when named; 'none' for a dense model. "
            "Default: every linear layer of the decoder (the Kaleidoscope paper's choice)."
        },
    )
    kmatrix_nblocks: int = field(default=1, metadata={"help": "B·Bᵀ blocks per K-matrix"})
    kmatrix_init: KMATRIX_INIT_CHOICES = field(default="ortho", metadata={"help": "K-matrix initialisation"})
    kmatrix_lr_scale: float = field(
        default=1.0, metadata={"help": "learning-rate multiplier for K-matrix (twiddle) parameters"}
    )
    int8_dense: str = field(
        default="none",
        metadata={
            "help": "inference only: run these dense linear layers in int8 (dynamic quantization): 'none' or a "
            "comma-separated list of output_projection, decoder, encoder, all. K-matrix layers are never "
            "quantized. Set it at generation time: --model-overrides \"{'int8_dense': 'output_projection'}\""
        },
    )


@dataclass
class EncoderDecoderConfig(KMatrixConfig):
    """The options both architectures have, with the same meaning and default."""

    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension"})
    encoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "encoder FFN dimension"})
    encoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm encoder layers"})
    encoder_learned_pos: bool = field(default=False, metadata={"help": "learned encoder positions"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "decoder FFN dimension"})
    decoder_layers: int = field(default=6, metadata={"help": "decoder layers"})
    decoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm decoder layers"})
    decoder_learned_pos: bool = field(default=False, metadata={"help": "learned decoder positions"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={"help": "tie decoder in/out embeddings"})
    share_all_embeddings: bool = field(default=False, metadata={"help": "share all embeddings (joined dictionary)"})
    no_token_positional_embeddings: bool = field(default=False, metadata={"help": "no positional embeddings"})
    max_source_positions: int = field(default=1024, metadata={"help": "max source length"})
    max_target_positions: int = field(default=1024, metadata={"help": "max target length"})


def set_architecture_defaults(args: object, config: type[FairseqDataclass], sizes: dict[str, object]) -> None:
    """The body of an architecture function: every option the command line left unset gets the
    architecture's value in ``sizes``, or else the ``config`` dataclass default."""
    defaults = config()
    for name in defaults.__dataclass_fields__:
        if not name.startswith("_") and safe_getattr(args, name, None) is None:
            setattr(args, name, sizes.get(name, getattr(defaults, name)))
