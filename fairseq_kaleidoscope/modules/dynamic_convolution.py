"""Dynamic convolution (Wu et al., 2019) whose training and decoding outputs agree.

fairseq's ``DynamicConv_scripatable`` trims the kernel to the sequence length *before*
the softmax when the kernel is longer than the sequence, while step-by-step decoding
normalises over all taps: the two modes disagree whenever K > T. Here every mode
normalises over all K taps and positions outside the sequence contribute zeros, so a
full-sequence forward and incremental decoding give the same outputs for any length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import FairseqIncrementalState
from fairseq.modules import FairseqDropout
from torch import Tensor, nn

from .dynconv_step import dynconv_step, reorder_cache
from .fast_decoding import fast_decoding_enabled

IncrementalState = dict[str, dict[str, Tensor | None]]
LinearFactory = Callable[[int, int, bool], nn.Module]


def dense_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """fairseq's init for the projections: Xavier-uniform weight, zero bias."""
    m = nn.Linear(in_features, out_features, bias)
    nn.init.xavier_uniform_(m.weight)
    if bias:
        nn.init.zeros_(m.bias)
    return m


def dynamic_conv_reference(x: Tensor, weight: Tensor, padding_l: int) -> Tensor:
    """Plain loop definition: ``y[t] = sum_k weight[t, k] * x[t - padding_l + k]``.

    ``x``: (T, B, C); ``weight``: (T, B, H, K), already normalised; zero padding.
    Slow; for tests.
    """
    T, B, C = x.shape
    H, K = weight.shape[2], weight.shape[3]
    xh = x.view(T, B, H, C // H)
    y = torch.zeros_like(xh)
    for t in range(T):
        for k in range(K):
            s = t - padding_l + k
            if 0 <= s < T:
                y[t] += weight[t, :, :, k, None] * xh[s]
    return y.view(T, B, C)


class DynamicConv(nn.Module, FairseqIncrementalState):
    """Dynamic depthwise convolution over time, input and output (T, B, C).

    For every position a linear map of the input (``weight_linear``, C -> H·K) predicts
    one kernel of K taps per head; the taps are softmax-normalised over all K
    (``weight_softmax``) and applied to the C/H channels of that head.

    Args:
        input_size: channels C.
        kernel_size: taps K.
        padding_l: taps to the left of the current position (K-1 for a causal decoder,
            K//2 for a centred encoder).
        num_heads: heads H (C must be divisible by H).
        weight_dropout: DropConnect on the normalised taps (training only).
        weight_softmax: normalise the taps with a softmax.
        linear: builds the weight projection ``linear(in, out, bias)``; pass a
            K-matrix factory to make it structured.
    """

    def __init__(
        self,
        input_size: int,
        kernel_size: int,
        padding_l: int,
        num_heads: int = 1,
        weight_dropout: float = 0.0,
        weight_softmax: bool = True,
        linear: LinearFactory = dense_linear,
    ) -> None:
        super().__init__()
        if input_size % num_heads != 0:
            raise ValueError(f"DynamicConv: input_size {input_size} is not divisible by num_heads {num_heads}")
        if kernel_size < 1 or not 0 <= padding_l < kernel_size:
            raise ValueError(f"DynamicConv: need kernel_size >= 1 and 0 <= padding_l < kernel_size, "
                             f"got kernel_size={kernel_size}, padding_l={padding_l}")
        self.input_size, self.kernel_size, self.padding_l = input_size, kernel_size, padding_l
        self.num_heads, self.weight_softmax = num_heads, weight_softmax
        self.weight_dropout_module = FairseqDropout(weight_dropout, module_name=type(self).__name__)
        self.weight_linear = linear(input_size, num_heads * kernel_size, False)
        self.init_incremental_state()

    def _taps(self, x: Tensor) -> Tensor:
        """Normalised taps (T, B, H, K) predicted from ``x`` (T, B, C)."""
        T, B, _ = x.shape
        w = self.weight_linear(x).view(T, B, self.num_heads, self.kernel_size)
        if self.weight_softmax:
            w = F.softmax(w, dim=-1, dtype=torch.float32).type_as(w)
        return self.weight_dropout_module(w)

    def forward(self, x: Tensor, incremental_state: IncrementalState | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"DynamicConv: expected input (T, B, {self.input_size}), got {tuple(x.shape)}")
        if incremental_state is not None:
            # The ring-buffer op has no gradient: decoding under autograd takes the generic step.
            if x.size(0) == 1 and not self.training and not torch.is_grad_enabled() and fast_decoding_enabled():
                return self._forward_ring_step(x, incremental_state)
            return self._forward_step(x, incremental_state)
        return self._forward_full(x)

    def _forward_full(self, x: Tensor) -> Tensor:
        """All positions at once: the taps become a banded (T, T) matrix per (batch, head)."""
        T, B, C = x.shape
        H, K, P = self.num_heads, self.kernel_size, self.padding_l
        w = self._taps(x).permute(1, 2, 0, 3).reshape(B * H, T, K)
        # Skew trick: pad each row of taps to length T+K, flatten, and re-read the
        # buffer with row length T+K-1; row t is then shifted right by t, so
        # band[:, t, t + k] = w[:, t, k] and every other entry is zero.
        band = F.pad(w, (0, T)).view(B * H, T * (T + K))[:, : T * (T + K - 1)].view(B * H, T, T + K - 1)
        # Column j of ``band`` is input position j - P; keep the T real positions.
        band = band[:, :, P : P + T]
        xh = x.view(T, B * H, C // H).transpose(0, 1)
        y = torch.bmm(band, xh)  # (B*H, T, C/H)
        return y.transpose(0, 1).reshape(T, B, C)

    def _forward_step(self, x: Tensor, incremental_state: IncrementalState) -> Tensor:
        """Decoder steps: the last K-1 inputs are kept in the incremental state."""
        if self.padding_l != self.kernel_size - 1:
            raise ValueError("DynamicConv: incremental decoding needs a causal kernel (padding_l = kernel_size - 1)")
        T, B, C = x.shape
        H, K = self.num_heads, self.kernel_size
        w = self._taps(x)  # (T, B, H, K)
        prev = self._get_input_buffer(incremental_state)
        window = x if prev is None else torch.cat([prev, x], dim=0)  # (L, B, C), newest last
        if K > 1:
            self._set_input_buffer(incremental_state, window[-(K - 1) :])
        out = []
        for t in range(T):  # T is 1 during generation
            end = window.shape[0] - T + t + 1
            ctx = window[max(0, end - K) : end]  # at most K most recent inputs
            taps = w[t, :, :, K - ctx.shape[0] :]  # taps for positions before the start multiply zeros
            ctx = ctx.view(ctx.shape[0], B, H, C // H)
            out.append(torch.einsum("bhk,kbhr->bhr", taps, ctx).reshape(B, C))
        return torch.stack(out, dim=0)

    def _forward_ring_step(self, x: Tensor, incremental_state: IncrementalState) -> Tensor:
        """One decoding step (T = 1, eval) as one op call on a preallocated ring buffer of the last K inputs.

        Same result as ``_forward_step``; see ``dynconv_step.py`` for the op and its reference.
        """
        if self.padding_l != self.kernel_size - 1:
            raise ValueError("DynamicConv: incremental decoding needs a causal kernel (padding_l = kernel_size - 1)")
        B, C = x.shape[1], x.shape[2]
        state = self.get_incremental_state(incremental_state, "ring_state")
        if state is None:
            state = {"ring": x.new_zeros(B, self.kernel_size, C), "steps": 0}
            self.set_incremental_state(incremental_state, "ring_state", state)
        logits = self.weight_linear(x).view(B, -1)
        y = dynconv_step(x.view(B, C), logits, state["ring"], state["steps"], self.weight_softmax)
        state["steps"] += 1
        return y.view(1, B, C)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        buf = self._get_input_buffer(incremental_state)
        if buf is not None:
            self._set_input_buffer(incremental_state, buf.index_select(1, new_order))
        state = self.get_incremental_state(incremental_state, "ring_state")
        if state is not None:
            state["ring"] = reorder_cache(state["ring"], new_order, state["steps"] - 1)

    def _get_input_buffer(self, incremental_state: IncrementalState | None) -> Tensor | None:
        state = self.get_incremental_state(incremental_state, "conv_state")
        return None if state is None else state.get("input_buffer")

    def _set_input_buffer(self, incremental_state: IncrementalState, buf: Tensor) -> None:
        self.set_incremental_state(incremental_state, "conv_state", {"input_buffer": buf})

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, kernel_size={self.kernel_size}, padding_l={self.padding_l}, "
            f"num_heads={self.num_heads}, weight_softmax={self.weight_softmax}, "
            f"weight_dropout={self.weight_dropout_module.p}"
        )
