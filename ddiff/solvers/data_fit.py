"""The discrepancy x-update: the nearest image that explains the data to the noise level.

Room: ``ddiff`` — pure torch.

A user has no ground truth to tune a data-step size on, but the measurements say how well a
reconstruction *should* explain them: under the noise model the true image leaves a residual of
``E‖y − A(x)‖²/σ² = m`` (``m`` real measurements; Morozov's discrepancy principle). The x-update of
DDiff's self-calibrated mode is therefore the Euclidean projection of ``v = z − u`` onto

    C = { x : D(y, A(x)) ≤ τ m },    D = Σ_observed (y − A x)² / σ²  (Gaussian; Pearson χ² otherwise)

— ``x = v`` when ``v`` already explains the data, else the point of ``C`` nearest to ``v``. It has
no step size: the measurements and the noise level set how far it moves.

**Observed entries.** ``D`` and ``m`` count only the entries that carry information about the image
(:func:`observed_mask`: ``operator.mask`` — inpainting masks, ``operators.Validity``'s valid
entries — or, for a linear operator, its non-zero rows). What ``y`` holds elsewhere (noise, 0,
NaN, a dead pixel's reading) is ignored (:func:`observed_measurement`), so zero-filled and
NaN-filled files, raw camera frames with dead pixels and DPS-style noisy holes all give the same
answer, and the solver and the audit (``ddiff.audit``) count the same ``m``.

* **Linear operator, Gaussian noise** (``noise.quadratic``) — the exact projection: the correction
  ``δ = x − v`` is the minimum-norm ``δ`` with ``‖ỹ − A v − A δ‖² ≤ τ m σ²``, a Tikhonov solution
  whose multiplier is the root of the level equation, computed by hybrid LSQR
  (:func:`.projection.min_norm_correction`: Golub–Kahan bidiagonalisation, the projected problem
  solved exactly at every iteration). A mask converges in one iteration, ×4 super-resolution in
  ~5, a 7×7 blur in ~20 (to 1e-5). With fewer iterations allowed (``max_iters``) it returns the
  nearest point of ``C`` inside the Krylov space built so far — still in ``C`` once the level is
  reachable there.
* **Anything else** (nonlinear operators, photon-counting noise) — an approximation: gradient
  steps on the negative log-likelihood with backtracking, stopped where ``D`` first reaches
  ``τ m`` along the path (the last step bisected onto it). It lands on the level, not at the
  nearest point (measured: ``benchmarks/projection.py``).

Every helper works per sample: a batch gives each sample the answer it gets alone.
"""
from __future__ import annotations

import torch

from .base import likelihood_grad, rdot, real_part
from .observed import observed_mask, observed_measurement
from .projection import min_norm_correction

__all__ = ["PROJECTIONS", "discrepancy", "measurement_count", "observed_mask", "observed_measurement", "project_to_discrepancy"]


def measurement_count(y: torch.Tensor, operator=None, observed: torch.Tensor | None = None,
                      x_like: torch.Tensor | None = None) -> torch.Tensor:
    """``m``: real measurements per sample ``(B,)`` (a complex entry counts twice) — the observed
    entries only: ``observed`` when given, else :func:`observed_mask` (needs ``x_like`` for a
    linear operator without a mask), else every entry."""
    per = 2 if y.is_complex() else 1
    if observed is None and operator is not None:
        if x_like is not None:
            observed = observed_mask(operator, x_like, y)
        elif isinstance(getattr(operator, "mask", None), torch.Tensor):
            observed = torch.broadcast_to(operator.mask.to(y.device) != 0, y.shape)
    if observed is not None:
        return observed.reshape(y.shape[0], -1).sum(1).to(y.real.dtype) * per
    return torch.full((y.shape[0],), float(y[0].numel() * per), dtype=y.real.dtype, device=y.device)


def discrepancy(noise, y: torch.Tensor, Ax: torch.Tensor) -> torch.Tensor:
    """``D(y, A x)`` per sample ``(B,)``, expectation ``m`` at the truth.

    The noise model's own ``discrepancy`` when it has one (Pearson χ² for photon counts), else
    ``‖y − A x‖² / σ²`` with ``σ = noise.effective_sigma(y)``. Unobserved entries must hold the
    same value in ``y`` and ``A x`` (:func:`observed_measurement`): they then add 0.
    """
    if hasattr(noise, "discrepancy"):
        return noise.discrepancy(y, Ax)
    r = y - Ax  # a user's noise model without one: the Gaussian form
    sq = (r.real**2 + r.imag**2) if r.is_complex() else r**2
    return sq.reshape(y.shape[0], -1).sum(1) / float(noise.effective_sigma(y)) ** 2


#: how the linear-Gaussian projection is computed: exactly (hybrid LSQR), or the stopped CGLS of earlier releases
PROJECTIONS = ("exact", "cgls")


def project_to_discrepancy(operator, noise, y: torch.Tensor, v: torch.Tensor, tau: float = 1.0,
                           max_iters: int = 50, tol: float = 1e-5,
                           observed: torch.Tensor | None = None, method: str = "exact") -> tuple[torch.Tensor, dict]:
    """The point of ``C`` nearest to ``v`` (see module docstring); returns ``(x, info)`` with
    ``info = {"discrepancy": D(x)/m (B,), "iters": iterations used (the most in the batch)}``.

    ``max_iters`` bounds the inner iterations (each one forward and one adjoint of ``A``); ``tol``
    stops the exact (linear-Gaussian) projection when its answer changes by less than that
    (relative). ``observed`` (the mask of observed entries) is computed when not given; ``y`` may
    hold anything at unobserved entries. ``method="cgls"`` runs the stopped CGLS of earlier
    releases on linear-Gaussian problems instead of the exact projection (for comparison).
    """
    if method not in PROJECTIONS:
        raise ValueError(f"method must be one of {', '.join(PROJECTIONS)}, got {method!r}")
    obs = observed_mask(operator, v, y) if observed is None else observed
    y = observed_measurement(operator, v, y, obs)
    m = measurement_count(y, observed=obs)
    if getattr(noise, "quadratic", False) and getattr(operator, "linear", False) and hasattr(operator, "adjoint"):
        sigma2 = float(noise.effective_sigma(y)) ** 2
        eps = tau * m * sigma2
        if method == "cgls":
            x, rr, k = _cgls_to_discrepancy(operator, y, v, eps, max_iters)
            return x, {"discrepancy": rr / (m * sigma2), "iters": k}
        delta, info = min_norm_correction(operator, y - operator(v), eps, v, max_iters, tol)
        d = info["residual2"].to(m) / (m * sigma2)
        return v + delta, {"discrepancy": d, "iters": int(info["iters"].max())}
    return _descent_to_discrepancy(operator, noise, y, v, tau, max_iters, m)


def _cgls_to_discrepancy(operator, y, v, eps, max_iters):
    """The data step of earlier releases (``method="cgls"``, kept for comparison): CGLS on
    ``min ‖y − A x‖²`` started at ``v`` and stopped where ``‖y − A x‖² = ε`` (the last step
    shortened onto it). It lands on the level but not at the nearest point (12–16 % longer
    corrections on a 7×7 blur; ``benchmarks/data_step.py``). Returns ``(x, ‖y − A x‖² (B,), iterations)``."""
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
    return x, rr, k


def _descent_to_discrepancy(operator, noise, y, v, tau, max_iters, m):
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
