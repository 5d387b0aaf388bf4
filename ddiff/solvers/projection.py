"""The nearest correction that explains the data to a level: ``min ‖δ‖ s.t. ‖r₀ − A δ‖² ≤ ε``.

Room: ``ddiff`` — pure torch (the k×k projected problems are solved in float64 numpy).

This is the exact Euclidean projection onto a discrepancy set ``{x : ‖ỹ − A x‖² ≤ ε}`` written
for the correction ``δ = x − v`` (``r₀ = ỹ − A v``). When ``‖r₀‖² > ε`` the answer lies on the
boundary and is a Tikhonov solution (Lagrange multiplier ``1/μ``)::

    δ(μ) = (AᴴA + μ I)⁻¹ Aᴴ r₀,      μ > 0 the root of  ‖r₀ − A δ(μ)‖² = ε.

It is computed by **hybrid LSQR** (Golub–Kahan bidiagonalisation started at ``r₀``, with the
projected Tikhonov problem and its multiplier solved exactly at every iteration):

    β₁u₁ = r₀,   α₁v₁ = Aᴴu₁,   β_{k+1}u_{k+1} = A v_k − α_k u_k,   α_{k+1}v_{k+1} = Aᴴu_{k+1} − β_{k+1}v_k

give ``A V_k = U_{k+1} B_k`` (``B_k`` lower bidiagonal, ``(k+1)×k``) with orthonormal ``U``, ``V``
(kept so by full re-orthogonalisation). For ``δ = V_k w``: ``‖δ‖ = ‖w‖`` and
``‖r₀ − A δ‖ = ‖β₁e₁ − B_k w‖``, so the k-dimensional problem ``min ‖w‖ s.t. ‖β₁e₁ − B_k w‖² ≤ ε``
is solved exactly from the SVD ``B_k = P diag(s) Qᵀ`` (``c = β₁Pᵀe₁``, ``c_⊥² = β₁² − ‖c‖²``)::

    ‖β₁e₁ − B_k w(μ)‖² = Σᵢ cᵢ² μ²/(sᵢ² + μ)² + c_⊥² = ε,     w(μ) = Q diag(sᵢ/(sᵢ² + μ)) c,

a monotone function of ``μ``, whose root is found by safeguarded Newton steps on ``log μ``. The
Krylov answer is the exact projection once the space holds it: at a breakdown (``α`` or ``β`` = 0,
e.g. after one iteration for a mask, ``AᴴA`` a projector) or when ``w`` stops changing (``tol``). While
the level cannot yet be reached inside the space (``c_⊥² > ε``), ``w`` is the least-squares point
(``μ → 0``, the LSQR/CGLS iterate).

Everything is per sample: a batch gives each sample the answer it gets alone (a sample's iterations
stop when it converges).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import rdot, real_part

__all__ = ["min_norm_correction"]

_BREAKDOWN = 100  # α or β below this many rounding units of the operator's gain: the Krylov space is exhausted


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return rdot(a, b).flatten().double()


def _on(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample scalars ``(B,)`` shaped to broadcast against ``like``."""
    return t.to(like.real.dtype).view(-1, *([1] * (like.ndim - 1)))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` real view of a sample batch (complex entries as two reals: the real inner product)."""
    return (torch.view_as_real(t) if t.is_complex() else t).reshape(t.shape[0], -1)


def _normalise(p: torch.Tensor, basis: list[torch.Tensor], floor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``p`` made orthogonal to ``basis`` (classical Gram–Schmidt, twice: ‘twice is enough’) and
    normalised per sample; returns ``(unit vector, norm (B,) float64)``. A sample whose norm is at
    most ``floor`` (B,) has reached a breakdown: its vector is 0 (not rounding noise blown up)."""
    if basis:
        Q = torch.stack([_flat(q) for q in basis], 1)  # (B, k, N)
        f = _flat(p).clone()
        for _ in range(2):
            f = f - torch.bmm((torch.bmm(Q, f[:, :, None])).transpose(1, 2), Q)[:, 0]
        p = (torch.view_as_complex(f.reshape(*p.shape, 2)) if p.is_complex() else f.reshape(p.shape))
    n = _dot(p, p).clamp_min(0).sqrt()
    inv = torch.where(n > floor, 1.0 / n.clamp_min(1e-300), torch.zeros_like(n))
    return p * _on(inv, p), n


def _projected(alphas, betas, beta1, eps, L0=None):
    """Solve ``min ‖w‖ s.t. ‖β₁e₁ − B w‖² ≤ ε`` for every sample (numpy float64).

    ``alphas`` ``(B, k)``, ``betas`` ``(B, k)`` (β₂..β_{k+1}), ``beta1``, ``eps`` ``(B,)``; ``L0``
    a starting ``log μ`` per sample (the previous iteration's). Returns ``w (B, k)``, ``reached (B,)``
    (the level is reachable in this space), ``residual² (B,)`` and ``log μ (B,)``."""
    B, k = alphas.shape
    Bk = np.zeros((B, k + 1, k))
    idx = np.arange(k)
    Bk[:, idx, idx] = alphas
    Bk[:, idx + 1, idx] = betas
    P, s, Qt = np.linalg.svd(Bk, full_matrices=False)  # P (B, k+1, k), s (B, k), Qt (B, k, k)
    c2 = (beta1[:, None] * P[:, 0, :]) ** 2
    c_perp2 = np.maximum(beta1**2 - c2.sum(1), 0.0)
    s2 = s**2
    reached = c_perp2 < eps
    target = np.log(np.maximum(eps, 1e-300))

    def level(L):  # log ‖β₁e₁ − B w(μ)‖² − log ε and its derivative in L = log μ
        mu = np.exp(L)[:, None]
        f = mu / (s2 + mu)
        g = (c2 * f**2).sum(1) + c_perp2
        dg = (c2 * 2 * f**2 * s2 / (s2 + mu)).sum(1)  # d g / d log μ
        return np.log(np.maximum(g, 1e-300)) - target, dg / np.maximum(g, 1e-300), g

    # g rises monotonically from c_⊥² (μ → 0) to β₁² (μ → ∞): bracket log μ around the singular values
    # and take Newton steps in log μ, bisecting whenever a step leaves the bracket
    s2max = np.log(np.maximum(s2.max(1), 1e-300))
    lo, hi = s2max - 80.0, s2max + 80.0
    L = np.where(np.isfinite(L0), np.clip(L0, lo, hi), s2max) if L0 is not None else s2max.copy()
    for _ in range(100):
        G, dG, _ = level(L)
        lo, hi = np.where(G < 0, L, lo), np.where(G >= 0, L, hi)
        if np.all(~reached | (np.abs(G) < 1e-12)):
            break
        L_new = L - G / np.maximum(dG, 1e-300)
        L = np.where(~np.isfinite(L_new) | (L_new <= lo) | (L_new >= hi), (lo + hi) / 2, L_new)
    mu = np.where(reached, np.exp(L), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        filt = np.where(s > 0, s / (s2 + mu[:, None]), 0.0)  # μ = 0: the least-squares (pseudo-inverse) point
    w = np.einsum("bji,bj->bi", Qt, filt * np.sqrt(c2) * np.sign(P[:, 0, :] * beta1[:, None]))
    g = level(np.log(np.maximum(mu, 1e-300)))[2] if reached.all() else np.where(
        reached, level(np.log(np.maximum(mu, 1e-300)))[2], c_perp2)
    return w, reached, g, np.where(reached, L, np.nan)


def min_norm_correction(operator, r0: torch.Tensor, eps: torch.Tensor, x_like: torch.Tensor,
                        max_iters: int = 50, tol: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """``δ = argmin ‖δ‖ s.t. ‖r₀ − A δ‖² ≤ ε`` per sample, by hybrid LSQR (module docstring).

    Args:
        operator: a linear forward model (``forward``, ``adjoint``); real images, real or complex data.
        r0: residual ``ỹ − A v`` ``(B, …)`` in measurement space.
        eps: the level ``ε`` per sample ``(B,)``.
        x_like: a tensor of the image's shape and dtype ``(B, C, H, W)``.
        max_iters: most bidiagonalisation steps (one ``A`` and one ``Aᴴ`` each).
        tol: stop a sample when its projected solution changes by less than ``tol`` (relative).

    Returns ``(δ, info)``; ``info``: ``residual2`` ``‖r₀ − A δ‖²`` (B,) float64, ``iters`` (B,) int,
    ``reached`` (B,) bool (the level was reached; else δ is the least-squares point found so far).
    Samples with ``‖r₀‖² ≤ ε`` get ``δ = 0`` and ``iters = 0``.
    """
    B = r0.shape[0]
    beta1_t = _dot(r0, r0).sqrt()
    beta1, eps_np = beta1_t.cpu().numpy(), eps.detach().double().cpu().numpy()
    active = beta1**2 > eps_np  # samples that have to move
    U: list[torch.Tensor] = []
    V: list[torch.Tensor] = []
    u, _ = _normalise(r0, [], torch.zeros_like(beta1_t))
    U.append(u)
    v, a = _normalise(real_part(operator.adjoint(u)), [], torch.zeros_like(beta1_t))
    # α and β are in units of the operator's gain (unit vectors in and out): a breakdown is a value at
    # rounding level of the images' precision (float32: 1e-5 of α₁)
    floor = _BREAKDOWN * torch.finfo(x_like.dtype).eps * a
    V.append(v)
    alphas, betas = [a.cpu().numpy()], []
    w_final = np.zeros((B, max_iters))
    iters = np.zeros(B, dtype=int)
    res2 = np.where(active, beta1**2, beta1**2)
    reached = ~active
    running = active & (alphas[0] > 0)  # α₁ = 0: Aᴴr₀ = 0, nothing can move towards the data
    floor_np = floor.cpu().numpy()
    w_prev, L = None, None
    for k in range(1, max_iters + 1):
        if not running.any():
            break
        # β_{k+1} u_{k+1} = A v_k − α_k u_k
        p = operator(V[-1]) - _on(torch.as_tensor(alphas[-1]), u) * U[-1]
        u, b = _normalise(p, U, floor)
        betas.append(b.cpu().numpy())
        A_k, B_k = np.stack(alphas, 1), np.stack(betas, 1)
        w, ok, g, L = _projected(A_k, B_k, beta1, eps_np, L)
        change = np.full(B, np.inf)
        if w_prev is not None:
            diff = w.copy()
            diff[:, :-1] -= w_prev
            change = np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(w, axis=1), 1e-300)
        broke = betas[-1] <= floor_np
        # α_{k+1} v_{k+1} = Aᴴ u_{k+1} − β_{k+1} v_k (skipped work is harmless for finished samples)
        if k < max_iters:
            q = real_part(operator.adjoint(u)) - _on(torch.as_tensor(betas[-1]), V[-1]) * V[-1]
            v, a = _normalise(q, V, floor)
            alphas.append(a.cpu().numpy())
            broke |= alphas[-1] <= floor_np
        finish = running & (broke | (ok & (change <= tol)) | (k == max_iters))
        for b_ in np.flatnonzero(finish):
            w_final[b_, :k], iters[b_], res2[b_], reached[b_] = w[b_], k, g[b_], ok[b_]
        running &= ~finish
        U.append(u)
        if k < max_iters:
            V.append(v)
        w_prev = w
    kmax = int(iters.max()) if B else 0
    delta = torch.zeros_like(x_like)
    W = torch.as_tensor(w_final[:, :kmax], dtype=x_like.dtype, device=x_like.device)
    for j in range(kmax):
        delta = delta + _on(W[:, j], delta) * V[j]
    return delta, {"residual2": torch.as_tensor(res2), "iters": torch.as_tensor(iters), "reached": torch.as_tensor(reached)}
