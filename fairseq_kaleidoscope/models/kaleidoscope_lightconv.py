"""``kaleidoscope_lightconv``: fairseq's DynamicConv translation model with K-matrix linear layers.

Architectures:

* ``kaleidoscope_lightconv``: every size configurable (defaults: fairseq's ``lightconv``
  base sizes without GLU).
* ``kaleidoscope_lightconv_iwslt_de_en``: fairseq's ``lightconv_iwslt_de_en`` with
  dynamic convolutions and no GLU (the pay-less-attention IWSLT recipe); by default
  every linear layer of the decoder is a K-matrix (the Kaleidoscope paper's experiment).

The model is configured by a dataclass, so checkpoints store plain values (no pickled
``argparse.Namespace``) and load under ``torch.load(weights_only=True)``.
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035 (fairseq parses typing.List/Optional field types only)

import torch
from fairseq import utils
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.modules import FairseqDropout, LayerNorm, PositionalEmbedding, SinusoidalPositionalEmbedding
from fairseq.utils import safe_getattr
from torch import Tensor, nn

from ..modules.dynamic_convolution import IncrementalState
from ..modules.kmatrix_layers import OUTPUT_PROJECTION, chosen_kmatrix_layers, kmatrix_options, make_linear
from ..modules.lightconv_layers import (
    DECODER_SUBLAYERS,
    ENCODER_SUBLAYERS,
    LightConvDecoderLayer,
    LightConvEncoderLayer,
    Positions,
)
from .int8_inference import Int8DenseInference
from .kmatrix_config import EncoderDecoderConfig, set_architecture_defaults

EncoderOut = dict[str, list[Tensor]]
KMATRIX_SUBLAYERS = {"encoder": ENCODER_SUBLAYERS, "decoder": (*DECODER_SUBLAYERS, OUTPUT_PROJECTION)}


@dataclass
class KaleidoscopeLightConvConfig(EncoderDecoderConfig):
    """The options of ``kaleidoscope_lightconv`` beyond the shared ones (:class:`EncoderDecoderConfig`)."""

    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on encoder-attention weights"})
    relu_dropout: float = field(default=0.0, metadata={"help": "dropout after ReLU in the FFN"})
    input_dropout: float = field(default=0.1, metadata={"help": "dropout on the convolution block's input"})
    weight_dropout: float = field(default=0.0, metadata={"help": "DropConnect on the convolution taps"})
    weight_softmax: int = field(default=1, metadata={"help": "1: softmax-normalise the taps"})
    encoder_conv_dim: Optional[int] = field(  # noqa: UP045
        default=None, metadata={"help": "encoder conv channels (default: embed dim)"}
    )
    encoder_layers: int = field(default=7, metadata={"help": "encoder layers"})
    encoder_attention_heads: int = field(default=8, metadata={"help": "encoder DynamicConv heads"})
    encoder_kernel_size_list: List[int] = field(  # noqa: UP006
        default_factory=lambda: [3, 7, 15, 31, 31, 31, 31],
        metadata={"help": "encoder kernel sizes, one per layer or a single one for all (odd)"},
    )
    encoder_glu: int = field(default=0, metadata={"help": "1: GLU after the encoder input projection"})
    decoder_conv_dim: Optional[int] = field(  # noqa: UP045
        default=None, metadata={"help": "decoder conv channels (default: embed dim)"}
    )
    decoder_attention_heads: int = field(default=8, metadata={"help": "decoder DynamicConv and attention heads"})
    decoder_kernel_size_list: List[int] = field(  # noqa: UP006
        default_factory=lambda: [3, 7, 15, 31, 31, 31],
        metadata={"help": "decoder kernel sizes, one per layer or a single one for all"},
    )
    decoder_glu: int = field(default=0, metadata={"help": "1: GLU after the decoder input projection"})


def _kernel_sizes(sizes: object, layers: int, side: str) -> list[int]:
    if isinstance(sizes, str):
        sizes = utils.eval_str_list(sizes, int)
    elif isinstance(sizes, int):
        sizes = [sizes]
    sizes = [int(k) for k in sizes]
    if len(sizes) == 1:
        sizes = sizes * layers
    if len(sizes) != layers:
        raise ValueError(f"--{side}-kernel-size-list has {len(sizes)} entries but --{side}-layers is {layers}")
    return sizes


def _encoder_parts(encoder_out: EncoderOut | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(encoder output, padding mask, row map), each None when absent."""
    if encoder_out is None or not encoder_out["encoder_out"]:
        return None, None, None
    masks, rows = encoder_out.get("encoder_padding_mask"), encoder_out.get("encoder_rows")
    return encoder_out["encoder_out"][0], masks[0] if masks else None, rows[0] if rows else None


