"""Exact K-matrix constructors: identity, permutations, Walsh–Hadamard, DFT and inverse DFT.

Each function returns a :class:`KaleidoscopeLinear` (``nblocks=1``, ``bias=False``) whose
twiddles are set so that ``layer(x)`` equals the transform to machine precision.

How the constructions fit the layer's convention (see ``reference.py``): one K-matrix block
is ``M = B_1 B_0``. Writing positions in binary with ``m = log2 n`` bits, a factor of stride
``2**t`` is a "gate" on bit ``t``: for every setting of the other bits it applies its own 2×2
matrix to bit ``t``. ``B_0`` applies gates on bits ``m-1, ..., 1, 0`` (decreasing strides),
then ``B_1`` on bits ``0, 1, ..., m-1``: 2m gate slots in all.

* Permutations: with the two bit-0 slots merged the slots form a Beneš network
  (bits m-1, ..., 1, 0, 1, ..., m-1), which routes any permutation; the switch settings come
  from the classical looping algorithm.
* DFT: decimation in frequency gives ``F = P G_0 G_1 ... G_{m-1}`` (``G_t`` a gate on bit
  ``t``, ``P`` the bit reversal). ``P`` is a product of swaps of bits ``b`` and ``c = m-1-b``,
  and each swap is three controlled-NOTs ``X_c X_b X_c`` (``X_c`` flips bit ``c`` where bit
  ``b`` is set). The gates of the low bits are moved through ``P`` (they become gates on the
  mirrored high bits, placed in ``B_1``); the controlled-NOTs on high bits merge into the
  high-bit gates of both butterflies and those on low bits fill ``B_0``'s low-bit slots.
  Moving a permutation past a gate on another bit only relabels which 2×2 sits on which pair
  (:func:`_conjugate`), so every slot keeps the butterfly sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .layer import KaleidoscopeLinear

_NORMS = ("backward", "ortho", "forward")


def _log2_exact(n: int, what: str = "n") -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n & (n - 1):
        raise ValueError(f"{what} must be a power of two >= 2, got {n!r}")
    return n.bit_length() - 1


def _pair_lower(n: int, t: int) -> torch.Tensor:
    """Lower coordinate ``i`` of every pair ``p`` of the stride-``2**t`` factor."""
    p = torch.arange(n // 2)
    s = 1 << t
    return (p // s) * 2 * s + p % s


def _pair_index(i: torch.Tensor, t: int) -> torch.Tensor:
    """Pair index of the stride-``2**t`` pair whose lower coordinate is ``i``."""
    return ((i >> (t + 1)) << t) | (i & ((1 << t) - 1))


def _identity_gates(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.eye(2, dtype=dtype).expand(n // 2, 2, 2).clone()


def _cnot(n: int, target: int, control: int, dtype: torch.dtype) -> torch.Tensor:
    """Gate on bit ``target`` that swaps the pair where bit ``control`` is set."""
    flip = ((_pair_lower(n, target) >> control) & 1).bool()
    gates = _identity_gates(n, dtype)
    gates[flip] = torch.tensor([[0, 1], [1, 0]], dtype=dtype)
    return gates


def _conjugate(gates: torch.Tensor, t_old: int, t_new: int, pi: torch.Tensor) -> torch.Tensor:
    """The gate ``Π G Π⁻¹`` for a permutation matrix Π with ``(Π x)[π(i)] = x[i]``.

    ``G`` acts on bit ``t_old``; ``π`` must map bit ``t_new`` to bit ``t_old`` (``π(i + 2**t_new)
    = π(i) + 2**t_old`` for lower coordinates ``i``), so the result is a gate on ``t_new`` whose
    pair at ``i`` carries G's 2×2 of the pair at ``π(i)``.
    """
    n = 2 * gates.shape[0]
    return gates[_pair_index(pi[_pair_lower(n, t_new)], t_old)]


def bit_reversal_permutation(n: int) -> torch.Tensor:
    """The bit-reversal permutation of ``range(n)`` (``n`` a power of two) as a LongTensor."""
    m = _log2_exact(n)
    i = torch.arange(n)
    rev = torch.zeros_like(i)
    for b in range(m):
        rev |= ((i >> b) & 1) << (m - 1 - b)
    return rev


def _check_permutation(perm: Sequence[int] | torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(perm)
    if p.dim() != 1 or p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool:
        raise ValueError(f"perm must be a 1-D sequence of integers, got shape {tuple(p.shape)} of {p.dtype}")
    p = p.long().cpu()
    _log2_exact(p.numel(), "len(perm)")
    if not torch.equal(torch.sort(p).values, torch.arange(p.numel())):
        raise ValueError(f"perm is not a permutation of range({p.numel()}): {p.tolist()[:16]}...")
    return p


def _benes(perm: list[int], offset: int, first: torch.Tensor, second: torch.Tensor, n: int) -> None:
    """Route ``y[offset + o] = x[offset + perm[o]]`` through the Beneš slots (looping algorithm).

    ``first[t]`` / ``second[t]`` are the (n/2, 2, 2) gates of bit ``t`` in ``B_0`` / ``B_1``.
    """
    size = len(perm)
    t = size.bit_length() - 2
    swap = torch.tensor([[0, 1], [1, 0]], dtype=first.dtype)
    if size == 2:
        if perm[0] == 1:
            first[0, _pair_index(torch.tensor(offset), 0)] = swap
        return
    half = size // 2
    inv = [0] * size
    for y, x in enumerate(perm):
        inv[x] = y
    side = [-1] * size  # which half-size subnetwork each input is routed through
    for start in range(size):
        x = start
        while side[x] < 0:
            side[x], side[x ^ half] = 0, 1
            x = perm[inv[x ^ half] ^ half]  # the output pair of x's partner must use subnetwork 0
    subs: list[list[int]] = [[0] * half, [0] * half]
    for i in range(half):
        pair = _pair_index(torch.tensor(offset + i), t)
        if side[i] == 1:
            first[t, pair] = swap
        if side[perm[i]] == 1:
            second[t, pair] = swap
        for y in (i, i + half):
            subs[side[perm[y]]][i] = perm[y] % half
    _benes(subs[0], offset, first, second, n)
    _benes(subs[1], offset + half, first, second, n)


def _layer_from_passes(
    first: torch.Tensor, second: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None
) -> KaleidoscopeLinear:
    n = 2 * first.shape[1]
    layer = KaleidoscopeLinear(n, n, bias=False, nblocks=1, init="identity", device=device, dtype=dtype)
    with torch.no_grad():
        layer.twiddle.copy_(torch.stack([first, second]).unsqueeze(0).to(dtype))
    return layer


def _check_dtype(dtype: torch.dtype, complex_only: bool = False) -> None:
    allowed = (torch.complex64, torch.complex128) if complex_only else (
        torch.float32, torch.float64, torch.complex64, torch.complex128)
    if dtype not in allowed:
        raise TypeError(f"dtype must be one of {allowed}, got {dtype}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def kaleidoscope_identity(
    n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> KaleidoscopeLinear:
    """The n×n identity as a K-matrix layer (every 2×2 the identity)."""
    m = _log2_exact(n)
    _check_dtype(dtype)
    eye = _identity_gates(n, _work_dtype(dtype)).expand(m, -1, -1, -1)
    return _layer_from_passes(eye, eye, dtype, device)


def kaleidoscope_permutation(
    perm: Sequence[int] | torch.Tensor, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> KaleidoscopeLinear:
    """A layer with ``layer(x) == x[..., perm]`` exactly: any permutation is one ``B Bᵀ`` block."""
    p = _check_permutation(perm)
    _check_dtype(dtype)
    n = p.numel()
    m = _log2_exact(n)
    wd = _work_dtype(dtype)
    first = _identity_gates(n, wd).expand(m, -1, -1, -1).clone()
    second = first.clone()
    _benes(p.tolist(), 0, first, second, n)
    return _layer_from_passes(first, second, dtype, device)


def kaleidoscope_bit_reversal(
    n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> KaleidoscopeLinear:
    """The bit-reversal permutation ``x[..., bit_reversal_permutation(n)]`` as a K-matrix layer."""
    return kaleidoscope_permutation(bit_reversal_permutation(n), dtype=dtype, device=device)


def kaleidoscope_hadamard(
    n: int, normalized: bool = True, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> KaleidoscopeLinear:
    """The Walsh–Hadamard transform in Sylvester order (``scipy.linalg.hadamard(n)``).

    ``normalized=True`` divides by ``sqrt(n)`` (orthogonal, its own inverse); otherwise the
    entries are ±1. Every 2×2 of ``B_0`` is ``[[1, 1], [1, -1]]`` (times ``1/sqrt 2`` when
    normalized); ``B_1`` is the identity.
    """
    m = _log2_exact(n)
    _check_dtype(dtype)
    wd = _work_dtype(dtype)
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=wd) / (math.sqrt(2.0) if normalized else 1.0)
    first = h.expand(m, n // 2, 2, 2)
    second = _identity_gates(n, wd).expand(m, -1, -1, -1)
    return _layer_from_passes(first, second, dtype, device)


def _dif_gates(n: int, t: int, inverse: bool, scale: float) -> torch.Tensor:
    """Decimation-in-frequency stage on bit t: ``(u, v) -> (u + v, w (u - v))``, w = exp(∓iπ off/s)."""
    s = 1 << t
    off = torch.arange(n // 2, dtype=torch.float64) % s
    w = torch.exp((1j if inverse else -1j) * math.pi * off / s)
    one = torch.ones_like(w)
    return scale * torch.stack([torch.stack([one, one], -1), torch.stack([w, -w], -1)], -2)


def kaleidoscope_dft(
    n: int,
    inverse: bool = False,
    norm: str = "backward",
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> KaleidoscopeLinear:
    """The DFT (``torch.fft.fft``) or, with ``inverse=True``, ``torch.fft.ifft``, as one ``B Bᵀ`` block.

    ``norm`` has ``torch.fft``'s meaning: ``"backward"`` (no scaling forward, 1/n inverse),
    ``"ortho"`` (1/sqrt(n) both ways: unitary) or ``"forward"`` (1/n forward). Needs a complex
    dtype (the layer then runs on the reference path). The construction is explained in the
    module docstring.
    """
    m = _log2_exact(n)
    _check_dtype(dtype, complex_only=True)
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    scaled = (norm == "forward") != inverse if norm != "ortho" else True
    scale = (0.5 if norm != "ortho" else math.sqrt(0.5)) if scaled else 1.0
    wd = torch.complex128
    gates = [_dif_gates(n, t, inverse, scale) for t in range(m)]
    highs = [c for c in range(m) if c > m - 1 - c]  # bit c pairs with the low bit m-1-c
    i = torch.arange(n)
    rev = bit_reversal_permutation(n)

    def flips(cs: list[int]) -> torch.Tensor:
        """Index map of the product of the controlled-NOTs X_c (c in cs): flip c where m-1-c is set."""
        out = i.clone()
        for c in cs:
            out ^= ((i >> (m - 1 - c)) & 1) << c
        return out

    first = _identity_gates(n, wd).expand(m, -1, -1, -1).clone()
    second = first.clone()
    # B_0, high bits (and the middle one): the DIF gate, conjugated by the X_c already applied,
    # then X_c itself.
    for c in range(m - 1, m // 2 - 1, -1):
        done = [h for h in highs if h > c]
        g = _conjugate(gates[c], c, c, flips(done))
        if c in highs:
            g = _cnot(n, c, m - 1 - c, wd) @ g
        first[c] = g
    # B_0, low bits: the middle controlled-NOT X_b of each swap.
    for b in range(m // 2 - 1, -1, -1):
        if m - 1 - b != b:
            first[b] = _cnot(n, b, m - 1 - b, wd)
    # B_1, high bits: the last X_c of each swap, then the low bit's DIF gate moved through P.
    for c in highs:
        moved = _conjugate(gates[m - 1 - c], m - 1 - c, c, rev)
        later = [h for h in highs if h > c]
        second[c] = _conjugate(moved, c, c, flips(later)) @ _cnot(n, c, m - 1 - c, wd)
    return _layer_from_passes(first, second, dtype, device)
