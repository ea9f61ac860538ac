"""Model options shared by every Kaleidoscope architecture (``--kmatrix-*``)."""

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


def set_architecture_defaults(args: object, config: type[FairseqDataclass], sizes: dict[str, object]) -> None:
    """The body of an architecture function: every option the command line left unset gets the
    architecture's value in ``sizes``, or else the ``config`` dataclass default."""
    defaults = config()
    for name in defaults.__dataclass_fields__:
        if not name.startswith("_") and safe_getattr(args, name, None) is None:
            setattr(args, name, sizes.get(name, getattr(defaults, name)))
