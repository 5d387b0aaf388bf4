"""The discrepancy x-update: move the solver's point just far enough towards the data.

Room: ``ddiff`` — pure torch.

A user has no ground truth to tune a data-step size on, but the measurements say how well a
reconstruction *should* explain them: under the noise model the true image leaves a residual of
``E‖y − A(x)‖²/σ² = m`` (``m`` real measurements; Morozov's discrepancy principle). The x-update of
DDiff's self-calibrated mode is therefore the projection of ``v = z − u`` onto the discrepancy set

    C = { x : D(y, A(x)) ≤ τ m },    D = ‖y − A(x)‖² / σ²  (Gaussian; Pearson χ² otherwise)

— ``x = v`` when ``v`` already explains the data, else the point where the data-fit path from ``v``
first reaches ``D = τ m``. It has no step size: the measurements and the noise level set how far it
moves, at any step budget and any σ.

* **Linear operator, Gaussian noise** (``noise.quadratic``) — CGLS on ``min ‖y − A x‖²`` started at ``v`` and stopped at
  the discrepancy (the classic Krylov regularisation by early stopping), the last step shortened
  to land exactly on ``D = τ m`` (a quadratic in the step length). Masks are solved in one
  iteration (``AᴴA`` is a projector), blur and super-resolution in a few (DDiff allows 5 per step).
* **Anything else** (nonlinear operators, photon-counting noise) — gradient steps on the negative
  log-likelihood with backtracking, stopped the same way, the last step bisected onto ``D = τ m``.

Every helper works per sample: a batch gives each sample the answer it gets alone.
"""
from __future__ import annotations

import torch

from .base import likelihood_grad, rdot, real_part

__all__ = ["discrepancy", "measurement_count", "project_to_discrepancy"]


def measurement_count(y: torch.Tensor, operator=None) -> torch.Tensor:
    """``m``: real measurements per sample ``(B,)`` (a complex entry counts twice), counting only the
    entries an operator's ``valid`` mask marks as measured (``operators.Validity``)."""
    per = 2 if y.is_complex() else 1
    valid = getattr(operator, "valid", None)
    if isinstance(valid, torch.Tensor):
        v = torch.broadcast_to(valid.to(y.device), y.shape)
        return v.reshape(y.shape[0], -1).sum(1).to(y.real.dtype) * per
    return torch.full((y.shape[0],), float(y[0].numel() * per), dtype=y.real.dtype, device=y.device)