def _embedding(dictionary: object, dim: int) -> nn.Embedding:
    m = nn.Embedding(len(dictionary), dim, padding_idx=dictionary.pad())
    nn.init.normal_(m.weight, mean=0, std=dim**-0.5)
    nn.init.zeros_(m.weight[dictionary.pad()])
    return m


def _positions(cfg: object, limit: int, embed_tokens: nn.Embedding, learned: bool) -> nn.Module | None:
    if cfg.no_token_positional_embeddings:
        return None
    return PositionalEmbedding(limit, embed_tokens.embedding_dim, embed_tokens.padding_idx, learned=learned)


def _last_position(
    embed_positions: nn.Module, prev_output_tokens: Tensor, incremental_state: IncrementalState
) -> Tensor:
    """The position embedding of the last of ``prev_output_tokens`` (B, T), decoding: (B, 1, C).

    fairseq's sinusoidal table: a row picked by a Python int. Its forward derives the position
    from ONNX shape tensors, with tensor arithmetic and a device sync, on every decoding step.
    Anything else (learned positions, a position past the table, ONNX export) asks the module.
    """
    B, T = prev_output_tokens.shape
    if type(embed_positions) is SinusoidalPositionalEmbedding and not embed_positions.onnx_trace:
        row = embed_positions.padding_idx + T
        if row < embed_positions.weights.size(0):
            return embed_positions.weights[row].expand(B, 1, -1)
    return embed_positions(prev_output_tokens, incremental_state=incremental_state)[:, -1:]


def _max_positions(limit: int, embed_positions: nn.Module | None) -> int:
    return limit if embed_positions is None else min(limit, embed_positions.max_positions)


def _upgrade_state_dict(state_dict: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """Accept checkpoints without the ``version`` buffer, and fairseq lightconv ones (unused ``conv_bias``)."""
    prefix = f"{name}." if name else ""
    state_dict.setdefault(prefix + "version", torch.Tensor([2]))
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith(".conv.conv_bias")]:
        del state_dict[key]
    return state_dict


@register_model("kaleidoscope_lightconv", dataclass=KaleidoscopeLightConvConfig)
class KaleidoscopeLightConvModel(Int8DenseInference, FairseqEncoderDecoderModel):
    """DynamicConv encoder-decoder (Wu et al., 2019) whose chosen linear layers are K-matrices."""

    @classmethod
    def build_model(cls, cfg: object, task: object) -> "KaleidoscopeLightConvModel":
        chosen, tie = chosen_kmatrix_layers(cfg, KMATRIX_SUBLAYERS, "kaleidoscope_lightconv")
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if cfg.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings requires a joined dictionary")
            if cfg.encoder_embed_dim != cfg.decoder_embed_dim:
                raise ValueError("--share-all-embeddings requires --encoder-embed-dim to match --decoder-embed-dim")
        enc_embed = _embedding(src_dict, cfg.encoder_embed_dim)
        dec_embed = enc_embed if cfg.share_all_embeddings else _embedding(tgt_dict, cfg.decoder_embed_dim)
        encoder = KaleidoscopeLightConvEncoder(cfg, src_dict, enc_embed, chosen["encoder"])
        decoder = KaleidoscopeLightConvDecoder(cfg, tgt_dict, dec_embed, chosen["decoder"], tie)
        model = cls(encoder, decoder)
        model.set_int8_dense(safe_getattr(cfg, "int8_dense", "none"))
        return model

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor):
        encoder_out = self.encoder(src_tokens, src_lengths)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out)

    def set_beam_size(self, beam_size: int) -> None:
        """Called by fairseq's SequenceGenerator (for beams > 1): the encoder attention keeps one copy of
        each sentence's keys and values instead of one per hypothesis (fairseq's "beamable" attention).

        fairseq's encoder-decoder models lack this hook, so their attention projects, stores and
        reorders ``beam`` identical copies; at batch 128 beam 4 that was half of the decoding time.
        """
        self.decoder.set_beam_size(beam_size)

    def use_reference_step(self, enabled: bool = True) -> None:
        """Decode with the plain-PyTorch step (``dynconv_step_ref``, explicit attention products)
        instead of the compiled op and the fused attention kernel: the reference the tests and
        the decoding benchmark compare against. Same hypotheses, slower."""
        for module in self.modules():
            if hasattr(module, "reference_step"):
                module.reference_step = enabled


