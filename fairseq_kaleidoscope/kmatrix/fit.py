"""Learn K-matrix parameters that reproduce a given linear map.

:func:`fit` trains a population of randomly initialised K-matrices side by side (the
restarts are the ``nstacks`` of one twiddle tensor, so one kernel call serves all of them)
with Adam on the squared error, prunes the worse half of the population at fixed points of
the run, stops at a target RMSE, a step or time budget, or when progress stalls, and can
polish the best candidate with L-BFGS. Real twiddles run on the compiled kernel; complex
ones (needed for the DFT; they also make real targets easier to learn) run on the
plain-PyTorch reference, which broadcasts one input over every candidate.

The target is a dense ``(out, in)`` matrix, a callable black box (probed once with the
identity: a linear map is fixed by its values on a basis), or input–output pairs
``(X, Y)`` with ``Y ≈ X Mᵀ`` (rows are samples, as for ``nn.Linear``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .layer import KaleidoscopeLinear
from .ops import butterfly_multiply, uses_compiled_kernel
from .reference import butterfly_multiply_ref

Target = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | tuple[torch.Tensor, torch.Tensor]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``rmse`` is the root-mean-square entry error of ``layer.to_dense() - target`` (matrix
    and callable targets) or of ``layer(X) - Y`` (pairs), measured in float64 after the
    fit. ``restarts`` is the number of random initialisations tried, ``steps`` the
    optimiser steps taken (Adam and L-BFGS iterations), ``history`` the best RMSE of the
    population at each logged step as ``(step, seconds, rmse)``, ``probes`` the random
    probes per step at the end (0: the whole basis or sample rows were used).
    """

    layer: KaleidoscopeLinear
    rmse: float
    steps: int
    seconds: float
    restarts: int
    reached: bool
    stop_reason: str
    history: list[tuple[int, float, float]] = field(default_factory=list)
    probes: int = 0