def discrepancy(noise, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
    """``D(y, A x)`` per sample ``(B,)``, expectation ``m`` at the truth.

    The noise model's own ``discrepancy`` when it has one (Pearson χ² for photon counts), else
    ``‖y − A x‖² / σ²`` with ``σ = noise.effective_sigma(y)``.
    """
    if hasattr(noise, "discrepancy"):
        return noise.discrepancy(y, Ax)
    r = y - Ax  # a user's noise model without one: the Gaussian form
    sq = (r.real**2 + r.imag**2) if r.is_complex() else r**2
    return sq.reshape(y.shape[0], -1).sum(1) / float(noise.effective_sigma(y)) ** 2


def project_to_discrepancy(operator, noise, y: torch.Tensor, v: torch.Tensor, tau: float = 1.0,
                           max_iters: int = 10) -> tuple[torch.Tensor, dict]:
    """``x ∈ C`` reached from ``v`` (see module docstring); returns ``(x, info)`` with
    ``info = {"discrepancy": D(x)/m (B,), "iters": iterations used}``.

    ``max_iters`` bounds the inner iterations (each one forward and one adjoint of ``A``); a
    sample that has not reached ``τ m`` by then keeps its best point (the outer loop continues
    from there next step).
    """
    if getattr(noise, "quadratic", False) and getattr(operator, "linear", False) and hasattr(operator, "adjoint"):
        return _cgls_to_discrepancy(operator, noise, y, v, tau, max_iters)
    return _descent_to_discrepancy(operator, noise, y, v, tau, max_iters)


def _cgls_to_discrepancy(operator, noise, y, v, tau, max_iters):
    sigma2 = float(noise.effective_sigma(y)) ** 2
    m = measurement_count(y, operator)
    eps = tau * m * sigma2  # target ‖r‖² per sample (B,)
    # per-sample scalars are kept flat (B,) and shaped for image or measurement space where used
    # (the two may differ in rank, e.g. a measurement vector (B, m))
    def dot(a, b):
        return rdot(a, b).flatten()

    def on(t, like):
        return t.view(-1, *([1] * (like.ndim - 1)))

    x = v.clone()
    r = y - operator(x)  # measurement-space residual
    rr = dot(r, r)
    done = rr <= eps
    s = real_part(operator.adjoint(r))  # −½∇‖r‖² in image space
    p, gam = s.clone(), dot(s, s)
    k = 0
    while k < max_iters and not bool(done.all()):
        k += 1
        q = operator(p)
        qq = dot(q, q).clamp_min(1e-30)
        rq = dot(r, q)
        alpha = gam / qq  # the CGLS step (exact line minimiser along p)
        rr_next = rr - 2 * alpha * rq + alpha**2 * qq
        hit = ~done & (rr_next <= eps)
        # shortest step on this line with ‖r − a q‖² = eps: the smaller root of the quadratic
        a_hit = (rq - (rq * rq - qq * (rr - eps)).clamp_min(0).sqrt()) / qq
        a = torch.where(done, torch.zeros_like(alpha), torch.where(hit, a_hit, alpha))
        x, r = x + on(a, x) * p, r - on(a, r) * q
        rr = dot(r, r)
        done = done | hit
        s = real_part(operator.adjoint(r))
        gam_next = dot(s, s)
        p, gam = s + on(gam_next / gam.clamp_min(1e-30), s) * p, gam_next
    return x, {"discrepancy": rr / (m * sigma2), "iters": k}


def _descent_to_discrepancy(operator, noise, y, v, tau, max_iters):
    m = measurement_count(y, operator)
    target = tau * m
    shape = (-1,) + (1,) * (v.ndim - 1)
    x = v.clone()
    with torch.no_grad():
        d = discrepancy(noise, y, operator(x))
    done = d <= target
    # trial step length (an ℓ2 distance in image space): half the point's norm, then adaptive
    length = 0.5 * x.reshape(x.shape[0], -1).norm(dim=1).clamp_min(1.0)
    k = 0
    while k < max_iters and not bool(done.all()):
        k += 1
        g, f = likelihood_grad(operator, noise, y, x)
        gn = g.reshape(g.shape[0], -1).norm(dim=1).clamp_min(1e-30)
        direction = torch.where(done.view(shape), torch.zeros_like(g), g / gn.view(shape))
        for _ in range(30):  # Armijo backtracking on the negative log-likelihood, per sample
            cand = x - length.view(shape) * direction
            with torch.no_grad():
                f_c = noise.nll(y, operator(cand))
            ok = done | (torch.isfinite(f_c) & (f_c <= f - 0.5 * length * gn))
            if bool(ok.all()):
                break
            length = torch.where(ok, length, length / 2)
        with torch.no_grad():
            d_c = discrepancy(noise, y, operator(cand))
        hit = ~done & (d_c <= target)
        step = length
        if bool(hit.any()):  # bisect the last step onto D = τ m
            lo, hi = torch.zeros_like(length), length.clone()
            for _ in range(12):
                mid = (lo + hi) / 2
                with torch.no_grad():
                    below = discrepancy(noise, y, operator(x - mid.view(shape) * direction)) <= target
                hi, lo = torch.where(below, mid, hi), torch.where(below, lo, mid)
            step = torch.where(hit, hi, length)
        x = x - step.view(shape) * direction
        done = done | hit
        length = 2 * length  # let the next trial grow again
    with torch.no_grad():
        d = discrepancy(noise, y, operator(x))
    return x, {"discrepancy": d / m, "iters": k}