class KaleidoscopeLightConvEncoder(FairseqEncoder):
    def __init__(self, cfg: object, dictionary: object, embed_tokens: nn.Embedding, kmatrix: frozenset[str]) -> None:
        super().__init__(dictionary)
        dim = embed_tokens.embedding_dim
        self.dropout_module = FairseqDropout(cfg.dropout, module_name=type(self).__name__)
        self.padding_idx = embed_tokens.padding_idx
        self.max_source_positions = cfg.max_source_positions
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(dim)
        self.embed_positions = _positions(cfg, cfg.max_source_positions, embed_tokens, cfg.encoder_learned_pos)
        kopts = kmatrix_options(cfg)
        sizes = _kernel_sizes(cfg.encoder_kernel_size_list, cfg.encoder_layers, "encoder")
        self.layers = nn.ModuleList([LightConvEncoderLayer(cfg, k, kmatrix, kopts) for k in sizes])
        self.layer_norm = LayerNorm(dim) if cfg.encoder_normalize_before else None
        self.register_buffer("version", torch.Tensor([2]))  # as fairseq's: its checkpoints load unchanged

    def forward(self, src_tokens: Tensor, src_lengths: Tensor | None = None) -> EncoderOut:
        """fairseq's encoder-output dict, plus ``encoder_rows``: empty here; after a reorder, the
        row of the other entries each hypothesis reads (see ``reorder_encoder_out``)."""
        x = self.embed_scale * self.embed_tokens(src_tokens)
        if self.embed_positions is not None:
            x = x + self.embed_positions(src_tokens)
        x = self.dropout_module(x).transpose(0, 1)  # T x B x C
        padding_mask = src_tokens.eq(self.padding_idx)
        mask = padding_mask if padding_mask.any() else None
        positions = Positions(mask, *x.shape[:2])
        x = positions.pack(x)  # the layers skip pad positions
        for layer in self.layers:
            x = layer(x, positions)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [positions.unpack(x)],  # (S, N, C), zeros at pad positions
            "encoder_padding_mask": [] if mask is None else [mask],  # (N, S)
            "src_lengths": [] if src_lengths is None else [src_lengths],  # (N,)
            "encoder_rows": [],
        }

    def upgrade_state_dict_named(self, state_dict: dict[str, Tensor], name: str) -> dict[str, Tensor]:
        return _upgrade_state_dict(state_dict, name)

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: Tensor) -> EncoderOut:
        """Hypothesis b now reads the encoder row that hypothesis ``new_order[b]`` read.

        Only the row map ``encoder_rows`` changes (B integers); the encoder's tensors are never
        copied. fairseq's beam search reorders at every step, and copying the (S, B, C) output
        when sentences finish cost tens of megabytes per step at batch 128 beam 4, for nothing
        once the decoder has projected its keys and values. A reorder that keeps every
        hypothesis' row returns ``encoder_out`` itself.
        """
        rows = encoder_out.get("encoder_rows")
        old = rows[0] if rows else torch.arange(encoder_out["encoder_out"][0].size(1), device=new_order.device)
        new = old.index_select(0, new_order)
        if new.numel() == old.numel() and torch.equal(new, old):
            return encoder_out
        return {**encoder_out, "encoder_rows": [new]}

    def max_positions(self) -> int:
        return _max_positions(self.max_source_positions, self.embed_positions)


