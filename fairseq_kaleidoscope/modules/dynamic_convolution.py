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

from .dynconv_step import dynconv_step, dynconv_step_ref, reorder_cache
from .kmatrix_layers import dense_linear

IncrementalState = dict[str, object]  # fairseq's incremental_state: one typed state object per module
LinearFactory = Callable[[int, int, bool], nn.Module]


class DynamicConvState:
    """Decoding state of a causal :class:`DynamicConv`: a ring buffer of the last K inputs.

    ``ring``: (B, K, C), zero-initialised, position p in slot p % K (see ``dynconv_step.py``);
    ``steps``: positions decoded so far.
    """

    __slots__ = ("ring", "steps")

    def __init__(self, ring: Tensor) -> None:
        self.ring, self.steps = ring, 0

    def reorder(self, new_order: Tensor) -> None:
        """Row b continues the history of row ``new_order[b]`` (beam search; the batch may shrink)."""
        self.ring = reorder_cache(self.ring, new_order, self.steps - 1)


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
        self.reference_step = False  # decode with the plain-PyTorch step (set by ``use_reference_step``)
        self.init_incremental_state()

    def _taps(self, x: Tensor) -> Tensor:
        """Normalised taps (T, B, H, K) predicted from ``x`` (T, B, C)."""
        T, B, _ = x.shape
        w = self.weight_linear(x).view(T, B, self.num_heads, self.kernel_size)
        if self.weight_softmax:
            w = F.softmax(w, dim=-1, dtype=torch.float32).type_as(w)
        return self.weight_dropout_module(w)

    def forward(self, x: Tensor, incremental_state: IncrementalState | None = None) -> Tensor:
        """(T, B, C) -> (T, B, C): all positions at once, or, given an incremental state (eval
        mode, decoding), the next T positions through :meth:`step`."""
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"DynamicConv: expected input (T, B, {self.input_size}), got {tuple(x.shape)}")
        if incremental_state is None:
            return self._forward_full(x)
        state = self.get_incremental_state(incremental_state, "state")
        if state is None:
            state = self.allocate_state(x.size(1), x)
            self.set_incremental_state(incremental_state, "state", state)
        return torch.stack([self.step(x[t], state) for t in range(x.size(0))])

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

    def allocate_state(self, batch: int, like: Tensor) -> DynamicConvState:
        """The decoding state of ``batch`` rows, with ``like``'s dtype and device (eval mode only)."""
        if self.training:
            raise RuntimeError("DynamicConv: incremental decoding is for inference; call .eval() first "
                               "(training uses the full-sequence forward)")
        if self.padding_l != self.kernel_size - 1:
            raise ValueError("DynamicConv: incremental decoding needs a causal kernel (padding_l = kernel_size - 1)")
        return DynamicConvState(like.new_zeros(batch, self.kernel_size, self.input_size))

    def step(self, x: Tensor, state: DynamicConvState) -> Tensor:
        """One decoding position: (B, C) -> (B, C); appends ``x`` to ``state``.

        One call of the compiled op (``dynconv_step``) where it applies; its plain-PyTorch
        definition ``dynconv_step_ref`` under autograd (it is differentiable) or when
        ``reference_step`` is set. Weight dropout is the identity in eval mode.
        """
        logits = self.weight_linear(x)
        step = dynconv_step_ref if self.reference_step or torch.is_grad_enabled() else dynconv_step
        y = step(x, logits, state.ring, state.steps, self.weight_softmax)
        state.steps += 1
        return y

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        state = self.get_incremental_state(incremental_state, "state")
        if state is not None:
            state.reorder(new_order)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, kernel_size={self.kernel_size}, padding_l={self.padding_l}, "
            f"num_heads={self.num_heads}, weight_softmax={self.weight_softmax}, "
            f"weight_dropout={self.weight_dropout_module.p}"
        )