def _as_problem(target: Target, in_features: int | None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Return (dense target or None, inputs X, outputs Y) with ``Y = X Tᵀ``."""
    if isinstance(target, tuple):
        if len(target) != 2:
            raise ValueError("pairs must be given as a tuple (X, Y)")
        x, y = (torch.as_tensor(t) for t in target)
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"pairs must be X (samples, in) and Y (samples, out), got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        return None, x, y
    if callable(target) and not isinstance(target, torch.Tensor):
        if in_features is None:
            raise ValueError("a callable target needs in_features")
        eye = torch.eye(in_features, dtype=torch.float64)
        try:
            y = torch.as_tensor(target(eye))
        except (TypeError, RuntimeError):  # the black box may want a float32 input
            y = torch.as_tensor(target(eye.float()))
        if y.dim() != 2 or y.shape[0] != in_features:
            raise ValueError(f"target(eye({in_features})) must have shape ({in_features}, out), got {tuple(y.shape)}")
        return y.t().clone(), eye, y
    t = torch.as_tensor(target)
    if t.dim() != 2:
        raise ValueError(f"target must be a 2-D (out, in) matrix, got shape {tuple(t.shape)}")
    return t, torch.eye(t.shape[1], dtype=t.dtype), t.t()


MIN_PROBES = 32


def default_probes() -> int:
    """Random probes per Adam step that :func:`fit` starts with by default (32, any size).

    The default then doubles at every plateau (each time the learning rate is halved), up
    to ``in_features``. Why: the step's loss ``|(M - T) X|² / p`` with ``p`` Gaussian probe
    columns ``X`` has the gradient of ``|M - T|_F²`` with ``I`` replaced by ``X Xᵀ / p``,
    and ``|X Xᵀ / p - I|_F ≈ n / sqrt(p)`` against ``|I|_F = sqrt(n)``: the gradient noise
    relative to the signal is about ``sqrt(n / p)``, 5.7 for 32 probes at n = 1024, where
    a Hadamard fit stalled (RMSE 9.8e-4 after 282 s; 95 s to 1e-4 with the growth). A fixed
    ``p ∝ n`` would bound the noise from the first step, but it is not what limits the
    early, fast progress: 128 probes from the start made the n = 1024 DFT fit 2.3 times
    slower (144 s against 63 s). Small sizes keep 32 (``p >= n`` already; the exact basis,
    ``probes=0``, was no faster there and lost the n = 8 random permutation: the noise
    helps Adam out of poor basins).
    """
    return MIN_PROBES


def _rmse(err: torch.Tensor) -> torch.Tensor:
    """Per-candidate RMSE of ``err`` (candidates, ...)."""
    return err.abs().pow(2).flatten(1).mean(1).sqrt()


class _Population:
    """``count`` K-matrices ``(out, in)`` sharing one twiddle tensor (restarts = stacks)."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, count: int, init: str, dtype: torch.dtype):
        layers = [KaleidoscopeLinear(in_features, out_features, bias=False, nblocks=nblocks, init=init, dtype=dtype)
                  for _ in range(count)]
        self.shape = layers[0]
        self.in_features, self.out_features = in_features, out_features
        self.n, self.nstacks = self.shape.n, self.shape.nstacks
        self.twiddle = torch.cat([layer.twiddle.detach() for layer in layers]).requires_grad_()
        # Fixed input permutation of each candidate (None: none), applied by indexing.
        self.perms: list[torch.Tensor | None] = [None] * count

    @property
    def count(self) -> int:
        return self.twiddle.shape[0] // self.nstacks

    def apply(self, x: torch.Tensor, twiddle: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (batch, in) -> (count, batch, out): every candidate applied to x.

        :func:`~.reference.kmatrix_linear_ref` per candidate, not the ``kmatrix_linear`` op: a
        candidate with a fixed permutation needs its own input in its stacks, each candidate
        keeps its own first ``out`` rows, and complex twiddles (no compiled kernel) run
        :func:`~.reference.butterfly_multiply_ref`, which broadcasts one input over all stacks.
        """
        tw = self.twiddle if twiddle is None else twiddle
        count = tw.shape[0] // self.nstacks
        if self.n != self.in_features:
            x = torch.nn.functional.pad(x, (0, self.n - self.in_features))
        if any(p is not None for p in self.perms):
            xs = torch.stack([x if p is None else x[:, p] for p in self.perms], 1)  # (batch, count, n)
            xs = xs.unsqueeze(2).expand(-1, -1, self.nstacks, -1).reshape(x.shape[0], -1, self.n)
        else:
            xs = x.unsqueeze(1)
        if uses_compiled_kernel(x):
            y = butterfly_multiply(tw, xs.expand(-1, count * self.nstacks, self.n), False)
        else:
            y = butterfly_multiply_ref(tw, xs, False)
        y = y.reshape(x.shape[0], count, self.nstacks * self.n)[..., : self.out_features]
        return y.transpose(0, 1)

    def keep(self, idx: torch.Tensor) -> None:
        tw = self.twiddle.detach().view(self.count, self.nstacks, *self.twiddle.shape[1:])[idx]
        self.twiddle = tw.reshape(-1, *tw.shape[2:]).clone().requires_grad_()
        self.perms = [self.perms[i] for i in idx.tolist()]

    @torch.no_grad()
    def rescale_rows(self, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Adam) -> None:
        """Scale every output row of every candidate by its least-squares optimum.

        A real network of 2×2 rotations and reflections equals a network of rotations followed
        by output signs; Adam cannot flip a sign without passing through a singular 2×2, so a
        wrong sign is a trap. This exact step (it never raises the error) flips them, and for
        complex targets it also corrects phases. The scales go into the rows of the last
        factor (stride n/2 of the last butterfly), and into Adam's first moment.
        """
        pred = self.apply(x, self.twiddle.detach())  # (count, batch, out)
        num = (pred.conj() * y).sum(1)
        den = pred.abs().pow(2).sum(1)
        scale = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(num))
        full = torch.ones(self.count, self.nstacks * self.n, dtype=scale.dtype)
        full[:, : self.out_features] = scale
        # Pair p of the stride-n/2 factor writes rows p (2x2 row 0) and p + n/2 (row 1).
        full = full.view(self.count * self.nstacks, 2, self.n // 2).transpose(1, 2).unsqueeze(-1)
        last = self.twiddle[:, -1, -1]
        last.mul_(full)
        state = opt.state.get(self.twiddle, {})
        if "exp_avg" in state:
            unit = full / full.abs().clamp_min(1e-30)
            state["exp_avg"][:, -1, -1].mul_(unit)

    def layer(self, i: int, dtype: torch.dtype) -> KaleidoscopeLinear:
        s = self.shape
        twiddle = self.twiddle.detach()[i * self.nstacks : (i + 1) * self.nstacks].to(dtype)
        if self.perms[i] is not None:
            # The permutation becomes an exact first block in front of the learned ones.
            from .constructors import kaleidoscope_permutation

            first = kaleidoscope_permutation(self.perms[i], dtype=dtype).twiddle.detach()
            twiddle = torch.cat([first.expand(self.nstacks, *first.shape[1:]), twiddle], 1)
        out = KaleidoscopeLinear(s.in_features, s.out_features, bias=False, nblocks=twiddle.shape[1] // 2,
                                 init="identity", dtype=dtype)
        with torch.no_grad():
            out.twiddle.copy_(twiddle)
        return out


def fit(
    target: Target,
    nblocks: int = 1,
    *,
    in_features: int | None = None,
    restarts: int = 4,
    max_steps: int = 3000,
    lr: float = 0.02,
    target_rmse: float = 1e-4,
    patience: int = 300,
    time_budget: float | None = None,
    prune_every: int | None = None,
    polish_steps: int = 200,
    permutation: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    batch_size: int | None = None,
    probes: int | None = None,
    rescale_every: int = 20,
    init: str = "ortho",
    dtype: torch.dtype | None = None,
    seed: int | None = 0,
    log_every: int = 50,
    verbose: bool = False,
) -> FitResult:
    """Learn a :class:`KaleidoscopeLinear` (``bias=False``) that reproduces ``target``.

    Args:
        target: an ``(out, in)`` matrix ``T`` (the layer then computes ``x ↦ T x``), a
            callable ``f`` with ``f(X) = X Tᵀ`` for a batch ``X`` of rows (give
            ``in_features``), or a pair ``(X, Y)`` of sample rows.
        nblocks: number of ``B Bᵀ`` blocks of the K-matrix.
        restarts: random initialisations trained side by side; the worse half is dropped
            every ``prune_every`` steps (default ``max_steps // 4``) until one is left.
        max_steps, time_budget (seconds), patience: stop after that many Adam steps, that
            much time, or when the best RMSE (a running average of the estimates with
            probes) has not improved by 1% in ``patience`` steps.
        lr: Adam's learning rate, decayed by 1/2 each time progress stalls for
            ``patience // 3`` steps.
        target_rmse: stop as soon as a candidate is this close.
        polish_steps: L-BFGS iterations on the best candidate (in float64/complex128, on the
            whole basis) when Adam stopped short of ``target_rmse``, within what is left of
            ``time_budget``; 0 disables.
        permutation: a fixed permutation ``perm`` applied first (the layer sees
            ``x[..., perm]``), as in the "BP" model of Dao et al. (ICML 2019) where the
            bit reversal lets a butterfly learn the FFT. It becomes an exact extra first
            block (see :func:`kaleidoscope_permutation`) that is never trained: the returned
            layer has ``nblocks + 1`` blocks. A list of candidates (``None`` = no
            permutation) spreads the restarts over them in turn and the fit picks the
            best, a discrete stand-in for the paper's learned permutation.
        batch_size: sample rows per step (pairs only; default all).
        probes: matrix/callable targets: random Gaussian input vectors drawn afresh for
            each Adam step (0: the whole basis every step), kept fixed when given. Default:
            :func:`default_probes` (32) to start, doubled at each plateau (when ``lr`` is
            halved) up to ``in_features``: the gradient noise relative to the signal is about
            ``sqrt(in_features / probes)``, harmless while progress is fast, what stalls the
            end of large fits. Cheaper than the basis and, measured, more reliable at small
            n: the noise helps Adam out of poor basins. Stopping and pruning are decided on
            the exact error.
        rescale_every: every that many steps, rescale each output row of each candidate to its
            least-squares optimum (exact; frees real fits from sign traps); 0 disables.
        init: twiddle initialisation (see :class:`KaleidoscopeLinear`).
        dtype: twiddle dtype while training; default float32 for real targets (compiled
            kernel) and complex64 for complex ones.
        seed: seeds the initialisations (``None``: leave the global RNG alone).

    Returns:
        a :class:`FitResult`; its layer has the target's precision (float64/complex128
        for such targets, else the training dtype).
    """
    start = time.perf_counter()
    if nblocks < 1 or restarts < 1 or max_steps < 0:
        raise ValueError(f"need nblocks >= 1, restarts >= 1, max_steps >= 0; got {nblocks}, {restarts}, {max_steps}")
    dense, x_all, y_all = _as_problem(target, in_features)
    is_complex = x_all.is_complex() or y_all.is_complex()
    if dtype is None:
        dtype = torch.complex64 if is_complex else torch.float32
    if is_complex and not dtype.is_complex:
        raise TypeError(f"a complex target needs a complex dtype, got {dtype}")
    wide = torch.complex128 if dtype.is_complex else torch.float64
    if seed is not None:
        torch.manual_seed(seed)
    pop = _Population(x_all.shape[1], y_all.shape[1], nblocks, restarts, init, dtype)
    if permutation is not None:
        single = torch.is_tensor(permutation) or all(isinstance(v, int) for v in permutation)
        cands = [permutation] if single else list(permutation)
        if not cands:
            raise ValueError("permutation: give a permutation, a non-empty list of candidates, or None")
        checked = [None if p is None else _check_fixed_permutation(p, pop) for p in cands]
        pop.perms = [checked[i % len(checked)] for i in range(restarts)]
    x_tr, y_tr = x_all.to(dtype), y_all.to(dtype)
    t_tr = None if dense is None else dense.to(dtype)
    grow_probes = probes is None  # the default grows on plateaus; an explicit count stays fixed
    if probes is None:
        probes = default_probes()
    elif probes < 0:
        raise ValueError(f"probes must be >= 0 (0: the whole basis), got {probes}")
    prune_every = prune_every or max(1, max_steps // 4)
    history: list[tuple[int, float, float]] = []

    def batch() -> tuple[torch.Tensor, torch.Tensor, float]:
        """Inputs, outputs and the factor turning their RMSE into the entry RMSE of M - T."""
        if t_tr is not None and probes:
            # Unit-variance random probes: E|(M - T) x|² / in = mean |M - T|² entry-wise.
            xb = torch.randn(probes, t_tr.shape[1], dtype=dtype)
            return xb, xb @ t_tr.t(), 1 / math.sqrt(t_tr.shape[1])
        if t_tr is None and batch_size is not None:
            idx = torch.randint(0, x_tr.shape[0], (batch_size,))
            return x_tr[idx], y_tr[idx], 1.0
        return x_tr, y_tr, 1.0

    def exact_rmse() -> torch.Tensor:
        with torch.no_grad():
            return _rmse(pop.apply(x_tr) - y_tr)

    opt = torch.optim.Adam([pop.twiddle], lr=lr)
    sub = torch.randperm(x_tr.shape[0])[:1024]  # enough rows to estimate the row scales
    best, best_step, decay_step, step, last_prune, stop = math.inf, 0, 0, 0, 0, "max_steps"
    smooth = math.inf  # progress measure: the probe estimates are noisy, so an average of them
    while True:
        if rescale_every and step % rescale_every == 0:
            pop.rescale_rows(x_tr[sub], y_tr[sub], opt)
        xb, yb, scale = batch()
        err = pop.apply(xb) - yb
        with torch.no_grad():
            rmse = _rmse(err) * scale
        if rmse.min().item() <= target_rmse and scale != 1.0:
            rmse = exact_rmse()  # the probe estimate is noisy: confirm on the whole basis
        cur = rmse.min().item()
        if step % log_every == 0 or cur <= target_rmse:
            history.append((step, time.perf_counter() - start, cur))
            if verbose:
                print(f"step {step:6d}  {time.perf_counter() - start:7.1f}s  best rmse {cur:.3e}  alive {pop.count}")
        smooth = cur if scale == 1.0 or not math.isfinite(smooth) else 0.9 * smooth + 0.1 * cur
        if smooth < best * 0.99:
            best, best_step, decay_step = smooth, step, step
        if cur <= target_rmse:
            stop = "target"
            break
        if step >= max_steps:
            break
        if time_budget is not None and time.perf_counter() - start > time_budget:
            stop = "time_budget"
            break
        if step - best_step >= patience:
            stop = "patience"
            break
        if step - decay_step >= max(1, patience // 3):  # plateau: halve the step size
            decay_step = step
            for g in opt.param_groups:
                g["lr"] *= 0.5
            if grow_probes and 0 < probes < x_all.shape[1]:  # and less noise: see default_probes
                probes = min(2 * probes, x_all.shape[1])
        if step - last_prune >= prune_every and pop.count > 1:
            last_prune = step
            keep = torch.argsort(exact_rmse())[: max(1, pop.count // 2)]
            opt = _prune(pop, opt, keep)
            continue
        opt.zero_grad(set_to_none=True)
        err.abs().pow(2).sum().backward()
        opt.step()
        step += 1

    rmse = exact_rmse()
    best_i = int(torch.argmin(rmse))
    pop.keep(torch.tensor([best_i]))
    pop.twiddle = pop.twiddle.detach().to(wide).requires_grad_()
    x_w, y_w = x_all.to(wide), y_all.to(wide)
    final = _rmse(pop.apply(x_w, pop.twiddle.detach()) - y_w).item()
    if stop != "target" and polish_steps > 0:
        deadline = math.inf if time_budget is None else start + time_budget
        final, used = _polish(pop, x_w, y_w, polish_steps, target_rmse, deadline)
        step += used
        history.append((step, time.perf_counter() - start, final))
        if final <= target_rmse:
            stop = "target"
    out_dtype = wide if (x_all.dtype in (torch.float64, torch.complex128) or y_all.dtype in (
        torch.float64, torch.complex128)) else dtype
    layer = pop.layer(0, out_dtype)
    used_probes = probes if t_tr is not None else 0
    return FitResult(layer, final, step, time.perf_counter() - start, restarts, final <= target_rmse, stop, history,
                     used_probes)


def _prune(pop: _Population, opt: torch.optim.Adam, keep: torch.Tensor) -> torch.optim.Adam:
    """Keep the candidates ``keep`` and the matching slices of Adam's state."""
    state = opt.state[pop.twiddle]
    pop.keep(keep)
    new = torch.optim.Adam([pop.twiddle], lr=opt.param_groups[0]["lr"])
    new.state[pop.twiddle] = {
        k: v.view(-1, pop.nstacks, *v.shape[1:])[keep].reshape(-1, *v.shape[1:]) if v.dim() > 0 else v
        for k, v in state.items()
    }
    return new


def _check_fixed_permutation(perm: torch.Tensor, pop: _Population) -> torch.Tensor:
    """Validate a fixed input permutation (it must act on the layer's ``in_features == n``)."""
    from .constructors import _check_permutation

    p = _check_permutation(perm)
    if p.numel() != pop.in_features or pop.in_features != pop.n:
        raise ValueError(
            f"permutation must have length in_features = {pop.in_features} (a power of two), got {p.numel()}"
        )
    return p


class _StopPolish(Exception):
    """Raised inside the L-BFGS closure to end the polish (target reached or out of time)."""


def _polish(
    pop: _Population, x: torch.Tensor, y: torch.Tensor, steps: int, target_rmse: float, deadline: float
) -> tuple[float, int]:
    """L-BFGS on the single remaining candidate until ``deadline`` (perf_counter); returns (rmse, evaluations).

    The best point evaluated is kept (an interrupted line search may sit on a worse one).
    """
    tw = pop.twiddle
    opt = torch.optim.LBFGS([tw], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=0.0, tolerance_change=0.0)
    stop_loss = target_rmse**2 * y.numel() * 0.25
    best = [math.inf, tw.detach().clone()]
    evals = [0]

    def closure() -> torch.Tensor:
        if evals[0] > 0 and time.perf_counter() > deadline:
            raise _StopPolish
        evals[0] += 1
        opt.zero_grad(set_to_none=True)
        loss = (pop.apply(x, tw) - y).abs().pow(2).sum()
        if loss.item() < best[0]:
            best[0], best[1] = loss.item(), tw.detach().clone()
        if loss.item() < stop_loss:
            raise _StopPolish
        loss.backward()
        return loss

    try:
        opt.step(closure)
    except _StopPolish:
        pass
    with torch.no_grad():
        tw.copy_(best[1])
        return _rmse(pop.apply(x, tw) - y).item(), evals[0]