class KaleidoscopeLightConvDecoder(FairseqIncrementalDecoder):
    def __init__(
        self, cfg: object, dictionary: object, embed_tokens: nn.Embedding, kmatrix: frozenset[str], tie: bool
    ) -> None:
        super().__init__(dictionary)
        dim = embed_tokens.embedding_dim
        self.dropout_module = FairseqDropout(cfg.dropout, module_name=type(self).__name__)
        self.max_target_positions = cfg.max_target_positions
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(dim)
        self.embed_positions = _positions(cfg, cfg.max_target_positions, embed_tokens, cfg.decoder_learned_pos)
        kopts = kmatrix_options(cfg)
        sizes = _kernel_sizes(cfg.decoder_kernel_size_list, cfg.decoder_layers, "decoder")
        self.layers = nn.ModuleList([LightConvDecoderLayer(cfg, k, kmatrix, kopts) for k in sizes])
        self.layer_norm = LayerNorm(dim) if cfg.decoder_normalize_before else None
        self.register_buffer("version", torch.Tensor([2]))
        if tie:
            self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
            self.output_projection.weight = embed_tokens.weight
        elif OUTPUT_PROJECTION in kmatrix:
            self.output_projection = make_linear(dim, len(dictionary), False, kopts)
        else:
            self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim**-0.5)

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: EncoderOut | None = None,
        incremental_state: IncrementalState | None = None,
        features_only: bool = False,
        **unused: object,
    ):
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: EncoderOut | None = None,
        incremental_state: IncrementalState | None = None,
        **unused: object,
    ):
        """The whole sequence, or with ``incremental_state`` (decoding, eval mode) the last position."""
        positions = None
        if incremental_state is not None:
            if self.embed_positions is not None:
                positions = _last_position(self.embed_positions, prev_output_tokens, incremental_state)
            prev_output_tokens = prev_output_tokens[:, -1:]
        elif self.embed_positions is not None:
            positions = self.embed_positions(prev_output_tokens)
        x = self.embed_scale * self.embed_tokens(prev_output_tokens)
        if positions is not None:
            x = x + positions
        x = self.dropout_module(x)
        if incremental_state is not None:
            x, inner_states, attn = self._step(x[:, 0], encoder_out, incremental_state)
        else:
            x, inner_states, attn = self._forward_full(x.transpose(0, 1), encoder_out)  # T x B x C
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x.transpose(0, 1), {"attn": [attn], "inner_states": inner_states}

    def _forward_full(self, x: Tensor, encoder_out: EncoderOut | None):
        enc, enc_mask = self.encoder_states(encoder_out)
        inner_states: list[Tensor] = [x]
        attn = None
        for layer in self.layers:
            x, attn = layer(x, enc, enc_mask)
            inner_states.append(x)
        return x, inner_states, attn

    def _step(self, x: Tensor, encoder_out: EncoderOut | None, incremental_state: IncrementalState):
        """One position through every layer's ``step``: x (B, C); the layers' states are allocated
        on the first step (projecting the encoder's keys and values once)."""
        if self.training:
            raise RuntimeError("incremental decoding is for inference: call .eval() first "
                               "(training and scoring run the whole sequence without incremental_state)")
        inner_states: list[Tensor] = [x.unsqueeze(0)]
        attn = None
        for layer in self.layers:
            state = layer.get_state(incremental_state)
            if state is None:
                enc, mask, rows = _encoder_parts(encoder_out)
                state = layer.allocate_state(x, enc, mask, rows, incremental_state)
            x, attn = layer.step(x, state)
            inner_states.append(x.unsqueeze(0))
        return x.unsqueeze(0), inner_states, attn

    def upgrade_state_dict_named(self, state_dict: dict[str, Tensor], name: str) -> dict[str, Tensor]:
        return _upgrade_state_dict(state_dict, name)

    @staticmethod
    def encoder_states(encoder_out: EncoderOut | None) -> tuple[Tensor | None, Tensor | None]:
        """The encoder output (S, B, C) and padding mask (B, S) of the current hypotheses
        (the rows of ``encoder_rows``, see ``KaleidoscopeLightConvEncoder.reorder_encoder_out``)."""
        enc, mask, rows = _encoder_parts(encoder_out)
        if enc is not None and rows is not None:
            enc = enc.index_select(1, rows)
            mask = None if mask is None else mask.index_select(0, rows)
        return enc, mask

    def output_layer(self, features: Tensor) -> Tensor:
        return self.output_projection(features)

    def reorder_incremental_state_scripting(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """The layers hold all the decoding state. (fairseq's version walks every submodule with
        ``hasattr`` at every search step: about 0.5 ms per step here, a sixth of a batch-1 K-matrix step.)"""
        for layer in self.layers:
            layer.reorder_incremental_state(incremental_state, new_order)

    def max_positions(self) -> int:
        return _max_positions(self.max_target_positions, self.embed_positions)


# ``register_model(..., dataclass=...)`` also registers the architecture
# ``kaleidoscope_lightconv`` itself, with the dataclass defaults.


@register_model_architecture("kaleidoscope_lightconv", "kaleidoscope_lightconv_iwslt_de_en")
def lightconv_iwslt_de_en(args: object) -> None:
    """fairseq's ``lightconv_iwslt_de_en`` with ``--encoder-glu 0 --decoder-glu 0`` (the paper's model)."""
    set_architecture_defaults(args, KaleidoscopeLightConvConfig, {
        "encoder_embed_dim": 512,
        "encoder_ffn_embed_dim": 1024,
        "encoder_attention_heads": 4,
        "encoder_layers": 7,
        "decoder_embed_dim": 512,
        "decoder_ffn_embed_dim": 1024,
        "decoder_attention_heads": 4,
        "decoder_layers": 6,
        "attention_dropout": 0.1,
        "weight_dropout": 0.1,
        "input_dropout": 0.0,
        "encoder_glu": 0,
        "decoder_glu": 0,
    })  # fmt: skip
